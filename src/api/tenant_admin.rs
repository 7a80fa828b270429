//! `crm.iam.v1.TenantAdmin`: tenants are created and listed by the platform; a tenant's own
//! administrators (settings rights) read and change its settings.

use tonic::{Request, Response, Status};

use super::{accept, convert, decode_page_token, mask_paths, next_page_token, page_size};
use crate::{
    domain::{
        Error, Violations,
        tenant::{NewTenant, TenantPatch, TenantSettings},
        validate,
    },
    proto::v1::{self as pb, tenant_admin_server::TenantAdmin},
    service::{
        Iam,
        tenants::{CreateTenant, GetTenant, ListTenants, UpdateTenant},
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
