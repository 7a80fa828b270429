//! Audit records: who did what to which target, written in the same transaction as the change.

use serde::Serialize;
use serde_json::{Map, Value};

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorKind {
    /// A tenant user (with an access token).
    User,
    /// A service: the platform admin token or a named service credential.
    Service,
    /// crm-iam itself (background jobs such as the purge sweeper).
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<ActorKind> {
        s.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn system(job: &str) -> Actor {
        Actor { kind: ActorKind::System, id: job.to_owned() }
    }
}

/// Idempotency key of a mutating request (AIP-155).
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The tenant acted in, "" for platform-level requests.
    pub scope: String,
    pub key: String,
    /// Full gRPC method name.
    pub method: &'static str,
    /// SHA-256 of the request body without its request_id.
    pub fingerprint: String,
}

/// Where a change came from: the actor, the idempotency key, the trace and the peer address.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub peer: Option<String>,
    pub idempotency: Option<Idempotency>,
}

impl RequestContext {
    /// Context of a background job.
    pub fn system(job: &str) -> RequestContext {
        RequestContext { actor: Actor::system(job), request_id: None, trace_id: None, peer: None, idempotency: None }
    }
}

/// One audit event to append.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub tenant_id: Option<String>,
    pub action: String,
    pub target_kind: &'static str,
    pub target_id: String,
    /// field → {"before": …, "after": …}; secrets never appear (they are not in the domain types).
    pub changes: Map<String, Value>,
    /// Action-specific details (reason, …).
    pub details: Map<String, Value>,
}

impl AuditRecord {
    pub fn new(tenant_id: Option<&str>, action: &str, target_kind: &'static str, target_id: impl ToString) -> Self {
        AuditRecord {
            tenant_id: tenant_id.map(str::to_owned),
            action: action.to_owned(),
            target_kind,
            target_id: target_id.to_string(),
            changes: Map::new(),
            details: Map::new(),
        }
    }

