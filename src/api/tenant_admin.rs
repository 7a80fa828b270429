//! `crm.iam.v1.TenantAdmin`: tenants are created and listed by the platform; a tenant's own
//! administrators (settings rights) read and change its settings.

use tonic::{Request, Response, Status};

use super::{
    accept, convert, decode_page_token, identity_providers as idp, mask_paths, next_page_token, page_size, read,
    tenant_field,
};
use crate::{
    domain::{
        Error, Violations,
        tenant::{NewTenant, TenantPatch, TenantSettings},
        validate,
    },
    proto::v1::{self as pb, tenant_admin_server::TenantAdmin},
    service::{
        Iam,
        scim::{self as scim, CreateScimToken, ListScimTokens, ScimToken, ScimTokenRef},
        tenants::{CreateTenant, GetTenant, ListTenants, SetTenantSuspended, UpdateTenant},
    },
};

pub struct TenantAdminApi {
    iam: Iam,
}

impl TenantAdminApi {
    pub fn new(iam: Iam) -> Self {
        TenantAdminApi { iam }
    }
}

#[tonic::async_trait]
impl TenantAdmin for TenantAdminApi {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tenant = self.iam.create_tenant(&call, cmd).await?;
        Ok(Response::new(pb::CreateTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::GetTenantResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tenant = self.iam.get_tenant(&call, cmd).await?;
        Ok(Response::new(pb::GetTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let page = self.iam.list_tenants(&call, cmd).await?;
        let next_page_token = next_page_token(&page, "tenants", |last| last.tenant_id.clone());
        let tenants = page.items.into_iter().map(convert::tenant_to_proto).collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants, next_page_token }))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tenant = self.iam.update_tenant(&call, cmd).await?;
        Ok(Response::new(pb::UpdateTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn suspend_tenant(
        &self,
        req: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::SuspendTenantResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tenant = self.iam.set_tenant_suspended(&call, cmd).await?;
        Ok(Response::new(pb::SuspendTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn resume_tenant(
        &self,
        req: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::ResumeTenantResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tenant = self.iam.set_tenant_suspended(&call, cmd).await?;
        Ok(Response::new(pb::ResumeTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn create_scim_token(
        &self,
        req: Request<pb::CreateScimTokenRequest>,
    ) -> Result<Response<pb::CreateScimTokenResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let (row, token) = self.iam.create_scim_token(&call, cmd).await?;
        let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
        Ok(Response::new(pb::CreateScimTokenResponse { token, scim_token: Some(scim_token_to_proto(row)) }))
    }

    async fn list_scim_tokens(
        &self,
        req: Request<pb::ListScimTokensRequest>,
    ) -> Result<Response<pb::ListScimTokensResponse>, Status> {
        let (caller, query): (_, ListScimTokens) = read(req)?;
        let tokens = self.iam.list_scim_tokens(&caller, &query).await?;
        Ok(Response::new(pb::ListScimTokensResponse {
            scim_tokens: tokens.into_iter().map(scim_token_to_proto).collect(),
        }))
    }

    async fn revoke_scim_token(
        &self,
        req: Request<pb::RevokeScimTokenRequest>,
    ) -> Result<Response<pb::RevokeScimTokenResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let row = self.iam.revoke_scim_token(&call, cmd).await?;
        Ok(Response::new(pb::RevokeScimTokenResponse { scim_token: Some(scim_token_to_proto(row)) }))
    }

    async fn create_identity_provider(
        &self,
        req: Request<pb::CreateIdentityProviderRequest>,
    ) -> Result<Response<pb::CreateIdentityProviderResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let provider = self.iam.create_identity_provider(&call, cmd).await?;
        Ok(Response::new(pb::CreateIdentityProviderResponse { identity_provider: Some(idp::to_proto(provider)) }))
    }

    async fn list_identity_providers(
        &self,
        req: Request<pb::ListIdentityProvidersRequest>,
    ) -> Result<Response<pb::ListIdentityProvidersResponse>, Status> {
        let (caller, query) = read(req)?;
        let providers = self.iam.list_identity_providers(&caller, &query).await?;
        let identity_providers = providers.into_iter().map(idp::to_proto).collect();
        Ok(Response::new(pb::ListIdentityProvidersResponse { identity_providers }))
    }

    async fn delete_identity_provider(
        &self,
        req: Request<pb::DeleteIdentityProviderRequest>,
    ) -> Result<Response<pb::DeleteIdentityProviderResponse>, Status> {
        let (call, cmd) = accept(req)?;
        self.iam.delete_identity_provider(&call, cmd).await?;
        Ok(Response::new(pb::DeleteIdentityProviderResponse {}))
    }
}

fn scim_token_to_proto(t: ScimToken) -> pb::ScimToken {
    pb::ScimToken {
        name: t.name,
        create_time: Some(convert::ts(t.create_time)),
        expire_time: convert::opt_ts(t.expire_time),
        revoke_time: convert::opt_ts(t.revoke_time),
        last_used_time: convert::opt_ts(t.last_used_time),
        created_by: t.created_by,
    }
}

impl TryFrom<pb::CreateScimTokenRequest> for CreateScimToken {
    type Error = Error;

    fn try_from(msg: pb::CreateScimTokenRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        scim::check_name(&msg.name, "name", &mut v);
        let ttl = convert::secs(&mut v, "ttl", msg.ttl.as_ref());
        if ttl > scim::MAX_TTL.as_secs() {
            v.add("ttl", "must be at most 5 years (1826d)");
        }
        v.finish()?;
        let ttl = (ttl > 0).then(|| std::time::Duration::from_secs(ttl));
        Ok(CreateScimToken { tenant_id, name: msg.name, ttl })
    }
}

impl TryFrom<pb::ListScimTokensRequest> for ListScimTokens {
    type Error = Error;

    fn try_from(msg: pb::ListScimTokensRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        v.finish()?;
        Ok(ListScimTokens { tenant_id })
    }
}

impl TryFrom<pb::RevokeScimTokenRequest> for ScimTokenRef {
    type Error = Error;

    fn try_from(msg: pb::RevokeScimTokenRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        scim::check_name(&msg.name, "name", &mut v);
        v.finish()?;
        Ok(ScimTokenRef { tenant_id, name: msg.name })
    }
}

const MAX_SEATS: i32 = 1_000_000;

fn seat_limit(v: &mut Violations, n: i32) -> i32 {
    if !(0..=MAX_SEATS).contains(&n) {
        v.add("tenant.seat_limit", format!("must be between 0 (unlimited) and {MAX_SEATS}"));
    }
    n
}

impl TryFrom<pb::CreateTenantRequest> for CreateTenant {
    type Error = Error;

    fn try_from(msg: pb::CreateTenantRequest) -> Result<Self, Error> {
        let t = msg.tenant.unwrap_or_default();
        let mut v = Violations::default();
        let tenant_id = v.check("tenant.tenant_id", validate::tenant_id(&t.tenant_id));
        let display_name = v.check("tenant.display_name", validate::required_text(&t.display_name, 200));
        let seat_limit = seat_limit(&mut v, t.seat_limit);
        let settings = convert::settings_patch(&mut v, t.settings.as_ref(), &["settings".to_owned()]);
        let applied = TenantSettings::default().apply(&settings).map_err(|more| v.extend(more)).ok();
        v.finish()?;
        let tenant = NewTenant {
            tenant_id: tenant_id.expect("checked"),
            display_name: display_name.expect("checked"),
            seat_limit,
            settings: applied.expect("checked"),
        };
        Ok(CreateTenant { tenant, settings })
    }
}

impl TryFrom<pb::GetTenantRequest> for GetTenant {
    type Error = Error;

    fn try_from(msg: pb::GetTenantRequest) -> Result<Self, Error> {
        let tenant_id = validate::tenant_id(&msg.tenant_id).map_err(|d| Error::invalid_field("tenant_id", d))?;
        Ok(GetTenant { tenant_id })
    }
}

fn suspension(tenant_id: &str, reason: &str, suspend: bool) -> Result<SetTenantSuspended, Error> {
    let mut v = Violations::default();
    let tenant_id = v.check("tenant_id", validate::tenant_id(tenant_id));
    let reason = v.check("reason", validate::required_text(reason, 500));
    v.finish()?;
    Ok(SetTenantSuspended { tenant_id: tenant_id.expect("checked"), suspend, reason: reason.expect("checked") })
}

impl TryFrom<pb::SuspendTenantRequest> for SetTenantSuspended {
    type Error = Error;

    fn try_from(msg: pb::SuspendTenantRequest) -> Result<Self, Error> {
        suspension(&msg.tenant_id, &msg.reason, true)
    }
}

impl TryFrom<pb::ResumeTenantRequest> for SetTenantSuspended {
    type Error = Error;

    fn try_from(msg: pb::ResumeTenantRequest) -> Result<Self, Error> {
        suspension(&msg.tenant_id, &msg.reason, false)
    }
}

impl TryFrom<pb::ListTenantsRequest> for ListTenants {
    type Error = Error;

    fn try_from(msg: pb::ListTenantsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        Ok(ListTenants { after: decode_page_token(&msg.page_token, "tenants")?, limit })
    }
}

impl TryFrom<pb::UpdateTenantRequest> for UpdateTenant {
    type Error = Error;

    fn try_from(msg: pb::UpdateTenantRequest) -> Result<Self, Error> {
        let t = msg.tenant.unwrap_or_default();
        let mut allowed = vec!["display_name", "seat_limit"];
        allowed.extend_from_slice(convert::SETTINGS_PATHS);
        let paths = mask_paths(msg.update_mask.as_ref(), &allowed)?;
        let mut v = Violations::default();
        let tenant_id = v.check("tenant.tenant_id", validate::tenant_id(&t.tenant_id));
        let has = |p: &str| paths.iter().any(|x| x == p);
        let mut patch = TenantPatch::default();
        if has("display_name") {
            patch.display_name = v.check("tenant.display_name", validate::required_text(&t.display_name, 200));
        }
        if has("seat_limit") {
            patch.seat_limit = Some(seat_limit(&mut v, t.seat_limit));
        }
        patch.settings = convert::settings_patch(&mut v, t.settings.as_ref(), &paths);
        v.finish()?;
        let etag = if msg.etag.is_empty() { t.etag } else { msg.etag };
        Ok(UpdateTenant { tenant_id: tenant_id.expect("checked"), patch, etag })
    }
}
