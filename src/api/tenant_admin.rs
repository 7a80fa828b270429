//! `crm.iam.v1.TenantAdmin`: tenants are created and listed by the platform; a tenant's own
//! administrators (settings rights) read and change its settings.

use crate::domain::access::Right;
use tonic::{Request, Response, Status};

use super::{
    caller, convert, decode_page_token, mask_paths, mutation, next_page_token, page_size, record_tenant,
    require_platform,
};
use crate::{
    domain::{
        Violations,
        tenant::{NewTenant, TenantPatch, TenantSettings},
        validate,
    },
    proto::v1::{self as pb, tenant_admin_server::TenantAdmin},
    service::Iam,
    service::Target,
};

pub struct TenantAdminApi {
    iam: Iam,
}

impl TenantAdminApi {
    pub fn new(iam: Iam) -> Self {
        TenantAdminApi { iam }
    }
}

const MAX_SEATS: i32 = 1_000_000;

fn seat_limit(v: &mut Violations, n: i32) -> i32 {
    if !(0..=MAX_SEATS).contains(&n) {
        v.add("tenant.seat_limit", format!("must be between 0 (unlimited) and {MAX_SEATS}"));
    }
    n
}

#[tonic::async_trait]
impl TenantAdmin for TenantAdminApi {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let caller = caller(&req)?;
        require_platform(&caller)?;
        let msg = req.get_ref();
        let t = msg.tenant.clone().unwrap_or_default();
        record_tenant(&t.tenant_id);
        let ctx = mutation(&req, &caller, "", "/crm.iam.v1.TenantAdmin/CreateTenant", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let mut v = Violations::default();
        let tenant_id = v.check("tenant.tenant_id", validate::tenant_id(&t.tenant_id));
        let display_name = v.check("tenant.display_name", validate::required_text(&t.display_name, 200));
        let seat_limit = seat_limit(&mut v, t.seat_limit);
        let patch = convert::settings_patch(&mut v, t.settings.as_ref(), &["settings".to_owned()]);
        let settings = match TenantSettings::default().apply(&patch) {
            Ok(s) => {
                s.check_audit_floor(&patch, self.iam.audit.min_retention_secs(), "tenant.settings.", &mut v);
                Some(s)
            }
            Err(more) => {
                for f in more.into_error().field_violations {
                    v.add(f.field, f.description);
                }
                None
            }
        };
        v.finish()?;
        let new = NewTenant {
            tenant_id: tenant_id.expect("checked"),
            display_name: display_name.expect("checked"),
            seat_limit,
            settings: settings.expect("checked"),
        };
        let tenant = self.iam.create_tenant(&ctx, new).await?;
        Ok(Response::new(pb::CreateTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::GetTenantResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        record_tenant(&msg.tenant_id);
        let id =
            validate::tenant_id(&msg.tenant_id).map_err(|d| crate::domain::Error::invalid_field("tenant_id", d))?;
        self.iam.authorize(&caller, &id, Right::SETTINGS_VIEW, Target::Tenant).await?;
        let tenant = self.iam.get_tenant(&id).await?;
        Ok(Response::new(pb::GetTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        require_platform(&caller(&req)?)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let after = decode_page_token(&msg.page_token, "tenants")?;
        let page = self.iam.list_tenants(after.as_deref(), limit).await?;
        let next_page_token = next_page_token(&page, "tenants", |last| last.tenant_id.clone());
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.items.into_iter().map(convert::tenant_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let t = msg.tenant.clone().unwrap_or_default();
        record_tenant(&t.tenant_id);
        let mut allowed = vec!["display_name", "seat_limit"];
        allowed.extend_from_slice(convert::SETTINGS_PATHS);
        let paths = mask_paths(msg.update_mask.as_ref(), &allowed)?;
        let ctx =
            mutation(&req, &caller, &t.tenant_id, "/crm.iam.v1.TenantAdmin/UpdateTenant", msg, &msg.request_id, |m| {
                m.request_id.clear()
            })?;
        let mut v = Violations::default();
        let tenant_id = v.check("tenant.tenant_id", validate::tenant_id(&t.tenant_id));
        if let Some(tenant_id) = &tenant_id {
            self.iam.authorize(&caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        }
        let has = |p: &str| paths.iter().any(|x| x == p);
        if has("seat_limit") {
            // Seats are what the customer pays for: only the platform changes them.
            require_platform(&caller)?;
        }
        let mut patch = TenantPatch::default();
        if has("display_name") {
            patch.display_name = v.check("tenant.display_name", validate::required_text(&t.display_name, 200));
        }
        if has("seat_limit") {
            patch.seat_limit = Some(seat_limit(&mut v, t.seat_limit));
        }
        patch.settings = convert::settings_patch(&mut v, t.settings.as_ref(), &paths);
        v.finish()?;
        let etag = if msg.etag.is_empty() { &t.etag } else { &msg.etag };
        let tenant = self.iam.update_tenant(&ctx, &tenant_id.expect("checked"), patch, etag).await?;
        Ok(Response::new(pb::UpdateTenantResponse { tenant: Some(convert::tenant_to_proto(tenant)) }))
    }
}
