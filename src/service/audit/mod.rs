//! The audit trail: listing, the gap-free stream, and retention.
//!
//! **Why the stream cannot skip.** Every transaction appends its audit events as its last
//! statements, holding a lock until commit (`store::audit`), so the stream order (`seq`) is the
//! commit order: once an event with seq N is visible, every event below N is committed (or was
//! rolled back and never exists). A consumer's cursor is the seq it has seen (or scanned) through;
//! resuming asks for `seq > cursor`, which therefore contains every later event exactly once.
//!
//! **Fan-out.** One hub per process follows the tail (woken by local commits, by PostgreSQL
//! NOTIFY from other replicas, and by a short poll as the safety net) and keeps the latest events
//! in a bounded ring. Streams that are caught up read from the ring; a stream that falls behind
//! the ring (a slow consumer, or one resuming from an old cursor) reads pages from the database
//! until it catches up. Sending waits for the consumer (a bounded channel), so a slow consumer
//! costs neither memory nor other streams anything; reads from the database go through a few
//! shared permits, so consumers replaying history take turns instead of one holding the pool.
//!
//! **Streams end when access ends.** A user's stream re-checks every few seconds that the
//! session is still open and the rights still hold (answers from the access cache, which every
//! change flushes): a deactivated user, a revoked session or a removed role ends the stream with
//! UNAUTHENTICATED or PERMISSION_DENIED. Streams are capped per caller and per tenant.

use std::{
    collections::VecDeque,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{Iam, Page};
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        audit::{AuditEvent, EventFilter, EventScope, RequestContext},
        now,
    },
    store::{audit, tenants},
};

mod streams;

/// Events kept in memory for caught-up streams: at most this many…
const RING_CAPACITY: usize = 4096;
/// …and at most about this many bytes (an `ownership.transferred` event lists thousands of ids).
const RING_BYTES: usize = 8 * 1024 * 1024;
/// Events read from the database per page when a stream catches up.
const PAGE: u64 = 500;
/// The hub looks for new events at least this often, whatever it was told.
const HUB_POLL: Duration = Duration::from_millis(250);
/// How often a user's stream re-checks the session and rights behind it.
pub const ACCESS_RECHECK: Duration = Duration::from_secs(2);
/// Database page reads of streams replaying history at once (all streams of this replica).
const REPLAY_PERMITS: usize = 2;

/// One message of a stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    Event(Arc<AuditEvent>),
    /// Everything up to this seq has been sent or did not match.
    Heartbeat(i64),
}

struct Ring {
    /// The ring holds every event with `base < seq <= head` (-1: not started).
    base: i64,
    events: VecDeque<(Arc<AuditEvent>, usize)>,
    bytes: usize,
}

/// Rough memory footprint of an event (its JSON maps dominate).
fn footprint(e: &AuditEvent) -> usize {
    fn json_len(m: &serde_json::Map<String, serde_json::Value>) -> usize {
        if m.is_empty() { 0 } else { serde_json::to_vec(m).map_or(0, |v| v.len()) * 2 }
    }
    256 + e.action.len() + e.target_id.len() + json_len(&e.details) + json_len(&e.changes)
}

/// The per-process follower of the audit tail.
pub struct AuditHub {
    ring: RwLock<Ring>,
    head: watch::Sender<i64>,
    wake: Notify,
    subscribers: AtomicUsize,
    replay: tokio::sync::Semaphore,
    streams: std::sync::Mutex<StreamCounts>,
    caps: std::sync::RwLock<StreamCaps>,
    /// The platform's floor on tenants' audit retention, in seconds (`min_audit_retention`).
    min_retention_secs: std::sync::atomic::AtomicU64,
}

/// The default floor on tenants' audit retention (`min_audit_retention`).
pub const DEFAULT_MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(180 * 24 * 3600);

/// How many streams (StreamEvents and WatchTransfer) one caller and one tenant may hold open.
#[derive(Debug, Clone, Copy)]
pub struct StreamCaps {
    pub per_caller: usize,
    pub per_tenant: usize,
}

impl Default for StreamCaps {
    fn default() -> Self {
        StreamCaps { per_caller: 8, per_tenant: 100 }
    }
}

