//! Single sign-on with OpenID Connect: tenants' identity providers (TenantAdmin
//! Create/List/DeleteIdentityProvider), the sign-in flow with crm-iam as relying party
//! ([`flow`]: Auth.BeginSso / CompleteSso) and back-channel logout ([`logout`]).
//!
//! A provider can sign in as any user of its allowed e-mail domains and its group mappings give
//! roles, so connecting one is as strong as holding the administrator role: only who could give
//! that role may manage providers (as for SCIM tokens). Its client secret is sealed with the
//! master key (bound to the provider's id) and never leaves crm-iam except to its token endpoint.

mod flow;
mod logout;
mod provider;
mod tokens;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::flow::{BeginSso, CompleteSso, STATE_TTL_SECS, SsoStart};
pub use self::logout::LogoutOutcome;
pub use self::provider::Sso;
use super::{Call, Iam};
use crate::{
    domain::{Error, Kind, Reason, Result, Violations, audit::AuditRecord, caller::Caller, now},
    secrets::Slot,
    store::{roles, sessions, sso, tenants, users},
};

/// Providers a tenant may connect.
pub const MAX_PROVIDERS: u64 = 10;

/// Where the ID token's claims are found (claim names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimMapping {
    pub email: String,
    pub given_name: String,
    pub family_name: String,
    pub phone: String,
    /// Empty: not taken from the provider.
    pub position: String,
    /// Empty: not taken from the provider.
    pub department: String,
    pub groups: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            email: "email".into(),
            given_name: "given_name".into(),
            family_name: "family_name".into(),
            phone: "phone_number".into(),
            position: String::new(),
            department: String::new(),
            groups: "groups".into(),
        }
    }
}

/// One group of the provider and the role it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRole {
    pub group: String,
    pub role_id: Uuid,
}

/// What a connection holds besides its identity (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderConfig {
    pub scopes: Vec<String>,
    pub allowed_email_domains: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub group_role_mappings: Vec<GroupRole>,
    pub break_glass_user_ids: Vec<Uuid>,
    #[serde(default)]
    pub claims: ClaimMapping,
}

impl ProviderConfig {
    /// Whether an address's domain is one the provider may speak for.
    pub fn allows_email(&self, email_key: &str) -> bool {
        let Some((_, domain)) = email_key.rsplit_once('@') else { return false };
        self.allowed_email_domains.iter().any(|d| d == domain)
    }
}

/// A tenant's identity provider as shown (never its secret).
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub jit_provisioning: bool,
    pub sso_required: bool,
    pub config: ProviderConfig,
    pub create_time: chrono::DateTime<chrono::Utc>,
    pub created_by: String,
}

impl IdentityProvider {
    fn of(row: &sso::Provider) -> Result<IdentityProvider> {
        Ok(IdentityProvider {
            name: row.name.clone(),
            issuer: row.issuer.clone(),
            client_id: row.client_id.clone(),
            jit_provisioning: row.jit_provisioning,
            sso_required: row.sso_required,
            config: config_of(row)?,
            create_time: row.create_time,
            created_by: row.created_by.clone(),
        })
    }
}

pub(crate) fn config_of(row: &sso::Provider) -> Result<ProviderConfig> {
    serde_json::from_str(&row.config).map_err(|e| Error::internal(anyhow::anyhow!("stored provider config: {e}")))
}

/// TenantAdmin.CreateIdentityProvider, checked field by field.
pub struct CreateIdentityProvider {
    pub tenant_id: String,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub jit_provisioning: bool,
    pub sso_required: bool,
    pub config: ProviderConfig,
}

/// One provider of a tenant, by name.
pub struct IdentityProviderRef {
    pub tenant_id: String,
    pub name: String,
}

/// A tenant's providers.
pub struct ListIdentityProviders {
    pub tenant_id: String,
}

const DOING: &str = "connect identity providers (they sign in as any user of their domains)";

