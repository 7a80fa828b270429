//! `crm.iam.v1.OwnershipTransfer`: the ownership registry and transfer jobs.

use std::{collections::HashMap, pin::Pin};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    accept, convert, decode_page_token, decode_uuid_page_token, next_page_token, page_size, read,
    tenant_field as tenant, uuid_field as id,
};
use crate::{
    domain::{
        Error, Result, Violations,
        ownership::{Ownership, Plan, Transfer},
        validate,
    },
    proto::v1::{self as pb, ownership_transfer_server::OwnershipTransfer},
    service::{
        Iam, Page,
        ownership::{
            ForgetOwnership, ListOrphanedOwners, ListOwnedResources, ListTransfers, OrphanedOwner, OwnerRef,
            RecordOwnership, TransferRef, TransferRules,
        },
    },
};

pub struct OwnershipTransferApi {
    iam: Iam,
}

impl OwnershipTransferApi {
    pub fn new(iam: Iam) -> Self {
        OwnershipTransferApi { iam }
    }
}

/// Records per RecordOwnership / ForgetOwnership call.
const MAX_RECORDS: usize = 10_000;
const RESOURCE_ID_MAX: usize = 200;
const MODULE_MAX: usize = 63;
/// Field violations listed at most (a 10,000-row batch could otherwise produce a huge error).
const MAX_VIOLATIONS: usize = 100;

fn module_name(v: &mut Violations, field: &str, m: &str) -> String {
    if m.is_empty() {
        v.add(field, "is required");
    } else if m.len() > MODULE_MAX {
        v.add(field, format!("is not a module name (at most {MODULE_MAX} characters)"));
    }
    m.to_owned()
}

fn resource_id(v: &mut Violations, field: &str, r: &str) -> String {
    if r.is_empty() || r.chars().count() > RESOURCE_ID_MAX || r.chars().any(char::is_control) {
        v.add(field, format!("must be 1 to {RESOURCE_ID_MAX} characters without control characters"));
    }
    r.to_owned()
}

/// Checks a batch's size and finds records named twice.
fn batch_shape<T>(
    v: &mut Violations,
    field: &str,
    items: &[T],
    key: impl Fn(&T) -> (&str, &str),
) -> HashMap<(String, String), usize> {
    if items.is_empty() || items.len() > MAX_RECORDS {
        v.add(field, format!("give 1 to {MAX_RECORDS} records"));
    }
    let mut seen = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (m, r) = key(item);
        if let Some(first) = seen.insert((m.to_owned(), r.to_owned()), i) {
            v.add(format!("{field}[{i}]"), format!("names the same record as {field}[{first}]"));
        }
    }
    seen
}

/// Stops collecting violations of a huge batch at [`MAX_VIOLATIONS`].
fn too_many(v: &Violations) -> bool {
    v.len() >= MAX_VIOLATIONS
}

