//! Transfer plans: who receives each module's records under a set of rules, and what stands in
//! the way (computed for PlanTransfer, again when a job is created, and by the worker per batch).

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use uuid::Uuid;

use crate::{
    domain::{
        Result,
        access::{Policy, Scope, UserFacts},
        error::PreconditionViolation,
        ownership::{Plan, RuleTarget, TransferRule, rule_for, spread},
        user::UserState,
    },
    service::access::compile_policy,
    store::{departments, ownership, roles, users},
};

/// Most violations listed in one error (the message still gives the full count).
pub(super) const MAX_LISTED_VIOLATIONS: usize = 100;

pub(super) fn violation(
    kind: &str,
    subject: impl Into<String>,
    description: impl Into<String>,
) -> PreconditionViolation {
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
pub(in crate::service) async fn resolve_targets(
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

pub(super) fn rules_json(rules: &[TransferRule]) -> serde_json::Value {
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
