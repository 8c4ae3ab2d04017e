//! Who is calling, and proof of what they may do.
//!
//! A handler's first line turns the [`Principal`] into an [`Authorized`] handle for one
//! capability (`principal.require::<ManageTenants>()?`). Operations in [`crate::Core`] that
//! change things take that handle, so code that did not check cannot call them.

use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::ids::UserId;
use crate::role::{Capability, Catalog, Role, Scope};
use crate::user::Directory;
use std::marker::PhantomData;

/// The signed-in user behind a request: a platform user (`tenant_id` is `None`) or a user of
/// one tenant.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: UserId,
    pub email: EmailAddress,
    pub roles: Vec<String>,
    pub tenant_id: Option<TenantId>,
    /// Set when a platform user acts inside a tenant through "Switch to tenant".
    pub impersonation_id: Option<uuid::Uuid>,
    /// Set when acting through a personal access token.
    pub token_id: Option<uuid::Uuid>,
    capabilities: Vec<Capability>,
}

impl Principal {
    pub fn new(
        user_id: UserId,
        email: EmailAddress,
        roles: Vec<String>,
        tenant_id: Option<TenantId>,
        catalog: &Catalog,
    ) -> Self {
        let capabilities = catalog.capabilities_of(&roles);
        Self {
            user_id,
            email,
            roles,
            tenant_id,
            impersonation_id: None,
            token_id: None,
            capabilities,
        }
    }

    /// A platform user acting inside `tenant` with the tenant's admin role, every action
    /// attributed to them and to the impersonation.
    pub fn impersonating(
        user_id: UserId,
        email: EmailAddress,
        tenant: TenantId,
        impersonation_id: uuid::Uuid,
        catalog: &Catalog,
    ) -> Self {
        let roles = vec![catalog.admin_role().to_owned()];
        let mut p = Self::new(user_id, email, roles, Some(tenant), catalog);
        p.impersonation_id = Some(impersonation_id);
        p
    }

    /// Whether this principal may give `role` to someone: a tenant user only tenant roles whose
    /// every capability they hold themselves; a platform user who manages users any tenant role
    /// (the owner can do everything) and platform roles whose capabilities they hold.
    pub fn may_grant(&self, role: &Role) -> bool {
        let holds_all = role.capabilities.iter().all(|c| self.can(c));
        match self.tenant_id {
            Some(_) => role.scope == Scope::Tenant && self.can(&Capability::TenantUsersManage) && holds_all,
            None => self.can(&Capability::UsersManage) && (role.scope == Scope::Tenant || holds_all),
        }
    }

    pub fn can(&self, cap: &Capability) -> bool {
        self.capabilities.contains(cap)
    }

    /// A handle proving the caller holds `P`'s capability, or `Forbidden`.
    pub fn require<P: Permission>(&self) -> Result<Authorized<P>> {
        if self.can(&P::capability()) {
            Ok(Authorized {
                actor: self.actor(),
                _p: PhantomData,
            })
        } else {
            Err(Error::Forbidden)
        }
    }

    pub fn actor(&self) -> Actor {
        let mut a = Actor::user(self.user_id, self.email.clone());
        if let (Some(id), Some(t)) = (self.impersonation_id, self.tenant_id) {
            a.impersonation = Some((id, t));
        }
        a.token_id = self.token_id;
        a
    }
}

/// Who an audit event is attributed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Option<UserId>,
    pub email: Option<String>,
    /// The impersonation (and its tenant) the actor acted through, if any.
    pub impersonation: Option<(uuid::Uuid, TenantId)>,
    /// The personal access token the actor acted through (Automation API), if any.
    pub token_id: Option<uuid::Uuid>,
}

impl Actor {
    pub fn user(id: UserId, email: EmailAddress) -> Self {
        Self {
            user_id: Some(id),
            email: Some(email.to_string()),
            impersonation: None,
            token_id: None,
        }
    }
    /// The system itself (start-up bootstrap, the first-run setup link).
    pub fn system() -> Self {
        Self {
            user_id: None,
            email: None,
            impersonation: None,
            token_id: None,
        }
    }
}

/// A permission a handle can prove.
pub trait Permission {
    fn capability() -> Capability;
}

macro_rules! permission {
    ($(#[$doc:meta])* $name:ident => $cap:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl Permission for $name {
            fn capability() -> Capability {
                $cap
            }
        }
    };
}