#[derive(Default)]
struct StreamCounts {
    callers: std::collections::HashMap<String, usize>,
    tenants: std::collections::HashMap<String, usize>,
}

/// An open stream's place in the caps; given back when the stream ends.
pub struct StreamSlot {
    hub: Option<Arc<AuditHub>>,
    caller: String,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        fn release(map: &mut std::collections::HashMap<String, usize>, key: &str) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        let Some(hub) = &self.hub else { return };
        let mut counts = hub.streams.lock().expect("stream counts");
        release(&mut counts.callers, &self.caller);
        if !self.tenant.is_empty() {
            release(&mut counts.tenants, &self.tenant);
        }
    }
}

impl Default for AuditHub {
    fn default() -> Self {
        AuditHub {
            ring: RwLock::new(Ring { base: -1, events: VecDeque::new(), bytes: 0 }),
            head: watch::channel(-1).0,
            wake: Notify::new(),
            subscribers: AtomicUsize::new(0),
            replay: tokio::sync::Semaphore::new(REPLAY_PERMITS),
            streams: Default::default(),
            caps: Default::default(),
            min_retention_secs: std::sync::atomic::AtomicU64::new(DEFAULT_MIN_RETENTION.as_secs()),
        }
    }
}

impl AuditHub {
    /// Sets the platform's floor on audit retention.
    pub fn set_min_retention(&self, floor: std::time::Duration) {
        self.min_retention_secs.store(floor.as_secs(), Ordering::Relaxed);
    }

    /// The platform's floor on audit retention, in seconds.
    pub fn min_retention_secs(&self) -> u64 {
        self.min_retention_secs.load(Ordering::Relaxed)
    }

    /// Sets the stream caps (from the configuration).
    pub fn set_caps(&self, caps: StreamCaps) {
        *self.caps.write().expect("caps") = caps;
    }

    /// A place for a new stream of `caller` in `tenant` ("" for the whole platform), or
    /// RESOURCE_EXHAUSTED when the caller or (for users) the tenant already holds its cap. Users
    /// count against both caps, a service credential against its own; the platform admin token
    /// (the operator's, trusted) against none.
    pub fn open_stream(self: &Arc<Self>, caller: &crate::domain::caller::Caller, tenant: &str) -> Result<StreamSlot> {
        use crate::domain::caller::Caller;
        let caller_key = match caller {
            Caller::PlatformAdmin => return Ok(StreamSlot { hub: None, caller: String::new(), tenant: String::new() }),
            _ => caller.actor().id,
        };
        let tenant_key = if matches!(caller, Caller::User(_)) { tenant.to_owned() } else { String::new() };
        let caps = *self.caps.read().expect("caps");
        let mut counts = self.streams.lock().expect("stream counts");
        let by_caller = counts.callers.get(&caller_key).copied().unwrap_or(0);
        let by_tenant = if tenant_key.is_empty() { 0 } else { counts.tenants.get(&tenant_key).copied().unwrap_or(0) };
        if by_caller >= caps.per_caller || by_tenant >= caps.per_tenant {
            let mut e = Error::new(
                Kind::ResourceExhausted,
                Reason::TooManyStreams,
                if by_caller >= caps.per_caller {
                    format!("this caller already has {by_caller} streams open (the most allowed): close one first")
                } else {
                    format!(
                        "this tenant's users already have {by_tenant} streams open (the most allowed): close one first"
                    )
                },
            );
            e.retry_after_ms = 1000;
            return Err(e);
        }
        *counts.callers.entry(caller_key.clone()).or_default() += 1;
        if !tenant_key.is_empty() {
            *counts.tenants.entry(tenant_key.clone()).or_default() += 1;
        }
        Ok(StreamSlot { hub: Some(self.clone()), caller: caller_key, tenant: tenant_key })
    }

