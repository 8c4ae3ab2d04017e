//! The OpenAPI 3.1 document, generated from the handlers' annotations and the schema types,
//! served at `/v1/openapi.json`.

use super::schema::*;
use super::{api_keys, audit, data_plane, tenants, usage, usage_ingest, users, webhooks};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Quarterdeck Automation API", description = "Tenants, their API keys, usage, cost and budgets, users, role assignments, invitations, the audit trail, webhook endpoints and the events feed under `/v1/admin/`: authenticate with a personal access token (`Authorization: Bearer qd_pat_…`, scheme `bearer`). The data plane's questions under `/v1/data-plane/` (verify a tenant API key, resolve a provider credential): authenticate with a service token (`Authorization: Bearer qd_svc_…`, scheme `service_token`)."),
    paths(
        tenants::list, tenants::create, tenants::get, tenants::update, tenants::set_status, tenants::delete,
        api_keys::list, api_keys::create, api_keys::get, api_keys::roll, api_keys::revoke,
        users::list, users::create, users::get, users::update, users::delete,
        users::assign_role, users::revoke_role,
        users::invitations, users::resend_invitation, users::revoke_invitation,
        usage::usage, usage::cost, usage::get_budget, usage::put_budget, usage::delete_budget,
        audit::list, audit::export,
        webhooks::list, webhooks::create, webhooks::get, webhooks::update, webhooks::delete, webhooks::roll_secret,
        webhooks::deliveries, webhooks::resend, webhooks::feed,
        data_plane::verify, data_plane::resolve, usage_ingest::ingest,
    ),
    components(schemas(
        TenantOut, TenantList, UserOut, UserList, CreatedUser, InvitationOut, EventOut, EventList, ErrorBody, ErrorDetail, FieldOut,
        tenants::CreateTenant, tenants::UpdateTenant, tenants::SetStatus, users::CreateUser, users::UpdateUser, users::Delivery,
        api_keys::ApiKeyOut, api_keys::ApiKeyState, api_keys::ApiKeyList, api_keys::ApiKeyWithSecret, api_keys::CreateApiKey, api_keys::RollApiKey,
        data_plane::VerifyRequest, data_plane::VerifyResponse, data_plane::KeyValid, data_plane::KeyInvalid,
        data_plane::VerifiedTenant, data_plane::VerifiedKey, data_plane::KeyLimits,
        data_plane::ResolveRequest, data_plane::ResolveResponse,
        usage::UsageOut, usage::MeterUsageOut, usage::UsageDay, usage::DimensionShare, usage::KeyShare, usage::FreshnessOut,
        usage::CostOut, usage::MonthCostOut, usage::CostLineOut, usage::BudgetOut, usage::BudgetStanding, usage::SetBudget,
        usage_ingest::UsageEvent, usage_ingest::RejectedEvent, usage_ingest::UsageAccepted,
        webhooks::WebhookEndpointOut, webhooks::WebhookEndpointList, webhooks::WebhookEndpointWithSecret,
        webhooks::CreateWebhookEndpoint, webhooks::UpdateWebhookEndpoint, webhooks::RollWebhookSecret,
        webhooks::WebhookDeliveryOut, webhooks::WebhookDeliveryList, webhooks::WebhookEventOut, webhooks::EventFeed,
    )),
    modifiers(&Bearer, &EdgeResponses),
)]
pub struct ApiDoc;

/// The two kinds of bearer: a personal access token (`bearer`, for `/v1/admin/`) and a service
/// token (`service_token`, for `/v1/data-plane/`); neither is accepted where the other belongs.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = |format: &str, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "bearer",
            scheme(
                "qd_pat_…",
                "A personal access token (Settings → Tokens, or `quarterdeck tokens create`).",
            ),
        );
        components.add_security_scheme(
            "service_token",
            scheme(
                "qd_svc_…",
                "A service token for the product's data plane (console Settings → Service tokens, or `quarterdeck service-tokens create`).",
            ),
        );
    }
}

/// What the edge (`edge.rs`) may answer to any call, declared on every operation: 408
/// `request_timeout`, 413 `body_too_large`, 503 `overloaded` (with `Retry-After`).
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses.insert(
                    "408".into(),
                    error("`request_timeout`: the request took longer than the server allows."),
                );
                // An operation's own 413 (e.g. `batch_too_large`) is kept.
                responses
                    .entry("413".into())
                    .or_insert_with(|| error("`body_too_large`: the body is larger than the server accepts."));
                // An operation that documents its own 503 names `overloaded` there too.
                responses.entry("503".into()).or_insert_with(|| {
                    error("`overloaded`: too many requests at once; retry after `Retry-After` seconds.")
                });
            }
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
