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
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
