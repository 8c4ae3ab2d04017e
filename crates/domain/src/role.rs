//! Roles are data: a name, a scope, a description and capabilities (PRODUCT.md §3).
//!
//! The [`Catalog`] holds the three platform roles and the tenant roles: the built-in `admin`,
//! `developer` and `viewer`, or a deployment's own set read from a roles file
//! (`QUARTERDECK_ROLES_FILE`, e.g. `examples/roles-rcm.toml`). Exactly one tenant role is the
//! tenant's admin role: the one "Invite admin" preselects.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where a role applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Platform,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Platform => "platform",
            Scope::Tenant => "tenant",
        }
    }
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
    /// See users.
    UsersRead,
    /// Invite, change and remove users and role assignments.
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
    /// Set tenants' budgets.
    BillingManage,
    /// Inside a tenant: see the tenant and its members.
    TenantRead,
    /// Inside a tenant: invite and manage the tenant's users and their roles.
    TenantUsersManage,
    /// Inside a tenant: the tenant's configuration.
    TenantConfig,
    /// Inside a tenant: create and use API keys.
    TenantApiKeys,
    /// Inside a tenant: read the tenant's audit trail.
    TenantAudit,
    /// A capability the integrating product enforces.
    Custom(String),
}

const NAMED: &[(&str, Capability)] = &[
    ("tenants:read", Capability::TenantsRead),
    ("tenants:manage", Capability::TenantsManage),
    ("users:read", Capability::UsersRead),
    ("users:manage", Capability::UsersManage),
    ("audit:read", Capability::AuditRead),
    ("tenants:impersonate", Capability::Impersonate),
    ("settings:read", Capability::SettingsRead),
    ("platform:config", Capability::PlatformConfig),
    ("billing:read", Capability::BillingRead),
    ("billing:manage", Capability::BillingManage),
    ("tenant:read", Capability::TenantRead),
    ("tenant:users:manage", Capability::TenantUsersManage),
    ("tenant:config", Capability::TenantConfig),
    ("tenant:api_keys", Capability::TenantApiKeys),
    ("tenant:audit", Capability::TenantAudit),
];

impl Capability {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Custom(s) => s,
            known => NAMED.iter().find(|(_, c)| c == known).map(|(n, _)| *n).unwrap_or(""),
        }
    }

    pub fn parse(s: &str) -> Self {
        NAMED
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Self::Custom(s.to_owned()))
    }

    /// Whether this capability belongs inside a tenant (and so may sit on a tenant role).
    pub fn is_tenant(&self) -> bool {
        matches!(
            self,
            Self::TenantRead
                | Self::TenantUsersManage
                | Self::TenantConfig
                | Self::TenantApiKeys
                | Self::TenantAudit
                | Self::Custom(_)
        )
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
    pub name: String,
    pub scope: Scope,
    pub description: String,
    pub capabilities: Vec<Capability>,
}

impl Role {
    fn new(name: &str, scope: Scope, description: &str, capabilities: &[Capability]) -> Self {
        Self {
            name: name.to_owned(),
            scope,
            description: description.to_owned(),
            capabilities: capabilities.to_vec(),
        }
    }

    pub fn capability_names(&self) -> Vec<String> {
        self.capabilities.iter().map(|c| c.as_str().to_owned()).collect()
    }
}

/// A roles file (TOML): the tenant roles of a deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesFile {
    /// The tenant role that "Invite admin" preselects.
    pub admin_role: String,
    pub roles: Vec<RoleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleEntry {
    pub name: String,
    pub description: String,
    pub capabilities: Vec<String>,
}

/// Every role, platform and tenant.
#[derive(Clone, Debug)]
pub struct Catalog {
    roles: Vec<Role>,
    admin_role: String,
}

fn platform_roles() -> Vec<Role> {
    use Capability::*;
    vec![
        Role::new(
            "owner",
            Scope::Platform,
            "Everything, including creating, suspending and deleting tenants, impersonation and role changes.",
            &[
                TenantsRead,
                TenantsManage,
                UsersRead,
                UsersManage,
                AuditRead,
                Impersonate,
                SettingsRead,
                PlatformConfig,
                BillingRead,
                BillingManage,
            ],
        ),
        Role::new(
            "policy-admin",
            Scope::Platform,
            "Platform policy and configuration; no tenant lifecycle, no impersonation.",
            &[TenantsRead, UsersRead, AuditRead, SettingsRead, PlatformConfig],
        ),
        Role::new(
            "billing-admin",
            Scope::Platform,
            "Billing and usage views, and tenants' budgets; no user or tenant changes.",
            &[TenantsRead, BillingRead, BillingManage],
        ),
    ]
}

impl Default for Catalog {
    /// The built-in catalog: three platform roles, and `admin`, `developer`, `viewer`.
    fn default() -> Self {
        use Capability::*;
        let mut roles = platform_roles();
        roles.extend([
            Role::new(
                "admin",
                Scope::Tenant,
                "Manage the tenant's users, roles, API keys and configuration.",
                &[TenantRead, TenantUsersManage, TenantConfig, TenantApiKeys, TenantAudit],
            ),
            Role::new(
                "developer",
                Scope::Tenant,
                "Use the product and its API keys; no user management.",
                &[TenantRead, TenantApiKeys],
            ),
            Role::new("viewer", Scope::Tenant, "Read only.", &[TenantRead]),
        ]);
        Self {
            roles,
            admin_role: "admin".to_owned(),
        }
    }
}

