//! Roles are data: a name, a scope, a description and capabilities (PRODUCT.md §3).

use serde::Serialize;

/// Where a role applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Platform,
    Tenant,
}

/// What a role allows. Capabilities Quarterdeck does not enforce itself are still carried
/// (as [`Capability::Custom`]) for the product that integrates with Quarterdeck.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum Capability {
    /// See tenants, their settings and members.
    TenantsRead,
    /// Create, edit, change the status of and delete tenants.
    TenantsManage,
    /// See platform users.
    UsersRead,
    /// Invite, change and remove platform users and role assignments.
    UsersManage,
    /// Read the audit trail.
    AuditRead,
    /// Switch to a tenant (impersonation).
    Impersonate,
    /// Read the effective settings.
    SettingsRead,
    /// Platform policy and configuration.
    PlatformConfig,
    /// Billing and usage views.
    BillingRead,
    /// A capability the integrating product enforces.
    Custom(String),
}

impl Capability {
    pub fn as_str(&self) -> &str {
        match self {
            Self::TenantsRead => "tenants:read",
            Self::TenantsManage => "tenants:manage",
            Self::UsersRead => "users:read",
            Self::UsersManage => "users:manage",
            Self::AuditRead => "audit:read",
            Self::Impersonate => "tenants:impersonate",
            Self::SettingsRead => "settings:read",
            Self::PlatformConfig => "platform:config",
            Self::BillingRead => "billing:read",
            Self::Custom(s) => s,
        }
    }
}

impl From<Capability> for String {
    fn from(c: Capability) -> String {
        c.as_str().to_owned()
    }
}

/// A role in the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct Role {
    pub name: &'static str,
    pub scope: Scope,
    pub description: &'static str,
    pub capabilities: Vec<Capability>,
}

/// The built-in platform roles. (Tenant roles arrive with users in the tenant database.)
pub fn platform_roles() -> Vec<Role> {
    use Capability::*;
    vec![
        Role {
            name: "owner",
            scope: Scope::Platform,
            description: "Everything, including creating, suspending and deleting tenants, impersonation and role changes.",
            capabilities: vec![
                TenantsRead,
                TenantsManage,
                UsersRead,
                UsersManage,
                AuditRead,
                Impersonate,
                SettingsRead,
                PlatformConfig,
                BillingRead,
            ],
        },
        Role {
            name: "policy-admin",
            scope: Scope::Platform,
            description: "Platform policy and configuration; no tenant lifecycle, no impersonation.",
            capabilities: vec![
                TenantsRead,
                UsersRead,
                AuditRead,
                SettingsRead,
                PlatformConfig,
            ],
        },
        Role {
            name: "billing-admin",
            scope: Scope::Platform,
            description: "Billing and usage views; no user or tenant changes.",
            capabilities: vec![TenantsRead, BillingRead],
        },
    ]
}

/// The capabilities granted by a set of role names (unknown names grant nothing).
pub fn capabilities_of(role_names: &[String]) -> Vec<Capability> {
    let mut caps: Vec<Capability> = platform_roles()
        .into_iter()
        .filter(|r| role_names.iter().any(|n| n == r.name))
        .flat_map(|r| r.capabilities)
        .collect();
    caps.sort();
    caps.dedup();
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_may_manage_tenants_or_impersonate() {
        for role in platform_roles() {
            let may = role.capabilities.contains(&Capability::TenantsManage);
            assert_eq!(may, role.name == "owner", "{}", role.name);
            let imp = role.capabilities.contains(&Capability::Impersonate);
            assert_eq!(imp, role.name == "owner", "{}", role.name);
        }
    }
}
