//! The OpenAPI 3.1 document, generated from the handlers' annotations and the schema types,
//! served at `/v1/openapi.json`.

use super::schema::*;
use super::{audit, tenants, users};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Quarterdeck Automation API", description = "Tenants, users, role assignments, invitations and the audit trail. Authenticate with a personal access token: `Authorization: Bearer qd_pat_…`."),
    paths(
        tenants::list, tenants::create, tenants::get, tenants::update, tenants::set_status, tenants::delete,
        users::list, users::create, users::get, users::update, users::delete,
        users::assign_role, users::revoke_role,
        users::invitations, users::resend_invitation, users::revoke_invitation,
        audit::list, audit::export,
    ),
    components(schemas(
        TenantOut, TenantList, UserOut, UserList, CreatedUser, InvitationOut, EventOut, EventList, ErrorBody, ErrorDetail, FieldOut,
        tenants::CreateTenant, tenants::UpdateTenant, tenants::SetStatus, users::CreateUser, users::UpdateUser, users::Delivery,
    )),
    modifiers(&Bearer, &EdgeResponses),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
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
                responses.insert(
                    "413".into(),
                    error("`body_too_large`: the body is larger than the server accepts."),
                );
                responses.insert(
                    "503".into(),
                    error("`overloaded`: too many requests at once; retry after `Retry-After` seconds."),
                );
            }
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