impl Catalog {
    /// The platform roles plus the tenant roles of a roles file (which replace the built-in
    /// tenant roles).
    pub fn from_file(file: RolesFile) -> Result<Self> {
        let bad = |m: String| Error::Internal(format!("roles file: {m}"));
        let mut roles = platform_roles();
        for r in file.roles {
            if r.name.trim().is_empty()
                || r.name.len() > 64
                || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                return Err(bad(format!(
                    "role name {:?} must be 1–64 letters, digits, '_' or '-'",
                    r.name
                )));
            }
            if roles.iter().any(|x| x.name == r.name) {
                return Err(bad(format!(
                    "role {:?} is defined twice or collides with a platform role",
                    r.name
                )));
            }
            let caps: Vec<Capability> = r.capabilities.iter().map(|c| Capability::parse(c)).collect();
            if let Some(c) = caps.iter().find(|c| !c.is_tenant()) {
                return Err(bad(format!(
                    "role {:?}: {:?} is a platform capability; tenant roles hold tenant capabilities",
                    r.name,
                    c.as_str()
                )));
            }
            roles.push(Role {
                name: r.name,
                scope: Scope::Tenant,
                description: r.description,
                capabilities: caps,
            });
        }
        if !roles
            .iter()
            .any(|r| r.scope == Scope::Tenant && r.name == file.admin_role)
        {
            return Err(bad(format!(
                "admin_role {:?} is not one of the file's roles",
                file.admin_role
            )));
        }
        Ok(Self {
            roles,
            admin_role: file.admin_role,
        })
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    pub fn tenant_roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.iter().filter(|r| r.scope == Scope::Tenant)
    }

    pub fn platform_roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.iter().filter(|r| r.scope == Scope::Platform)
    }

    /// The tenant role "Invite admin" preselects.
    pub fn admin_role(&self) -> &str {
        &self.admin_role
    }

    /// The capabilities granted by a set of role names (unknown names grant nothing).
    pub fn capabilities_of(&self, role_names: &[String]) -> Vec<Capability> {
        let mut caps: Vec<Capability> = self
            .roles
            .iter()
            .filter(|r| role_names.contains(&r.name))
            .flat_map(|r| r.capabilities.iter().cloned())
            .collect();
        caps.sort();
        caps.dedup();
        caps
    }

    /// Parse a set of role names for one user: known, not empty, one scope only.
    pub fn parse_roles(&self, names: &[String]) -> Result<(Scope, Vec<String>)> {
        let mut names: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(Error::field("roles", "required", "Choose at least one role."));
        }
        let mut scope = None;
        for n in &names {
            let Some(role) = self.role(n) else {
                return Err(Error::field(
                    "roles",
                    "unknown_role",
                    format!("There is no role {n:?}."),
                ));
            };
            match scope {
                None => scope = Some(role.scope),
                Some(s) if s != role.scope => {
                    return Err(Error::field(
                        "roles",
                        "mixed_scopes",
                        "A user holds platform roles or tenant roles, never both.",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok((scope.unwrap_or(Scope::Tenant), names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_may_manage_tenants_or_impersonate() {
        for role in Catalog::default().platform_roles() {
            let may = role.capabilities.contains(&Capability::TenantsManage);
            assert_eq!(may, role.name == "owner", "{}", role.name);
            let imp = role.capabilities.contains(&Capability::Impersonate);
            assert_eq!(imp, role.name == "owner", "{}", role.name);
        }
    }

    #[test]
    fn mixing_platform_and_tenant_roles_is_refused() {
        let c = Catalog::default();
        let err = c.parse_roles(&["owner".into(), "admin".into()]).unwrap_err();
        assert_eq!(err.fields()[0].code, "mixed_scopes");
        assert_eq!(
            c.parse_roles(&["developer".into(), "viewer".into()]).unwrap().0,
            Scope::Tenant
        );
        assert_eq!(
            c.parse_roles(&["nope".into()]).unwrap_err().fields()[0].code,
            "unknown_role"
        );
        assert_eq!(c.parse_roles(&[]).unwrap_err().fields()[0].code, "required");
    }

    #[test]
    fn a_roles_file_replaces_the_tenant_roles_and_names_the_admin_role() {
        let file = RolesFile {
            admin_role: "TENANT_ADMIN".into(),
            roles: vec![
                RoleEntry {
                    name: "TENANT_ADMIN".into(),
                    description: "Manage users.".into(),
                    capabilities: vec!["tenant:users:manage".into(), "tenant:read".into()],
                },
                RoleEntry {
                    name: "BILLER".into(),
                    description: "Claims.".into(),
                    capabilities: vec!["claims:work".into()],
                },
            ],
        };
        let c = Catalog::from_file(file).unwrap();
        assert_eq!(c.admin_role(), "TENANT_ADMIN");
        assert!(c.role("admin").is_none());
        assert_eq!(
            c.role("BILLER").unwrap().capabilities,
            vec![Capability::Custom("claims:work".into())]
        );
        let bad = RolesFile {
            admin_role: "X".into(),
            roles: vec![RoleEntry {
                name: "X".into(),
                description: String::new(),
                capabilities: vec!["tenants:manage".into()],
            }],
        };
        assert!(
            Catalog::from_file(bad).is_err(),
            "platform capabilities on a tenant role"
        );
    }
}
