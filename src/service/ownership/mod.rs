//! The ownership registry and transfer jobs (creation, plans, cancellation). The worker that
//! moves records lives in [`super::transfers`].

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use super::{Call, Iam, Page, Target};
use crate::{
    domain::{
        Error, Reason, Result, Violations,
        access::Right,
        audit::{AuditRecord, RequestContext},
        caller::Caller,
        error::PreconditionViolation,
        ownership::{Ownership, Plan, Transfer, TransferRule, TransferState},
        user::UserState,
    },
    store::{Tx, ownership, roles, tenants, transfers},
};

mod commands;
mod plan;

/// A user who is neither ACTIVE nor INVITED and still owns records: the user, their state and
/// their records per module.
pub type OrphanedOwner = (Uuid, UserState, Vec<(String, i64)>);

pub use commands::*;
pub(super) use plan::resolve_targets;
use plan::{MAX_LISTED_VIOLATIONS, compute_plan, rules_json, violation};

impl Iam {
    /// `RecordOwnership`: every owner must be an ACTIVE or INVITED user of the tenant, every
    /// module in the catalog; otherwise nothing is written.
    /// Needs `users.edit` at TENANT scope (as every change to the registry and to jobs).
    pub async fn record_ownership(&self, call: &Call, cmd: RecordOwnership) -> Result<u64> {
        let (ctx, tenant_id, rows) = (&call.ctx, cmd.tenant_id.as_str(), cmd.rows);
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        // Everything that needs no database happens before the transaction (and the tenant lock).
        // One lock order for every writer of these rows, so concurrent writers cannot deadlock.
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| (&a.module, &a.resource_id).cmp(&(&b.module, &b.resource_id)));
        let statements = ownership::upsert_statements(self.db.backend(), tenant_id, &sorted);
        let mut per_module: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &sorted {
            *per_module.entry(&r.module).or_default() += 1;
        }
        let mut owners: Vec<Uuid> = rows.iter().map(|r| r.owner_user_id).collect();
        owners.sort_unstable();
        owners.dedup();
        let written = self
            .db
            .write(ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                let catalog: Vec<String> =
                    roles::catalog(&**tx, tenant_id).await?.into_iter().map(|m| m.name).collect();
                let mut v = Violations::default();
                for (i, r) in rows.iter().enumerate() {
                    if !catalog.contains(&r.module) {
                        v.add(
                            format!("ownerships[{i}].module"),
                            format!("unknown module {:?}: see GetPermissionCatalog", r.module),
                        );
                    }
                }
                v.finish()?;
                let states = ownership::user_states(&**tx, tenant_id, &owners).await?;
                let bad: Vec<PreconditionViolation> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let why = match states.get(&r.owner_user_id) {
                            None => "does not exist in this tenant".to_owned(),
                            Some(UserState::Active | UserState::Invited) => return None,
                            Some(s) => format!("is {}", s.as_str()),
                        };
                        Some(violation(
                            "OWNER_NOT_ACTIVE",
                            format!("ownerships[{i}]"),
                            format!(
                                "owner {} {why}; records can only be owned by ACTIVE or INVITED users",
                                r.owner_user_id
                            ),
                        ))
                    })
                    .collect();
                if !bad.is_empty() {
                    let mut e = Error::new(
                        crate::domain::Kind::FailedPrecondition,
                        Reason::OwnerNotActive,
                        format!(
                            "{} of {} records name an owner who is not an ACTIVE or INVITED user; nothing was recorded",
                            bad.len(),
                            rows.len()
                        ),
                    );
                    e.precondition_violations = bad.into_iter().take(MAX_LISTED_VIOLATIONS).collect();
                    return Err(e);
                }
                let written = ownership::upsert(tx, &statements).await?;
                tx.owners_changed(
                    tenant_id,
                    Some(sorted.iter().map(|r| (r.module.clone(), r.resource_id.clone())).collect()),
                );
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "ownership.recorded", "tenant", tenant_id)
                        .with_detail("records", sorted.len())
                        .with_detail("modules", json!(per_module)),
                );
                Ok(written.min(sorted.len() as u64))
            })
            .await?;
        Ok(written)
    }

    /// `ForgetOwnership`: returns how many of the records were registered.
    pub async fn forget_ownership(&self, call: &Call, cmd: ForgetOwnership) -> Result<u64> {
        let (tenant_id, refs) = (cmd.tenant_id.as_str(), cmd.records);
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                let removed = ownership::forget(tx, tenant_id, &refs).await?;
                if removed > 0 {
                    tx.owners_changed(tenant_id, Some(refs.clone()));
                }
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "ownership.forgotten", "tenant", tenant_id)
                        .with_detail("requested", refs.len())
                        .with_detail("forgotten", removed),
                );
                Ok(removed)
            })
            .await
    }

    /// `ListOwnedResources`: needs `users.view` over the user (anyone may list their own).
    pub async fn list_owned_resources(&self, caller: &Caller, q: &ListOwnedResources) -> Result<Page<Ownership>> {
        let (tenant_id, user_id, limit) = (q.tenant_id.as_str(), q.user_id, q.limit);
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::User(user_id)).await?;
        let conn = self.db.conn();
        self.user_row(conn, tenant_id, user_id).await?;
        let rows = ownership::list(conn, tenant_id, user_id, q.module.as_deref(), q.after.clone(), limit + 1).await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// `CountOwnedResources`: needs `users.view` over the user.
    pub async fn count_owned_resources(&self, caller: &Caller, q: OwnerRef) -> Result<Vec<(String, i64)>> {
        let (tenant_id, user_id) = (q.tenant_id.as_str(), q.user_id);
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::User(user_id)).await?;
        let conn = self.db.conn();
        self.user_row(conn, tenant_id, user_id).await?;
        ownership::counts(conn, tenant_id, user_id).await
    }

    /// Users who are neither ACTIVE nor INVITED but still own records (`users.view` at TENANT
    /// scope).
    pub async fn list_orphaned_owners(&self, caller: &Caller, q: &ListOrphanedOwners) -> Result<Page<OrphanedOwner>> {
        let (tenant_id, limit) = (q.tenant_id.as_str(), q.limit);
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::Tenant).await?;
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        let rows = ownership::orphaned(conn, tenant_id, q.after, limit + 1).await?;
        let ids: Vec<Uuid> = rows.iter().map(|(u, _)| *u).collect();
        let states = ownership::user_states(conn, tenant_id, &ids).await?;
        let items = rows
            .into_iter()
            .map(|(u, counts)| (u, states.get(&u).copied().unwrap_or(UserState::Purged), counts))
            .collect();
        Ok(Page::from_rows(items, limit))
    }

    /// `PlanTransfer`: changes nothing, but shows what a transfer would do (`users.edit` at
    /// TENANT scope, as starting it).
    pub async fn plan_transfer(&self, caller: &Caller, q: TransferRules) -> Result<Plan> {
        let tenant_id = q.tenant_id.as_str();
        self.authorize(caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.tenant_settings(tenant_id).await?;
        compute_plan(self.db.conn(), tenant_id, q.from_user_id, &q.rules).await
    }

    /// Creates a PENDING transfer in `tx` (the tenant is locked by the caller) if its plan is
    /// clean; FAILED_PRECONDITION (TRANSFER_INVALID) with the plan's violations otherwise.
    pub(super) async fn create_transfer(
        &self,
        tx: &Tx,
        ctx: &RequestContext,
        tenant_id: &str,
        from: Uuid,
        rules: &[TransferRule],
    ) -> Result<Transfer> {
        let plan = compute_plan(&**tx, tenant_id, from, rules).await?;
        if !plan.violations.is_empty() {
            let mut e = Error::new(
                crate::domain::Kind::FailedPrecondition,
                Reason::TransferInvalid,
                format!(
                    "the transfer cannot start: {}",
                    plan.violations.iter().map(|v| v.description.as_str()).collect::<Vec<_>>().join("; ")
                ),
            );
            e.precondition_violations = plan.violations;
            return Err(e);
        }
        let t = transfers::insert(tx, tenant_id, from, rules, plan.total, ctx.request_id.clone()).await?;
        tx.audit(
            AuditRecord::new(Some(tenant_id), "transfer.created", "transfer", t.transfer_id)
                .with_detail("from_user_id", from.to_string())
                .with_detail("rules", rules_json(rules))
                .with_detail("planned", plan.total),
        );
        Ok(t)
    }

    /// `StartTransfer`: returns the PENDING job at once; the worker runs it.
    pub async fn start_transfer(&self, call: &Call, cmd: TransferRules) -> Result<Transfer> {
        let (ctx, tenant_id, from, rules) = (&call.ctx, cmd.tenant_id.as_str(), cmd.from_user_id, cmd.rules);
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        let t = self
            .db
            .write(ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                self.create_transfer(tx, ctx, tenant_id, from, &rules).await
            })
            .await?;
        self.transfer_wake.notify_one();
        Ok(t)
    }

    /// `GetTransfer` (`users.view` at TENANT scope).
    pub async fn get_transfer(&self, caller: &Caller, q: TransferRef) -> Result<Transfer> {
        self.authorize(caller, &q.tenant_id, Right::USERS_VIEW, Target::Tenant).await?;
        self.transfer(&q.tenant_id, q.transfer_id).await
    }

    /// A transfer job, or NOT_FOUND.
    pub(super) async fn transfer(&self, tenant_id: &str, id: Uuid) -> Result<Transfer> {
        let conn = self.db.conn();
        match transfers::find(conn, tenant_id, id).await? {
            Some(t) => Ok(t),
            None => {
                self.tenant_settings(tenant_id).await?;
                Err(transfers::not_found(id))
            }
        }
    }

    /// `ListTransfers` (`users.view` at TENANT scope).
    pub async fn list_transfers(&self, caller: &Caller, q: &ListTransfers) -> Result<Page<Transfer>> {
        let (tenant_id, limit) = (q.tenant_id.as_str(), q.limit);
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::Tenant).await?;
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        let rows = transfers::list(conn, tenant_id, q.from_user_id, &q.states, q.before, limit + 1).await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// `CancelTransfer`: a PENDING job ends at once; a RUNNING one after its current batch.
    pub async fn cancel_transfer(&self, call: &Call, cmd: TransferRef) -> Result<Transfer> {
        let (tenant_id, id) = (cmd.tenant_id.as_str(), cmd.transfer_id);
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.db
            .write(&call.ctx, async |tx| {
                tenants::get_settings(&**tx, tenant_id).await?;
                let t = transfers::request_cancel(tx, tenant_id, id).await?;
                let action = if t.state == TransferState::Cancelled {
                    "transfer.cancelled"
                } else {
                    "transfer.cancel_requested"
                };
                tx.audit(
                    AuditRecord::new(Some(tenant_id), action, "transfer", id)
                        .with_detail("moved", t.moved)
                        .with_detail("total", t.total),
                );
                Ok(t)
            })
            .await
    }

    /// Refuses to delete or purge a user who still owns records, naming the counts per module.
    pub(super) async fn ensure_owns_nothing(&self, tx: &Tx, tenant_id: &str, user_id: Uuid, what: &str) -> Result<()> {
        let counts = ownership::counts(&**tx, tenant_id, user_id).await?;
        if counts.is_empty() {
            return Ok(());
        }
        let total: i64 = counts.iter().map(|(_, n)| n).sum();
        let mut e = Error::new(
            crate::domain::Kind::FailedPrecondition,
            Reason::OwnsRecords,
            format!(
                "the user still owns {total} records ({}); {what}",
                counts.iter().map(|(m, n)| format!("{m}: {n}")).collect::<Vec<_>>().join(", ")
            ),
        );
        e.precondition_violations = counts
            .into_iter()
            .map(|(m, n)| violation("OWNS_RECORDS", format!("modules/{m}"), format!("owns {n} {m} records")))
            .collect();
        Err(e)
    }
}
