//! Appending audit events.
//!
//! Stream order (`seq`) must equal commit order, or a consumer tailing `seq > cursor` could skip an
//! event whose transaction took its seq early but committed late. Appends are therefore
//! serialized until commit: on PostgreSQL every appending transaction takes one transaction-scoped
//! advisory lock right before inserting its events (the last statements of the transaction), so
//! the seq is drawn, and the transaction commits, while no other appender can draw one; on SQLite
//! the single-writer lock already does this. A seq can thus never become visible after a larger one.

use sea_orm::{ActiveValue::NotSet, ConnectionTrait, EntityTrait, Set};
use uuid::Uuid;

use super::{
    db::{Backend, Tx, raw},
    entity::audit_events,
};
use crate::domain::{
    Result,
    audit::{AuditRecord, RequestContext},
    now,
};

/// Advisory lock key serializing audit appends on PostgreSQL ("crm_aud").
pub const AUDIT_APPEND_LOCK: i64 = 0x0063_726d_5f61_7564;

/// Writes the queued records in this transaction; returns the seq of the last one.
pub async fn append(tx: &Tx, ctx: &RequestContext, records: Vec<AuditRecord>) -> Result<Option<i64>> {
    if records.is_empty() {
        return Ok(None);
    }
    if tx.backend() == Backend::Postgres {
        tx.execute_raw(raw(Backend::Postgres, "SELECT pg_advisory_xact_lock($1)", vec![AUDIT_APPEND_LOCK.into()]))
            .await?;
    }
    let occur_time = now();
    let mut last = None;
    for r in records {
        let row = audit_events::ActiveModel {
            seq: NotSet,
            event_id: Set(Uuid::now_v7()),
            tenant_id: Set(r.tenant_id),
            occur_time: Set(occur_time),
            actor_kind: Set(ctx.actor.kind.as_str().to_owned()),
            actor_id: Set(ctx.actor.id.clone()),
            action: Set(r.action),
            target_kind: Set(r.target_kind.to_owned()),
            target_id: Set(r.target_id),
            request_id: Set(ctx.request_id.clone()),
            trace_id: Set(ctx.trace_id.clone()),
            peer: Set(ctx.peer.clone()),
            changes: Set(serde_json::Value::Object(r.changes).to_string()),
            details: Set(serde_json::Value::Object(r.details).to_string()),
        };
        let result = audit_events::Entity::insert(row).exec(&**tx).await?;
        last = Some(result.last_insert_id);
    }
    Ok(last)
}

use sea_orm::{
    ColumnTrait, Condition, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, LikeExpr},
};

use crate::domain::{
    Error,
    audit::{Actor, ActorKind, AuditEvent, EventFilter, EventScope},
};

use super::entity::audit_watermarks;

/// PostgreSQL channel on which committed audit appends are announced (payload: last seq).
pub const AUDIT_CHANNEL: &str = "crm_iam_audit";

fn to_domain(m: audit_events::Model) -> Result<AuditEvent> {
    let obj = |s: &str| match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Ok(serde_json::Map::new()),
        Err(e) => Err(Error::internal(e)),
    };
    Ok(AuditEvent {
        seq: m.seq,
        event_id: m.event_id,
        tenant_id: m.tenant_id,
        occur_time: m.occur_time,
        actor: Actor {
            kind: ActorKind::parse(&m.actor_kind)
                .ok_or_else(|| Error::internal(anyhow::anyhow!("bad actor kind {:?}", m.actor_kind)))?,
            id: m.actor_id,
        },
        action: m.action,
        target_kind: m.target_kind,
        target_id: m.target_id,
        request_id: m.request_id,
        trace_id: m.trace_id,
        peer: m.peer,
        changes: obj(&m.changes)?,
        details: obj(&m.details)?,
    })
}

fn like_prefix(p: &str) -> LikeExpr {
    let escaped = p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    LikeExpr::new(format!("{escaped}%")).escape('\\')
}