permission!(
    /// Read tenants.
    ReadTenants => Capability::TenantsRead
);
permission!(
    /// Create, edit, change status of and delete tenants.
    ManageTenants => Capability::TenantsManage
);
permission!(
    /// List platform users.
    ReadUsers => Capability::UsersRead
);
permission!(
    /// Read the audit trail.
    ReadAudit => Capability::AuditRead
);
permission!(
    /// Read the effective settings.
    ReadSettings => Capability::SettingsRead
);

/// Proof that `actor` holds permission `P`. Only [`Principal::require`] makes one.
pub struct Authorized<P> {
    actor: Actor,
    _p: PhantomData<P>,
}

impl<P> Authorized<P> {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

/// A permission over the users of one directory (the platform's, or one tenant's). Which
/// capability it takes depends on who asks and where: see [`Principal::require_in`].
pub trait DirectoryPermission {
    /// The capability a principal needs for `dir`: `own_tenant` is true for a tenant user
    /// asking about their own tenant (a tenant user never gets a proof for another directory).
    fn capability(own_tenant: bool, dir: Directory) -> Capability;
}

/// Invite, change roles of, suspend, delete, and reset the passwords of a directory's users.
pub struct ManageDirectory;
impl DirectoryPermission for ManageDirectory {
    fn capability(own_tenant: bool, _dir: Directory) -> Capability {
        if own_tenant {
            Capability::TenantUsersManage
        } else {
            Capability::UsersManage
        }
    }
}

/// See a directory's users and their invitations.
pub struct ReadDirectory;
impl DirectoryPermission for ReadDirectory {
    fn capability(own_tenant: bool, dir: Directory) -> Capability {
        match (own_tenant, dir) {
            (true, _) => Capability::TenantRead,
            (false, Directory::Platform) => Capability::UsersRead,
            (false, Directory::Tenant(_)) => Capability::TenantsRead,
        }
    }
}

/// Proof that a principal holds permission `P` over the users of one directory. Only
/// [`Principal::require_in`] makes one; the user operations in `Core` take it, and act only in
/// its directory.
pub struct InDirectory<'a, P> {
    principal: &'a Principal,
    dir: Directory,
    _p: PhantomData<P>,
}

impl<P> InDirectory<'_, P> {
    pub fn principal(&self) -> &Principal {
        self.principal
    }
    pub fn directory(&self) -> Directory {
        self.dir
    }
    pub fn actor(&self) -> Actor {
        self.principal.actor()
    }
}

impl Principal {
    /// A proof that this principal holds `P` over the users of `dir`. A tenant user asking
    /// about any other directory gets `NotFound`, never a hint that it exists; a missing
    /// capability is `Forbidden`. (Whether the tenant exists and is writable is the
    /// operation's to check: it needs the store.)
    pub fn require_in<P: DirectoryPermission>(&self, dir: Directory) -> Result<InDirectory<'_, P>> {
        let own_tenant = match self.tenant_id {
            Some(own) if dir == Directory::Tenant(own) => true,
            Some(_) => return Err(Error::NotFound),
            None => false,
        };
        if !self.can(&P::capability(own_tenant, dir)) {
            return Err(Error::Forbidden);
        }
        Ok(InDirectory {
            principal: self,
            dir,
            _p: PhantomData,
        })
    }
}

permission!(
    /// Create and revoke service tokens (the data plane's credentials): platform configuration.
    ManageServiceTokens => Capability::PlatformConfig
);

permission!(
    /// Webhook endpoints (create, edit, roll, delete, resend) and the events feed: platform
    /// configuration, the owner's.
    ManageWebhooks => Capability::PlatformConfig
);

permission!(
    /// Usage and cost across tenants (the console's Billing view).
    ViewBilling => Capability::BillingRead
);
permission!(
    /// Set and remove tenants' budgets: the owner and the billing-admin.
    ManageBudgets => Capability::BillingManage
);

/// A permission over one tenant's data-plane resources (API keys, provider credentials).
/// Which capability it takes depends on who asks: see [`Principal::require_for_tenant`].
pub trait TenantPermission {
    /// The capability for a tenant user in their own tenant (`own_tenant`), or for a platform
    /// user acting on any tenant.
    fn capability(own_tenant: bool) -> Capability;
}