    /// Records the fields that differ between `before` and `after` (either may be absent, for
    /// creations and erasures). Bookkeeping fields named in `ignore` are left out.
    pub fn with_changes<T: Serialize>(mut self, before: Option<&T>, after: Option<&T>, ignore: &[&str]) -> Self {
        let as_map = |v: Option<&T>| match v.map(serde_json::to_value) {
            Some(Ok(Value::Object(m))) => m,
            _ => Map::new(),
        };
        let (before, after) = (as_map(before), as_map(after));
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if ignore.contains(&key.as_str()) {
                continue;
            }
            let (b, a) = (before.get(key).unwrap_or(&Value::Null), after.get(key).unwrap_or(&Value::Null));
            if b != a {
                let mut change = Map::new();
                change.insert("before".into(), b.clone());
                change.insert("after".into(), a.clone());
                self.changes.insert(key.clone(), Value::Object(change));
            }
        }
        self
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// What a purge leaves of a value of personal data in the audit trail.
pub const REDACTED: &str = "[redacted]";

/// Fields of a user that are personal data (erased by a purge, in the user row and the trail).
pub const PERSONAL_FIELDS: &[&str] = &super::user::fields::<12>(
    &super::user::PERSON_FIELDS,
    &["hire_date", "attributes", "username", "external_id", "email_hash"],
);

/// The pseudonym purpose of an e-mail typed at a failed login in `tenant_id`: failed logins for
/// unknown addresses keep `email_hash` (a keyed pseudonym), never the address, so spraying shows
/// as many distinct hashes while a typo of someone's address names nobody.
pub fn login_email_purpose(tenant_id: &str) -> String {
    format!("login email\0{tenant_id}")
}

/// Replaces every value of `fields` in an event's changes (before and after) and details with
/// [`REDACTED`], keeping the event, its keys and every other value. True when anything changed.
pub fn redact(changes: &mut Map<String, Value>, details: &mut Map<String, Value>, fields: &[&str]) -> bool {
    let mut changed = false;
    let mut mark = |v: &mut Value| {
        if !v.is_null() && *v != Value::String(REDACTED.into()) {
            *v = Value::String(REDACTED.into());
            changed = true;
        }
    };
    for field in fields {
        match changes.get_mut(*field) {
            Some(Value::Object(change)) if change.contains_key("before") || change.contains_key("after") => {
                for side in ["before", "after"] {
                    if let Some(v) = change.get_mut(side) {
                        mark(v);
                    }
                }
            }
            Some(v) => mark(v),
            None => {}
        }
        if let Some(v) = details.get_mut(*field) {
            mark(v);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    #[test]
    fn redaction_keeps_the_event_and_erases_the_values() {
        use super::*;
        let mut changes: Map<String, Value> = serde_json::from_str(
            r#"{"email": {"before": null, "after": "ann@x.example"}, "state": {"before": "ACTIVE", "after": "DELETED"}}"#,
        )
        .unwrap();
        let mut details: Map<String, Value> =
            serde_json::from_str(r#"{"email": "ann@x.example", "reason": "x"}"#).unwrap();
        assert!(redact(&mut changes, &mut details, PERSONAL_FIELDS));
        assert_eq!(changes["email"]["after"], REDACTED);
        assert_eq!(changes["email"]["before"], Value::Null, "nothing to erase stays nothing");
        assert_eq!(changes["state"]["after"], "DELETED", "the rest stays");
        assert_eq!((details["email"].as_str(), details["reason"].as_str()), (Some(REDACTED), Some("x")));
        assert!(!redact(&mut changes, &mut details, PERSONAL_FIELDS), "redacting twice changes nothing");
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[derive(Serialize)]
    struct T {
        a: i32,
        b: &'static str,
        version: i64,
    }

    #[test]
    fn changes_list_only_differing_fields() {
        let r = AuditRecord::new(Some("t"), "x.updated", "x", 1).with_changes(
            Some(&T { a: 1, b: "same", version: 1 }),
            Some(&T { a: 2, b: "same", version: 2 }),
            &["version"],
        );
        assert_eq!(serde_json::Value::Object(r.changes), serde_json::json!({"a": {"before": 1, "after": 2}}));
    }
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Stream position (commit order).
    pub seq: i64,
    pub event_id: uuid::Uuid,
    pub tenant_id: Option<String>,
    pub occur_time: chrono::DateTime<chrono::Utc>,
    pub actor: Actor,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub peer: Option<String>,
    pub changes: Map<String, Value>,
    pub details: Map<String, Value>,
}

/// The opaque cursor of a stream position: fixed-width hex, so cursors also sort as strings.
pub fn encode_cursor(seq: i64) -> String {
    format!("{:016x}", seq.max(0))
}

/// The position of a cursor, if it is one.
pub fn decode_cursor(cursor: &str) -> Option<i64> {
    if cursor.len() != 16 {
        return None;
    }
    i64::from_str_radix(cursor, 16).ok().filter(|s| *s >= 0)
}

/// Which events a query or stream covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventScope {
    /// One tenant's events.
    Tenant(String),
    /// Every tenant's and the platform-level events.
    All,
}

/// Filters shared by listing and streaming.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub action_prefixes: Vec<String>,
    pub target_kinds: Vec<String>,
    pub actor_kind: Option<ActorKind>,
    pub actor_id: Option<String>,
    pub target_id: Option<String>,
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    pub end_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl EventFilter {
    /// Whether an event passes (the in-memory twin of the SQL filter).
    pub fn matches(&self, scope: &EventScope, e: &AuditEvent) -> bool {
        if let EventScope::Tenant(t) = scope
            && e.tenant_id.as_deref() != Some(t.as_str())
        {
            return false;
        }
        (self.action_prefixes.is_empty() || self.action_prefixes.iter().any(|p| e.action.starts_with(p.as_str())))
            && (self.target_kinds.is_empty() || self.target_kinds.contains(&e.target_kind))
            && self.actor_kind.is_none_or(|k| k == e.actor.kind)
            && self.actor_id.as_ref().is_none_or(|a| *a == e.actor.id)
            && self.target_id.as_ref().is_none_or(|t| *t == e.target_id)
            && self.start_time.is_none_or(|t| e.occur_time >= t)
            && self.end_time.is_none_or(|t| e.occur_time < t)
    }
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_sort_like_their_positions() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert!(encode_cursor(9) < encode_cursor(10) && encode_cursor(255) < encode_cursor(4096));
        for bad in ["", "xyz", "000000000000002", "-00000000000002a"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