fn filtered(scope: &EventScope, f: &EventFilter) -> sea_orm::Select<audit_events::Entity> {
    let mut q = audit_events::Entity::find();
    if let EventScope::Tenant(t) = scope {
        q = q.filter(audit_events::Column::TenantId.eq(t.as_str()));
    }
    if !f.action_prefixes.is_empty() {
        let mut any = Condition::any();
        for p in &f.action_prefixes {
            any = any.add(Expr::col(audit_events::Column::Action).like(like_prefix(p)));
        }
        q = q.filter(any);
    }
    if !f.target_kinds.is_empty() {
        q = q.filter(audit_events::Column::TargetKind.is_in(f.target_kinds.iter().map(String::as_str)));
    }
    if let Some(k) = f.actor_kind {
        q = q.filter(audit_events::Column::ActorKind.eq(k.as_str()));
    }
    if let Some(a) = &f.actor_id {
        q = q.filter(audit_events::Column::ActorId.eq(a.as_str()));
    }
    if let Some(t) = &f.target_id {
        q = q.filter(audit_events::Column::TargetId.eq(t.as_str()));
    }
    if let Some(t) = f.start_time {
        q = q.filter(audit_events::Column::OccurTime.gte(t));
    }
    if let Some(t) = f.end_time {
        q = q.filter(audit_events::Column::OccurTime.lt(t));
    }
    q
}

/// Events matching the filter with `after < seq <= until`, in stream order, at most `limit`.
pub async fn range(
    conn: &impl ConnectionTrait,
    scope: &EventScope,
    f: &EventFilter,
    after: i64,
    until: i64,
    limit: u64,
) -> Result<Vec<AuditEvent>> {
    let rows = filtered(scope, f)
        .filter(audit_events::Column::Seq.gt(after))
        .filter(audit_events::Column::Seq.lte(until))
        .order_by_asc(audit_events::Column::Seq)
        .limit(limit)
        .all(conn)
        .await?;
    rows.into_iter().map(to_domain).collect()
}