#[tonic::async_trait]
impl OwnershipTransfer for OwnershipTransferApi {
    async fn record_ownership(
        &self,
        req: Request<pb::RecordOwnershipRequest>,
    ) -> Result<Response<pb::RecordOwnershipResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let recorded = self.iam.record_ownership(&call, cmd).await?;
        Ok(Response::new(pb::RecordOwnershipResponse { recorded: recorded as i32 }))
    }

    async fn forget_ownership(
        &self,
        req: Request<pb::ForgetOwnershipRequest>,
    ) -> Result<Response<pb::ForgetOwnershipResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let forgotten = self.iam.forget_ownership(&call, cmd).await?;
        Ok(Response::new(pb::ForgetOwnershipResponse { forgotten: forgotten as i32 }))
    }

    async fn list_owned_resources(
        &self,
        req: Request<pb::ListOwnedResourcesRequest>,
    ) -> Result<Response<pb::ListOwnedResourcesResponse>, Status> {
        let (caller, query) = read(req)?;
        let page = self.iam.list_owned_resources(&caller, &query).await?;
        Ok(Response::new(owned_page(page, &query.filters)))
    }

    async fn count_owned_resources(
        &self,
        req: Request<pb::CountOwnedResourcesRequest>,
    ) -> Result<Response<pb::CountOwnedResourcesResponse>, Status> {
        let (caller, query) = read(req)?;
        let (counts, total) = convert::counts_to_proto(self.iam.count_owned_resources(&caller, query).await?);
        Ok(Response::new(pb::CountOwnedResourcesResponse { counts, total }))
    }

    async fn list_orphaned_owners(
        &self,
        req: Request<pb::ListOrphanedOwnersRequest>,
    ) -> Result<Response<pb::ListOrphanedOwnersResponse>, Status> {
        let (caller, query) = read(req)?;
        let page = self.iam.list_orphaned_owners(&caller, &query).await?;
        Ok(Response::new(orphans_page(page, &query.tenant_id)))
    }

    async fn plan_transfer(
        &self,
        req: Request<pb::PlanTransferRequest>,
    ) -> Result<Response<pb::PlanTransferResponse>, Status> {
        let (caller, query) = read(req)?;
        let plan = self.iam.plan_transfer(&caller, query).await?;
        Ok(Response::new(plan_to_proto(plan)))
    }

    async fn start_transfer(
        &self,
        req: Request<pb::StartTransferRequest>,
    ) -> Result<Response<pb::StartTransferResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let t = self.iam.start_transfer(&call, cmd).await?;
        Ok(Response::new(pb::StartTransferResponse { transfer: Some(convert::transfer_to_proto(t)) }))
    }

    async fn get_transfer(
        &self,
        req: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::GetTransferResponse>, Status> {
        let (caller, query) = read(req)?;
        let t = self.iam.get_transfer(&caller, query).await?;
        Ok(Response::new(pb::GetTransferResponse { transfer: Some(convert::transfer_to_proto(t)) }))
    }

    async fn list_transfers(
        &self,
        req: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        let (caller, query) = read(req)?;
        let page = self.iam.list_transfers(&caller, &query).await?;
        Ok(Response::new(transfers_page(page, &query.filters)))
    }

    async fn cancel_transfer(
        &self,
        req: Request<pb::CancelTransferRequest>,
    ) -> Result<Response<pb::CancelTransferResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let t = self.iam.cancel_transfer(&call, cmd).await?;
        Ok(Response::new(pb::CancelTransferResponse { transfer: Some(convert::transfer_to_proto(t)) }))
    }

    type WatchTransferStream = Pin<Box<dyn Stream<Item = Result<pb::WatchTransferResponse, Status>> + Send + 'static>>;

    async fn watch_transfer(
        &self,
        req: Request<pb::WatchTransferRequest>,
    ) -> Result<Response<Self::WatchTransferStream>, Status> {
        let (caller, query) = read(req)?;
        let reports = self.iam.watch_transfer(&caller, query).await?;
        Ok(Response::new(Box::pin(reports.map(transfer_report))))
    }
}

fn transfer_report(t: Result<Transfer>) -> Result<pb::WatchTransferResponse, Status> {
    Ok(pb::WatchTransferResponse { transfer: Some(convert::transfer_to_proto(t?)) })
}

fn owned_page(page: Page<Ownership>, filters: &str) -> pb::ListOwnedResourcesResponse {
    let next_page_token =
        next_page_token(&page, filters, |last| serde_json::json!([last.module, last.resource_id]).to_string());
    let ownerships = page
        .items
        .into_iter()
        .map(|o| pb::Ownership {
            module: o.module,
            resource_id: o.resource_id,
            owner_user_id: o.owner_user_id.to_string(),
        })
        .collect();
    pb::ListOwnedResourcesResponse { ownerships, next_page_token }
}

fn orphans_page(page: Page<OrphanedOwner>, filters: &str) -> pb::ListOrphanedOwnersResponse {
    let next_page_token = next_page_token(&page, filters, |(last, _, _)| last.to_string());
    let owners = page
        .items
        .into_iter()
        .map(|(user_id, state, counts)| {
            let (counts, total) = convert::counts_to_proto(counts);
            pb::OrphanedOwner {
                user_id: user_id.to_string(),
                state: convert::state_to_proto(state) as i32,
                counts,
                total,
            }
        })
        .collect();
    pb::ListOrphanedOwnersResponse { owners, next_page_token }
}

fn plan_to_proto(plan: Plan) -> pb::PlanTransferResponse {
    pb::PlanTransferResponse {
        moves: plan
            .moves
            .into_iter()
            .map(|(module, to, count)| pb::PlannedMove { module, to_user_id: to.to_string(), count })
            .collect(),
        total: plan.total,
        uncovered: plan.uncovered.into_iter().map(|(module, count)| pb::ModuleCount { module, count }).collect(),
        violations: plan.violations.into_iter().map(convert::precondition_to_proto).collect(),
    }
}

fn transfers_page(page: Page<Transfer>, filters: &str) -> pb::ListTransfersResponse {
    let next_page_token = next_page_token(&page, filters, |last| last.transfer_id.to_string());
    pb::ListTransfersResponse {
        transfers: page.items.into_iter().map(convert::transfer_to_proto).collect(),
        next_page_token,
    }
}

impl TryFrom<pb::RecordOwnershipRequest> for RecordOwnership {
    type Error = Error;

