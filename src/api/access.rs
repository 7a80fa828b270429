//! `crm.iam.v1.Access`: the hot path. Decisions come from memory (see `service::access`).

use tonic::{Request, Response, Status};

use super::{convert, read};
use crate::{
    domain::{Error, Violations, access::ResourceFacts, validate},
    proto::v1::{self as pb, access_server::Access},
    service::{
        Iam,
        access::{BatchCheckQuery, CheckInput, CheckQuery},
    },
};

pub struct AccessApi {
    iam: Iam,
}

impl AccessApi {
    pub fn new(iam: Iam) -> Self {
        AccessApi { iam }
    }
}

pub use crate::service::access::MAX_BATCH;

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

fn batch_decision(d: crate::domain::access::Decision) -> pb::AccessDecision {
    let (allowed, scope, reason) = decision(d);
    pb::AccessDecision { allowed, scope, reason }
}

#[tonic::async_trait]
impl Access for AccessApi {
    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let (caller, query) = read(req)?;
        let (allowed, scope, reason) = decision(self.iam.access_check(&caller, query).await?);
        Ok(Response::new(pb::CheckResponse { allowed, scope, reason }))
    }

    async fn batch_check(
        &self,
        req: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let (caller, query) = read(req)?;
        let decisions = self.iam.access_batch_check(&caller, query).await?;
        Ok(Response::new(pb::BatchCheckResponse { results: decisions.into_iter().map(batch_decision).collect() }))
    }
}

impl TryFrom<pb::CheckRequest> for CheckQuery {
    type Error = Error;

    fn try_from(msg: pb::CheckRequest) -> Result<Self, Error> {
        let mut invalid = Violations::default();
        let tenant_id = invalid.check("tenant_id", validate::tenant_id(&msg.tenant_id)).unwrap_or_default();
        let check = input(&mut invalid, String::new, &msg.user_id, msg.module, msg.action, msg.resource);
        Ok(CheckQuery { tenant_id, check, invalid })
    }
}

impl TryFrom<pb::BatchCheckRequest> for BatchCheckQuery {
    type Error = Error;

    fn try_from(msg: pb::BatchCheckRequest) -> Result<Self, Error> {
        let mut invalid = Violations::default();
        let tenant_id = invalid.check("tenant_id", validate::tenant_id(&msg.tenant_id)).unwrap_or_default();
        if msg.checks.is_empty() || msg.checks.len() > MAX_BATCH {
            invalid.add("checks", format!("must hold 1 to {MAX_BATCH} checks"));
        }
        let checks = msg
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| input(&mut invalid, || format!("checks[{i}]."), &c.user_id, c.module, c.action, c.resource))
            .collect();
        Ok(BatchCheckQuery { tenant_id, checks, invalid })
    }
}