impl Iam {
    pub async fn create_identity_provider(&self, call: &Call, cmd: CreateIdentityProvider) -> Result<IdentityProvider> {
        let CreateIdentityProvider {
            tenant_id,
            name,
            issuer,
            client_id,
            client_secret,
            jit_provisioning,
            sso_required,
            config,
        } = cmd;
        let (caller, tenant_id) = (&call.caller, tenant_id.as_str());
        self.may_act_as_administrator(caller, tenant_id, "identity providers", DOING).await?;
        if let Err(d) = self.sso.check_issuer(&issuer) {
            return Err(Error::invalid_field("identity_provider.issuer", d));
        }
        let roles: Vec<Uuid> = config.group_role_mappings.iter().map(|m| m.role_id).collect();
        self.roles_within_own_rights(caller, tenant_id, &roles, "map a group to a role").await?;
        // The provider must answer as the issuer it claims before anything is stored.
        self.sso.discover(&issuer, false).await.map_err(|why| {
            Error::precondition(
                Reason::IdentityProviderUnavailable,
                "IDENTITY_PROVIDER",
                issuer.clone(),
                format!("the issuer's discovery document could not be used: {why}"),
            )
        })?;
        let idp_id = Uuid::now_v7();
        let row = sso::Provider {
            idp_id,
            tenant_id: tenant_id.to_owned(),
            name,
            issuer,
            client_id,
            client_secret_sealed: self
                .auth
                .secrets
                .seal(Slot::IdpClientSecret(idp_id), client_secret.expose_secret().as_bytes()),
            config: serde_json::to_string(&config).map_err(Error::internal)?,
            jit_provisioning,
            sso_required,
            created_by: caller.actor().id,
            create_time: now(),
        };
        self.db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                let mut v = Violations::default();
                for (i, m) in config.group_role_mappings.iter().enumerate() {
                    if roles::find(&**tx, tenant_id, m.role_id).await?.is_none() {
                        v.add(
                            format!("identity_provider.group_role_mappings[{i}].role_id"),
                            "role does not exist in this tenant",
                        );
                    }
                }
                for (i, u) in config.break_glass_user_ids.iter().enumerate() {
                    if users::find(&**tx, tenant_id, *u).await?.is_none() {
                        v.add(
                            format!("identity_provider.break_glass_user_ids[{i}]"),
                            "user does not exist in this tenant",
                        );
                    }
                }
                v.finish()?;
                let n = sso::count(&**tx, tenant_id).await?;
                if n >= MAX_PROVIDERS {
                    return Err(Error::precondition(
                        Reason::IdentityProviderUnavailable,
                        "IDENTITY_PROVIDERS",
                        format!("tenants/{tenant_id}"),
                        format!("the tenant has {n} identity providers, the most it may: delete one first"),
                    ));
                }
                let row = sso::insert(tx, row).await?;
                let view = IdentityProvider::of(&row)?;
                // From now on passwords are refused: the password sessions end too (break-glass
                // users keep theirs), or they would keep refreshing past the requirement.
                let mut ended = 0;
                if row.sso_required {
                    let open: Vec<(Uuid, Uuid)> = sso::password_sessions(&**tx, tenant_id)
                        .await?
                        .into_iter()
                        .filter(|(_, u)| !config.break_glass_user_ids.contains(u))
                        .collect();
                    let ids: Vec<Uuid> = open.iter().map(|(s, _)| *s).collect();
                    ended = sessions::end(tx, &ids, "sso_required").await?;
                    for (_, user_id) in &open {
                        tx.policy_changed(tenant_id, Some(*user_id));
                    }
                }
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "idp.created", "identity_provider", &row.name)
                        .with_detail("issuer", row.issuer.clone())
                        .with_detail("client_id", row.client_id.clone())
                        .with_detail("allowed_email_domains", view.config.allowed_email_domains.clone())
                        .with_detail("jit_provisioning", row.jit_provisioning)
                        .with_detail("sso_required", row.sso_required)
                        .with_detail("group_role_mappings", view.config.group_role_mappings.len())
                        .with_detail("password_sessions_ended", ended),
                );
                Ok(SerdeView(row))
            })
            .await
            .and_then(|v| IdentityProvider::of(&v.0))
    }

    pub async fn list_identity_providers(
        &self,
        caller: &Caller,
        q: &ListIdentityProviders,
    ) -> Result<Vec<IdentityProvider>> {
        let tenant_id = q.tenant_id.as_str();
        self.may_act_as_administrator(caller, tenant_id, "identity providers", DOING).await?;
        tenants::get(self.db.conn(), tenant_id).await?;
        sso::list(self.db.conn(), tenant_id).await?.iter().map(IdentityProvider::of).collect()
    }

    /// Removes a provider; the sessions it opened end.
    pub async fn delete_identity_provider(&self, call: &Call, cmd: IdentityProviderRef) -> Result<()> {
        let (tenant_id, name) = (cmd.tenant_id.as_str(), cmd.name.as_str());
        self.may_act_as_administrator(&call.caller, tenant_id, "identity providers", DOING).await?;
        self.db
            .write(&call.ctx, async |tx| {
                let row = sso::find_by_name(&**tx, tenant_id, name).await?.ok_or_else(|| sso::not_found(name))?;
                let open = sso::delete(tx, row.idp_id).await?;
                let ids: Vec<Uuid> = open.iter().map(|(s, _)| *s).collect();
                sessions::end(tx, &ids, "idp_deleted").await?;
                for (_, user_id) in &open {
                    tx.policy_changed(tenant_id, Some(*user_id));
                }
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "idp.deleted", "identity_provider", name)
                        .with_detail("sessions_ended", ids.len()),
                );
                Ok(())
            })
            .await
    }

    /// Whether password logins of this user are refused because the tenant requires single
    /// sign-on (the user is not one of a requiring provider's break-glass users).
    pub(crate) async fn password_login_refused_by_sso(&self, tenant_id: &str, user_id: Uuid) -> Result<bool> {
        let requiring = sso::requiring_sso(self.db.conn(), tenant_id).await?;
        if requiring.is_empty() {
            return Ok(false);
        }
        for row in &requiring {
            if config_of(row)?.break_glass_user_ids.contains(&user_id) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A provider's client secret.
    fn client_secret(&self, row: &sso::Provider) -> Result<SecretString> {
        self.auth
            .secrets
            .open_str(Slot::IdpClientSecret(row.idp_id), &row.client_secret_sealed)
            .map_err(|e| Error::internal(anyhow::anyhow!("the client secret of identity provider {}: {e}", row.name)))
    }
}

/// A stored provider through `Db::write` (whose outputs are serializable).
#[derive(Serialize, Deserialize)]
struct SerdeView(sso::Provider);

/// An SSO refusal: one answer whatever the reason (the reason is audited).
pub fn sso_failed() -> Error {
    Error::new(
        Kind::Unauthenticated,
        Reason::SsoFailed,
        "single sign-on failed: start again (the reason is in the tenant's audit trail)",
    )
}