/// Create, roll and revoke a tenant's API keys: its admins and developers (`tenant:api_keys`);
/// on the platform, whoever manages tenants.
pub struct ManageApiKeys;
impl TenantPermission for ManageApiKeys {
    fn capability(own_tenant: bool) -> Capability {
        if own_tenant {
            Capability::TenantApiKeys
        } else {
            Capability::TenantsManage
        }
    }
}

/// See a tenant's API keys (metadata only): in the tenant, only who may manage them (viewers
/// see nothing); on the platform, whoever reads tenants.
pub struct ReadApiKeys;
impl TenantPermission for ReadApiKeys {
    fn capability(own_tenant: bool) -> Capability {
        if own_tenant {
            Capability::TenantApiKeys
        } else {
            Capability::TenantsRead
        }
    }
}

/// Store, replace and delete a tenant's provider credentials: its admins (`tenant:config`); on
/// the platform, whoever manages tenants.
pub struct ManageProviderCredentials;
impl TenantPermission for ManageProviderCredentials {
    fn capability(own_tenant: bool) -> Capability {
        if own_tenant {
            Capability::TenantConfig
        } else {
            Capability::TenantsManage
        }
    }
}

/// See a tenant's usage, cost and budget: in the tenant, its admins (`tenant:config`); on the
/// platform, the owner and the billing-admin (`billing:read`).
pub struct ReadUsage;
impl TenantPermission for ReadUsage {
    fn capability(own_tenant: bool) -> Capability {
        if own_tenant {
            Capability::TenantConfig
        } else {
            Capability::BillingRead
        }
    }
}

/// Proof that a principal holds `P` over one tenant. Only [`Principal::require_for_tenant`]
/// makes one; the operations act only in its tenant.
pub struct InTenant<P> {
    actor: Actor,
    tenant: TenantId,
    _p: PhantomData<P>,
}

impl<P> InTenant<P> {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

impl Principal {
    /// A proof that this principal holds `P` over `tenant`: a tenant user only for their own
    /// tenant (any other is `NotFound`, never a hint that it exists); a missing capability is
    /// `Forbidden`.
    pub fn require_for_tenant<P: TenantPermission>(&self, tenant: TenantId) -> Result<InTenant<P>> {
        let own_tenant = match self.tenant_id {
            Some(own) if own == tenant => true,
            Some(_) => return Err(Error::NotFound),
            None => false,
        };
        if !self.can(&P::capability(own_tenant)) {
            return Err(Error::Forbidden);
        }
        Ok(InTenant {
            actor: self.actor(),
            tenant,
            _p: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;
    use crate::ids::TenantId;

    fn principal(roles: &[&str], tenant: Option<TenantId>) -> Principal {
        let catalog = Catalog::default();
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        Principal::new(
            UserId::new(),
            EmailAddress::parse("a@b.example").unwrap(),
            roles,
            tenant,
            &catalog,
        )
    }

    #[test]
    fn a_tenant_user_gets_no_proof_for_another_directory_and_no_hint_it_exists() {
        let own = TenantId::new();
        let admin = principal(&[Catalog::default().admin_role()], Some(own));
        assert!(admin.require_in::<ManageDirectory>(Directory::Tenant(own)).is_ok());
        for other in [Directory::Tenant(TenantId::new()), Directory::Platform] {
            assert!(matches!(
                admin.require_in::<ManageDirectory>(other),
                Err(Error::NotFound)
            ));
            assert!(matches!(admin.require_in::<ReadDirectory>(other), Err(Error::NotFound)));
        }
    }

    #[test]
    fn a_proof_needs_the_capability_for_that_directory() {
        let own = TenantId::new();
        let viewer = principal(&["viewer"], Some(own));
        assert!(viewer.require_in::<ReadDirectory>(Directory::Tenant(own)).is_ok());
        assert!(matches!(
            viewer.require_in::<ManageDirectory>(Directory::Tenant(own)),
            Err(Error::Forbidden)
        ));
        let billing = principal(&["billing-admin"], None);
        assert!(matches!(
            billing.require_in::<ManageDirectory>(Directory::Platform),
            Err(Error::Forbidden)
        ));
        let owner = principal(&["owner"], None);
        let proof = owner.require_in::<ManageDirectory>(Directory::Tenant(own)).unwrap();
        assert_eq!(proof.directory(), Directory::Tenant(own));
    }
}
