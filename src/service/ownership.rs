//! The ownership registry and transfer jobs (creation, plans, cancellation). The worker that
//! moves records lives in [`super::transfers`].

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use uuid::Uuid;

use super::{Iam, Page, access::compile_policy};
use crate::{
    domain::{
        Error, Reason, Result, Violations,
        access::{Policy, Scope, UserFacts},
        audit::{AuditRecord, RequestContext},
        error::PreconditionViolation,
        ownership::{Ownership, Plan, RuleTarget, Transfer, TransferRule, TransferState, rule_for, spread},
        user::UserState,
    },
    store::{Tx, departments, ownership, roles, tenants, transfers, users},
};

/// Most violations listed in one error (the message still gives the full count).
const MAX_LISTED_VIOLATIONS: usize = 100;

fn violation(kind: &str, subject: impl Into<String>, description: impl Into<String>) -> PreconditionViolation {
    PreconditionViolation { kind: kind.to_owned(), subject: subject.into(), description: description.into() }
}

/// Whether a user with `role_ids` may edit records of `module` they own (modules without an
/// `edit` action need no right).
fn may_edit(policy: &Policy, role_ids: &[Uuid], module: &str) -> bool {
    match policy.permission(module, "edit") {
        None => true,
        Some(p) => {
            let facts = UserFacts { state: UserState::Active, department_id: None, role_ids: role_ids.to_vec() };
            policy.grant(&facts, p).scope >= Scope::Own
        }
    }
}

/// Who receives a module's records under `target`, now: the named user, or the ACTIVE direct
/// members of the department (the departing user excepted) who may edit the module, in user id
/// order. A violation when nobody can.
pub(super) async fn resolve_targets(
    conn: &impl crate::store::Conn,
    policy: &Policy,
    tenant_id: &str,
    from: Uuid,
    module: &str,
    target: RuleTarget,
) -> Result<Result<Vec<Uuid>, PreconditionViolation>> {
    match target {
        RuleTarget::User(u) => {
            if u == from {
                return Ok(Err(violation(
                    "SAME_USER",
                    format!("users/{u}"),
                    "records cannot be transferred to the user they come from",
                )));
            }
            match ownership::user_states(conn, tenant_id, &[u]).await?.get(&u) {
                None => {
                    return Ok(Err(violation(
                        "TARGET_NOT_ACTIVE",
                        format!("users/{u}"),
                        "the target user does not exist in this tenant",
                    )));
                }
                Some(s) if *s != UserState::Active => {
                    return Ok(Err(violation(
                        "TARGET_NOT_ACTIVE",
                        format!("users/{u}"),
                        format!("the target user is {}, not ACTIVE", s.as_str()),
                    )));
                }
                Some(_) => {}
            }
            if !may_edit(policy, &roles::of_user(conn, u).await?, module) {
                return Ok(Err(violation(
                    "TARGET_LACKS_RIGHTS",
                    format!("users/{u}"),
                    format!("the target user has no {module}.edit right: give them a role that has it"),
                )));
            }
            Ok(Ok(vec![u]))
        }
        RuleTarget::RoundRobin(d) => {
            if departments::find(conn, tenant_id, d).await?.is_none() {
                return Ok(Err(violation(
                    "DEPARTMENT_NOT_FOUND",
                    format!("departments/{d}"),
                    "the department does not exist in this tenant",
                )));
            }
            let members: Vec<Uuid> =
                ownership::active_members(conn, tenant_id, d).await?.into_iter().filter(|u| *u != from).collect();
            let role_ids = roles::of_users(conn, &members).await?;
            let empty = Vec::new();
            let able: Vec<Uuid> =
                members.into_iter().filter(|u| may_edit(policy, role_ids.get(u).unwrap_or(&empty), module)).collect();
            if able.is_empty() {
                return Ok(Err(violation(
                    "EMPTY_DEPARTMENT",
                    format!("departments/{d}"),
                    format!(
                        "the department has no ACTIVE member (other than the departing user) with the {module}.edit right"
                    ),
                )));
            }
            Ok(Ok(able))
        }
    }
}

/// The rules' own problems (independent of what the user owns).
fn rule_violations(rules: &[TransferRule], policy: &Policy) -> Vec<PreconditionViolation> {
    let mut out = Vec::new();
    if rules.is_empty() {
        out.push(violation("NO_RULES", "rules", "give at least one rule"));
    }
    let mut seen: HashMap<Option<&str>, usize> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if let Some(m) = &r.module
            && !policy.has_module(m)
        {
            out.push(violation(
                "UNKNOWN_MODULE",
                format!("rules[{i}]"),
                format!("unknown module {m:?}: see GetPermissionCatalog"),
            ));
        }
        if let Some(first) = seen.insert(r.module.as_deref(), i) {
            let what = r.module.as_deref().map_or("every other module".to_owned(), |m| format!("module {m:?}"));
            out.push(violation(
                "DUPLICATE_RULE",
                format!("rules[{i}]"),
                format!("rules[{first}] already covers {what}"),
            ));
        }
    }
    out
}