    /// Waits until `head` moves past `seen` or `stop` fires (false then).
    pub async fn changed_after(&self, seen: i64, stop: &CancellationToken) -> bool {
        let mut rx = self.head.subscribe();
        loop {
            if *rx.borrow_and_update() > seen {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                r = rx.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Whether an event of `target_kind`/`target_id` in `scope` was committed after `after`,
    /// and the seq scanned through; None when the ring does not reach back that far.
    pub fn touched(&self, after: i64, scope: &EventScope, target_kind: &str, target_id: &str) -> Option<(bool, i64)> {
        let filter = EventFilter { target_kinds: vec![target_kind.to_owned()], ..Default::default() };
        let (events, through) = self.read(after, scope, &filter, usize::MAX)?;
        Some((events.iter().any(|e| e.target_id == target_id), through))
    }

    /// Something was committed (here or on another replica): look for new events now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Streams currently open.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// The last seq the hub has read through (-1 before it started).
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// From the ring: matching events after `after` (at most `limit`) and the seq scanned
    /// through; None when the ring does not reach back to `after`.
    fn read(
        &self,
        after: i64,
        scope: &EventScope,
        filter: &EventFilter,
        limit: usize,
    ) -> Option<(Vec<Arc<AuditEvent>>, i64)> {
        let ring = self.ring.read().expect("ring lock");
        let head = self.head();
        if ring.base < 0 || after < ring.base || after > head {
            return None;
        }
        let start = ring.events.partition_point(|(e, _)| e.seq <= after);
        let mut out = Vec::new();
        for (e, _) in ring.events.iter().skip(start) {
            if filter.matches(scope, e) {
                out.push(e.clone());
                if out.len() == limit {
                    return Some((out, e.seq));
                }
            }
        }
        Some((out, head))
    }

    /// Erases a purged user's personal data from the events kept in memory.
    pub fn redact_user(&self, tenant_id: &str, user_id: &str) {
        Self::redact_in(&mut self.ring.write().expect("ring lock"), tenant_id, user_id);
    }

    fn redact_in(ring: &mut Ring, tenant_id: &str, user_id: &str) {
        for (e, _) in ring.events.iter_mut() {
            if e.tenant_id.as_deref() == Some(tenant_id) && e.target_kind == "user" && e.target_id == user_id {
                let mut copy = (**e).clone();
                if crate::domain::audit::redact(
                    &mut copy.changes,
                    &mut copy.details,
                    crate::domain::audit::PERSONAL_FIELDS,
                ) {
                    *e = Arc::new(copy);
                }
            }
        }
    }

    fn push(&self, events: Vec<AuditEvent>, head: i64) {
        {
            let mut ring = self.ring.write().expect("ring lock");
            let purged: Vec<AuditEvent> = events.iter().filter(|e| e.action == "user.purged").cloned().collect();
            for e in events {
                let size = footprint(&e);
                ring.bytes += size;
                ring.events.push_back((Arc::new(e), size));
            }
            // A purge erased a user's personal data from the stored trail: erase it from the copies
            // kept here too (every replica's hub reads the purge's own event), including the events
            // that arrived in the same batch as the purge.
            for purged in purged.iter() {
                if let Some(tenant) = &purged.tenant_id {
                    Self::redact_in(&mut ring, tenant, &purged.target_id);
                }
            }
            while ring.events.len() > RING_CAPACITY || ring.bytes > RING_BYTES {
                match ring.events.pop_front() {
                    Some((old, size)) => {
                        ring.base = old.seq;
                        ring.bytes -= size;
                    }
                    None => break,
                }
            }
        }
        self.head.send_replace(head);
    }
}

/// Follows the audit tail until stopped.
pub async fn run_hub(iam: Iam, stop: CancellationToken) {
    let hub = iam.audit.clone();
    let mut local = iam.db.audit_commits();
    // Start at the current end: streams that need older events read them from the database.
    loop {
        match audit::max_seq(iam.db.conn()).await {
            Ok(m) => {
                hub.ring.write().expect("ring lock").base = m;
                hub.head.send_replace(m);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit hub cannot read the tail yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let all = EventScope::All;
    let no_filter = EventFilter::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hub.wake.notified() => {}
            _ = local.changed() => {}
            _ = tokio::time::sleep(HUB_POLL) => {}
        }
        loop {
            let head = hub.head();
            // Everything up to the current maximum is committed; read the gap in pages.
            let result = async {
                let max = audit::max_seq(iam.db.conn()).await?;
                if max <= head {
                    return Ok(None);
                }
                let events = audit::range(iam.db.conn(), &all, &no_filter, head, max, PAGE).await?;
                let through =
                    if (events.len() as u64) < PAGE { max } else { events.last().map(|e| e.seq).unwrap_or(max) };
                Ok::<_, Error>(Some((events, through)))
            }
            .await;
            match result {
                Ok(Some((events, through))) => {
                    if let Some(first) = events.first() {
                        let lag = (crate::domain::now() - first.occur_time).num_milliseconds();
                        if lag > 20 {
                            tracing::debug!(lag_ms = lag, n = events.len(), "audit hub lag");
                        }
                    }
                    hub.push(events, through)
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "audit hub cannot read new events; will retry");
                    break;
                }
            }
        }
    }
}

/// Where a stream starts.
#[derive(Debug, Clone)]
pub enum StreamStart {
    AfterCursor(i64),
    SinceTime(chrono::DateTime<chrono::Utc>),
    Now,
}

/// A page of the trail (converted and checked at the edge, `api::audit_events`).
pub struct ListEvents {
    pub scope: EventScope,
    pub filter: EventFilter,
    pub newest_first: bool,
    /// The cursor of the previous page's last event.
    pub after: Option<i64>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// A stream of the trail from `start`, with a heartbeat every `heartbeat` while idle.
pub struct StreamEvents {
    pub scope: EventScope,
    pub filter: EventFilter,
    pub start: StreamStart,
    pub heartbeat: Duration,
}

fn out_of_range() -> Error {
    Error::new(
        Kind::OutOfRange,
        Reason::CursorExpired,
        "events after this cursor have been removed by retention: restart from since_time or from now",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{Actor, REDACTED};

    fn event(seq: i64, action: &str, user: &str, email: &str) -> AuditEvent {
        let mut changes = serde_json::Map::new();
        changes.insert("email".into(), serde_json::json!({ "before": null, "after": email }));
        AuditEvent {
            seq,
            event_id: uuid::Uuid::now_v7(),
            tenant_id: Some("acme".into()),
            occur_time: now(),
            actor: Actor::system("test"),
            action: action.into(),
            target_kind: "user".into(),
            target_id: user.into(),
            request_id: None,
            trace_id: None,
            peer: None,
            changes,
            details: serde_json::Map::new(),
        }
    }

    fn emails(hub: &AuditHub) -> Vec<String> {
        let (events, _) = hub.read(0, &EventScope::All, &EventFilter::default(), 100).unwrap();
        events.iter().filter_map(|e| e.changes.get("email").map(|c| c["after"].to_string())).collect()
    }

    #[test]
    fn a_purge_redacts_the_ring_in_earlier_and_in_the_same_batch() {
        let hub = AuditHub::default();
        hub.ring.write().unwrap().base = 0;
        hub.push(vec![event(1, "user.created", "u1", "ann@acme.example")], 1);
        // The replica's hub may read the change and the purge in one page (a lagging poll).
        hub.push(
            vec![
                event(2, "user.updated", "u1", "ann.lee@acme.example"),
                event(3, "user.created", "u2", "bob@acme.example"),
                event(4, "user.purged", "u1", ""),
            ],
            4,
        );
        let quoted = format!("\"{REDACTED}\"");
        assert_eq!(emails(&hub), [quoted.as_str(), quoted.as_str(), "\"bob@acme.example\"", quoted.as_str()]);
    }

    #[test]
    fn a_purge_redacts_the_ring_before_the_hub_reads_its_event() {
        let hub = AuditHub::default();
        hub.ring.write().unwrap().base = 0;
        hub.push(
            vec![
                event(1, "user.created", "u1", "ann@acme.example"),
                event(2, "user.created", "u2", "bob@acme.example"),
            ],
            2,
        );
        // What PurgeUser does after its commit, before it answers.
        hub.redact_user("acme", "u1");
        let quoted = format!("\"{REDACTED}\"");
        assert_eq!(emails(&hub), [quoted.as_str(), "\"bob@acme.example\""]);
        hub.redact_user("other-tenant", "u2");
        assert_eq!(emails(&hub)[1], "\"bob@acme.example\"", "only the named tenant's user");
    }
}