/// A page for ListEvents: oldest or newest first, after a position.
pub async fn page(
    conn: &impl ConnectionTrait,
    scope: &EventScope,
    f: &EventFilter,
    newest_first: bool,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<AuditEvent>> {
    let mut q = filtered(scope, f).limit(limit);
    q = if newest_first {
        if let Some(a) = after {
            q = q.filter(audit_events::Column::Seq.lt(a));
        }
        q.order_by_desc(audit_events::Column::Seq)
    } else {
        if let Some(a) = after {
            q = q.filter(audit_events::Column::Seq.gt(a));
        }
        q.order_by_asc(audit_events::Column::Seq)
    };
    q.all(conn).await?.into_iter().map(to_domain).collect()
}

/// The highest committed seq (0 when there are no events). Every event at or below it is
/// committed: appends are serialized until commit.
pub async fn max_seq(conn: &impl ConnectionTrait) -> Result<i64> {
    let v: Option<Option<i64>> = audit_events::Entity::find()
        .select_only()
        .column_as(audit_events::Column::Seq.max(), "m")
        .into_tuple()
        .one(conn)
        .await?;
    Ok(v.flatten().unwrap_or(0))
}

/// The position just before the first event of the scope at or after `t`, or `head` if none.
pub async fn position_at(
    conn: &impl ConnectionTrait,
    scope: &EventScope,
    t: chrono::DateTime<chrono::Utc>,
    head: i64,
) -> Result<i64> {
    let v: Option<Option<i64>> = filtered(scope, &EventFilter::default())
        .select_only()
        .column_as(audit_events::Column::Seq.min(), "m")
        .filter(audit_events::Column::OccurTime.gte(t))
        .filter(audit_events::Column::Seq.lte(head))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(v.flatten().map(|s| s - 1).unwrap_or(head))
}

fn scope_key(scope: &EventScope) -> Option<&str> {
    match scope {
        EventScope::Tenant(t) => Some(t.as_str()),
        EventScope::All => None,
    }
}

/// The highest seq retention has deleted in the scope (for All: in any scope).
pub async fn watermark(conn: &impl ConnectionTrait, scope: &EventScope) -> Result<i64> {
    let mut q =
        audit_watermarks::Entity::find().select_only().column_as(audit_watermarks::Column::PurgedThrough.max(), "m");
    if let Some(t) = scope_key(scope) {
        q = q.filter(audit_watermarks::Column::Scope.eq(t));
    }
    let v: Option<Option<i64>> = q.into_tuple().one(conn).await?;
    Ok(v.flatten().unwrap_or(0))
}

/// Deletes up to `limit` events of a tenant ("" = platform-level events) that occurred before
/// `cutoff`, oldest first, and raises the scope's watermark. Returns how many were deleted.
pub async fn purge_before(tx: &Tx, tenant: &str, cutoff: chrono::DateTime<chrono::Utc>, limit: u64) -> Result<u64> {
    let mut q = audit_events::Entity::find()
        .select_only()
        .column(audit_events::Column::Seq)
        .filter(audit_events::Column::OccurTime.lt(cutoff))
        .order_by_asc(audit_events::Column::Seq)
        .limit(limit);
    q = if tenant.is_empty() {
        q.filter(audit_events::Column::TenantId.is_null())
    } else {
        q.filter(audit_events::Column::TenantId.eq(tenant))
    };
    let seqs: Vec<i64> = q.into_tuple().all(&**tx).await?;
    let Some(&highest) = seqs.iter().max() else { return Ok(0) };
    audit_events::Entity::delete_many().filter(audit_events::Column::Seq.is_in(seqs.clone())).exec(&**tx).await?;
    // Raise the watermark, never lower it (retention runs on every replica).
    let insert = sea_orm::sea_query::Query::insert()
        .into_table(audit_watermarks::Entity)
        .columns([
            audit_watermarks::Column::Scope,
            audit_watermarks::Column::PurgedThrough,
            audit_watermarks::Column::UpdateTime,
        ])
        .values_panic([tenant.into(), 0i64.into(), now().into()])
        .on_conflict(sea_orm::sea_query::OnConflict::column(audit_watermarks::Column::Scope).do_nothing().to_owned())
        .to_owned();
    tx.execute(&insert).await?;
    audit_watermarks::Entity::update_many()
        .col_expr(audit_watermarks::Column::PurgedThrough, Expr::value(highest))
        .col_expr(audit_watermarks::Column::UpdateTime, Expr::value(now()))
        .filter(audit_watermarks::Column::Scope.eq(tenant))
        .filter(audit_watermarks::Column::PurgedThrough.lt(highest))
        .exec(&**tx)
        .await?;
    Ok(seqs.len() as u64)
}

/// Erases personal data (`fields`) from the stored events about one target (a purged user) and
/// from failed logins whose details hold one of `typed` (the e-mail as typed, or its pseudonyms);
/// returns how many events changed. The events, actors, ids and order stay.
pub async fn redact_target(
    tx: &Tx,
    tenant_id: &str,
    target_kind: &str,
    target_id: &str,
    typed: &[String],
    fields: &[&str],
) -> Result<u64> {
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
    let mut which = Condition::any().add(
        Condition::all()
            .add(audit_events::Column::TargetKind.eq(target_kind))
            .add(audit_events::Column::TargetId.eq(target_id)),
    );
    for mark in typed.iter().filter(|e| !e.is_empty()) {
        which = which.add(
            Condition::all()
                .add(audit_events::Column::Action.eq("auth.login_failed"))
                .add(audit_events::Column::TargetId.eq(""))
                .add(audit_events::Column::Details.contains(mark.as_str())),
        );
    }
    let rows = audit_events::Entity::find()
        .filter(audit_events::Column::TenantId.eq(tenant_id))
        .filter(which)
        .all(&**tx)
        .await?;
    let mut changed = 0;
    for row in rows {
        let parse = |text: &str| match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (mut changes, mut details) = (parse(&row.changes), parse(&row.details));
        if !crate::domain::audit::redact(&mut changes, &mut details, fields) {
            continue;
        }
        audit_events::Entity::update_many()
            .col_expr(audit_events::Column::Changes, serde_json::Value::Object(changes).to_string().into())
            .col_expr(audit_events::Column::Details, serde_json::Value::Object(details).to_string().into())
            .filter(audit_events::Column::Seq.eq(row.seq))
            .exec(&**tx)
            .await?;
        changed += 1;
    }
    Ok(changed)
}
