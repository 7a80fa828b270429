//! `crm.iam.v1.Access`: the hot path. Decisions come from memory (see `service::access`).

use crate::domain::access::Right;
use tonic::{Request, Response, Status};

use super::{caller, convert, record_tenant};
use crate::{
    domain::{Violations, access::ResourceFacts, caller::Caller, validate},
    proto::v1::{self as pb, access_server::Access},
    service::{Iam, Target, access::CheckInput},
};

pub struct AccessApi {
    iam: Iam,
}

impl AccessApi {
    pub fn new(iam: Iam) -> Self {
        AccessApi { iam }
    }
}

impl AccessApi {
    /// Services and the platform ask about anyone; a user may ask about themselves, and about
    /// others only with roles.view at tenant scope (rights of others are an administrator's view).
    async fn may_check(
        &self,
        caller: &Caller,
        tenant_id: &str,
        mut users: impl Iterator<Item = uuid::Uuid>,
    ) -> Result<(), Status> {
        if let Caller::User(u) = caller {
            if users.all(|id| id == u.user_id) {
                super::same_tenant(caller, tenant_id)?;
            } else {
                self.iam.authorize(caller, tenant_id, Right::ROLES_VIEW, Target::Tenant).await?;
            }
        }
        Ok(())
    }
}

/// Most checks in one BatchCheck.
pub const MAX_BATCH: usize = 1000;

/// One check of a request. `prefix` names the check in field paths; it is only called when a
/// field is bad (the hot path allocates no field names).
fn input(
    v: &mut Violations,
    prefix: impl Fn() -> String,
    user_id: &str,
    module: String,
    action: String,
    r: Option<pb::Resource>,
) -> CheckInput {
    let mut bad = |field: &str, result: Result<(), String>| {
        if let Err(description) = result {
            v.add(format!("{}{field}", prefix()), description);
        }
    };
    let user_id = match validate::uuid(user_id) {
        Ok(u) => u,
        Err(d) => {
            bad("user_id", Err(d));
            Default::default()
        }
    };
    if module.is_empty() {
        bad("module", Err("is required".into()));
    }
    if action.is_empty() {
        bad("action", Err("is required".into()));
    }
    let mut resource = ResourceFacts::default();
    if let Some(r) = r {
        resource.resource_id = (!r.resource_id.is_empty()).then_some(r.resource_id);
        match validate::optional_uuid(&r.owner_user_id) {
            Ok(u) => resource.owner_user_id = u,
            Err(d) => bad("resource.owner_user_id", Err(d)),
        }
        match validate::optional_uuid(&r.department_id) {
            Ok(d) => resource.department_id = d,
            Err(e) => bad("resource.department_id", Err(e)),
        }
    }
    CheckInput { user_id, module, action, resource }
}

fn decision(d: crate::domain::access::Decision) -> (bool, i32, String) {
    (d.allowed, convert::scope_to_proto(d.scope) as i32, d.reason)
}

#[tonic::async_trait]
impl Access for AccessApi {
    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.into_inner();
        record_tenant(&msg.tenant_id);
        let mut v = Violations::default();
        let tenant_id = v.check("tenant_id", validate::tenant_id(&msg.tenant_id)).unwrap_or_default();
        let check = input(&mut v, String::new, &msg.user_id, msg.module, msg.action, msg.resource);
        if !v.is_empty() && !tenant_id.is_empty() {
            v.extend(self.iam.unknown_names(&tenant_id, &[(String::new(), &check)]).await);
        }
        v.finish()?;
        self.may_check(&caller, &tenant_id, std::iter::once(check.user_id)).await?;
        let (allowed, scope, reason) = decision(self.iam.check(&tenant_id, check).await?);
        Ok(Response::new(pb::CheckResponse { allowed, scope, reason }))
    }

    async fn batch_check(
        &self,
        req: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.into_inner();
        record_tenant(&msg.tenant_id);
        let mut v = Violations::default();
        let tenant_id = v.check("tenant_id", validate::tenant_id(&msg.tenant_id)).unwrap_or_default();
        if msg.checks.is_empty() || msg.checks.len() > MAX_BATCH {
            v.add("checks", format!("must hold 1 to {MAX_BATCH} checks"));
        }
        let checks: Vec<CheckInput> = msg
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| input(&mut v, || format!("checks[{i}]."), &c.user_id, c.module, c.action, c.resource))
            .collect();
        if !v.is_empty() && !tenant_id.is_empty() && checks.len() <= MAX_BATCH {
            let named: Vec<(String, &CheckInput)> =
                checks.iter().enumerate().map(|(i, c)| (format!("checks[{i}]."), c)).collect();
            v.extend(self.iam.unknown_names(&tenant_id, &named).await);
        }
        v.finish()?;
        self.may_check(&caller, &tenant_id, checks.iter().map(|c| c.user_id)).await?;
        let results = self
            .iam
            .batch_check(&tenant_id, checks)
            .await?
            .into_iter()
            .map(|d| {
                let (allowed, scope, reason) = decision(d);
                pb::AccessDecision { allowed, scope, reason }
            })
            .collect();
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }
}