/// What a transfer of `from`'s records under `rules` would do now (read through `conn`).
pub(super) async fn compute_plan(
    conn: &impl crate::store::Conn,
    tenant_id: &str,
    from: Uuid,
    rules: &[TransferRule],
) -> Result<Plan> {
    let policy = compile_policy(conn, tenant_id).await?;
    let mut plan = Plan { violations: rule_violations(rules, &policy), ..Default::default() };
    if users::find(conn, tenant_id, from).await?.is_none() {
        plan.violations.push(violation(
            "SOURCE_NOT_FOUND",
            format!("users/{from}"),
            "the user whose records would move does not exist in this tenant",
        ));
        return Ok(plan);
    }
    let counts: BTreeMap<String, i64> = ownership::counts(conn, tenant_id, from).await?.into_iter().collect();
    // Modules to resolve: those the user owns records of, and those a rule names.
    let mut modules: Vec<String> = counts.keys().cloned().collect();
    for r in rules {
        if let Some(m) = &r.module
            && policy.has_module(m)
            && !modules.contains(m)
        {
            modules.push(m.clone());
        }
    }
    modules.sort();
    let mut reported: Vec<(String, String)> = Vec::new();
    for module in modules {
        let count = counts.get(&module).copied().unwrap_or(0);
        let Some(rule) = rule_for(rules, &module) else {
            plan.uncovered.push((module, count));
            continue;
        };
        match resolve_targets(conn, &policy, tenant_id, from, &module, rule.target).await? {
            Ok(targets) => {
                for (to, n) in targets.iter().zip(spread(count, targets.len(), 0)) {
                    if n > 0 {
                        plan.moves.push((module.clone(), *to, n));
                    }
                }
                plan.total += count;
            }
            Err(v) => {
                // One target problem is reported once, not once per module.
                let key = (v.kind.clone(), v.subject.clone());
                if !reported.contains(&key) || v.kind == "TARGET_LACKS_RIGHTS" || v.kind == "EMPTY_DEPARTMENT" {
                    reported.push(key);
                    plan.violations
                        .push(PreconditionViolation { subject: format!("{} (modules/{module})", v.subject), ..v });
                }
            }
        }
    }
    Ok(plan)
}

fn rules_json(rules: &[TransferRule]) -> serde_json::Value {
    serde_json::Value::Array(
        rules
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("module".into(), json!(r.module.clone().unwrap_or_default()));
                match r.target {
                    RuleTarget::User(u) => o.insert("to_user_id".into(), json!(u)),
                    RuleTarget::RoundRobin(d) => o.insert("round_robin_department_id".into(), json!(d)),
                };
                serde_json::Value::Object(o)
            })
            .collect(),
    )
}

impl Iam {
    /// `RecordOwnership`: every owner must be an ACTIVE or INVITED user of the tenant, every
    /// module in the catalog; otherwise nothing is written.
    pub async fn record_ownership(&self, ctx: &RequestContext, tenant_id: &str, rows: Vec<Ownership>) -> Result<u64> {
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
    pub async fn forget_ownership(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        refs: Vec<(String, String)>,
    ) -> Result<u64> {
        self.db
            .write(ctx, async |tx| {
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

    pub async fn list_owned_resources(
        &self,
        tenant_id: &str,
        user_id: Uuid,
        module: Option<&str>,
        after: Option<(String, String)>,
        limit: u64,
    ) -> Result<Page<Ownership>> {
        let conn = self.db.conn();
        self.user_row(conn, tenant_id, user_id).await?;
        Ok(Page::from_rows(ownership::list(conn, tenant_id, user_id, module, after, limit + 1).await?, limit))
    }

    pub async fn count_owned_resources(&self, tenant_id: &str, user_id: Uuid) -> Result<Vec<(String, i64)>> {
        let conn = self.db.conn();
        self.user_row(conn, tenant_id, user_id).await?;
        ownership::counts(conn, tenant_id, user_id).await
    }

    /// Users who are neither ACTIVE nor INVITED but still own records.
    pub async fn list_orphaned_owners(
        &self,
        tenant_id: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<(Uuid, UserState, Vec<(String, i64)>)>> {
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        let rows = ownership::orphaned(conn, tenant_id, after, limit + 1).await?;
        let ids: Vec<Uuid> = rows.iter().map(|(u, _)| *u).collect();
        let states = ownership::user_states(conn, tenant_id, &ids).await?;
        let items = rows
            .into_iter()
            .map(|(u, counts)| (u, states.get(&u).copied().unwrap_or(UserState::Purged), counts))
            .collect();
        Ok(Page::from_rows(items, limit))
    }

    /// `PlanTransfer`: changes nothing.
    pub async fn plan_transfer(&self, tenant_id: &str, from: Uuid, rules: &[TransferRule]) -> Result<Plan> {
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        compute_plan(conn, tenant_id, from, rules).await
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
    pub async fn start_transfer(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        from: Uuid,
        rules: Vec<TransferRule>,
    ) -> Result<Transfer> {
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

    pub async fn get_transfer(&self, tenant_id: &str, id: Uuid) -> Result<Transfer> {
        let conn = self.db.conn();
        match transfers::find(conn, tenant_id, id).await? {
            Some(t) => Ok(t),
            None => {
                self.tenant_settings(tenant_id).await?;
                Err(transfers::not_found(id))
            }
        }
    }

    pub async fn list_transfers(
        &self,
        tenant_id: &str,
        from: Option<Uuid>,
        states: &[TransferState],
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<Transfer>> {
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        Ok(Page::from_rows(transfers::list(conn, tenant_id, from, states, before, limit + 1).await?, limit))
    }

    /// `CancelTransfer`: a PENDING job ends at once; a RUNNING one after its current batch.
    pub async fn cancel_transfer(&self, ctx: &RequestContext, tenant_id: &str, id: Uuid) -> Result<Transfer> {
        self.db
            .write(ctx, async |tx| {
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