    fn try_from(msg: pb::RecordOwnershipRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        batch_shape(&mut v, "ownerships", &msg.ownerships, |o| (&o.module, &o.resource_id));
        let mut rows = Vec::with_capacity(msg.ownerships.len());
        for (i, o) in msg.ownerships.iter().enumerate() {
            if too_many(&v) {
                break;
            }
            rows.push(Ownership {
                module: module_name(&mut v, &format!("ownerships[{i}].module"), &o.module),
                resource_id: resource_id(&mut v, &format!("ownerships[{i}].resource_id"), &o.resource_id),
                owner_user_id: id(&mut v, &format!("ownerships[{i}].owner_user_id"), &o.owner_user_id),
            });
        }
        v.finish()?;
        Ok(RecordOwnership { tenant_id, rows })
    }
}

impl TryFrom<pb::ForgetOwnershipRequest> for ForgetOwnership {
    type Error = Error;

    fn try_from(msg: pb::ForgetOwnershipRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        batch_shape(&mut v, "resources", &msg.resources, |r| (&r.module, &r.resource_id));
        let mut records = Vec::with_capacity(msg.resources.len());
        for (i, r) in msg.resources.iter().enumerate() {
            if too_many(&v) {
                break;
            }
            records.push((
                module_name(&mut v, &format!("resources[{i}].module"), &r.module),
                resource_id(&mut v, &format!("resources[{i}].resource_id"), &r.resource_id),
            ));
        }
        v.finish()?;
        Ok(ForgetOwnership { tenant_id, records })
    }
}

impl TryFrom<pb::ListOwnedResourcesRequest> for ListOwnedResources {
    type Error = Error;

    fn try_from(msg: pb::ListOwnedResourcesRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        let module = (!msg.module.is_empty()).then(|| module_name(&mut v, "module", &msg.module));
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("{tenant_id}|{user_id}|{}", msg.module);
        let after = match decode_page_token(&msg.page_token, &filters)? {
            None => None,
            Some(k) => Some(
                serde_json::from_str::<(String, String)>(&k)
                    .map_err(|_| Error::invalid_field("page_token", "is not a page token of this query"))?,
            ),
        };
        Ok(ListOwnedResources { tenant_id, user_id, module, after, limit, filters })
    }
}

impl TryFrom<pb::CountOwnedResourcesRequest> for OwnerRef {
    type Error = Error;

    fn try_from(msg: pb::CountOwnedResourcesRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        v.finish()?;
        Ok(OwnerRef { tenant_id, user_id })
    }
}

impl TryFrom<pb::ListOrphanedOwnersRequest> for ListOrphanedOwners {
    type Error = Error;

    fn try_from(msg: pb::ListOrphanedOwnersRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let after = decode_uuid_page_token(&msg.page_token, &tenant_id)?;
        Ok(ListOrphanedOwners { tenant_id, after, limit })
    }
}

impl TransferRules {
    fn checked(tenant_id: &str, from_user_id: &str, rules: &[pb::TransferRule]) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, tenant_id);
        let from_user_id = id(&mut v, "from_user_id", from_user_id);
        let rules = convert::rules_from_proto(&mut v, rules);
        v.finish()?;
        Ok(TransferRules { tenant_id, from_user_id, rules })
    }
}

converts! {
    pb::PlanTransferRequest => TransferRules, |msg|
        TransferRules::checked(&msg.tenant_id, &msg.from_user_id, &msg.rules);
    pb::StartTransferRequest => TransferRules, |msg|
        TransferRules::checked(&msg.tenant_id, &msg.from_user_id, &msg.rules);
    pb::GetTransferRequest => TransferRef, |msg| TransferRef::checked(&msg.tenant_id, &msg.transfer_id);
    pb::CancelTransferRequest => TransferRef, |msg| TransferRef::checked(&msg.tenant_id, &msg.transfer_id);
    pb::WatchTransferRequest => TransferRef, |msg| TransferRef::checked(&msg.tenant_id, &msg.transfer_id);
}

impl TransferRef {
    fn checked(tenant_id: &str, transfer_id: &str) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, tenant_id);
        let transfer_id = id(&mut v, "transfer_id", transfer_id);
        v.finish()?;
        Ok(TransferRef { tenant_id, transfer_id })
    }
}

impl TryFrom<pb::ListTransfersRequest> for ListTransfers {
    type Error = Error;

    fn try_from(msg: pb::ListTransfersRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let from_user_id = v.check("from_user_id", validate::optional_uuid(&msg.from_user_id)).flatten();
        let mut states = Vec::new();
        for (i, s) in msg.states.iter().enumerate() {
            match pb::TransferState::try_from(*s).ok().and_then(convert::transfer_state_from_proto) {
                Some(s) => states.push(s),
                None => v.add(format!("states[{i}]"), "is not a transfer state"),
            }
        }
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("{tenant_id}|{}|{:?}", msg.from_user_id, msg.states);
        let before = decode_uuid_page_token(&msg.page_token, &filters)?;
        Ok(ListTransfers { tenant_id, from_user_id, states, before, limit, filters })
    }
}
