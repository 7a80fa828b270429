//! `crm.iam.v1.AuditEvents`: listing and the resumable stream.

use std::{pin::Pin, time::Duration};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{convert, decode_page_token, next_page_token, page_size, read, record_tenant};
use crate::{
    domain::{
        Error, Violations,
        audit::{ActorKind, AuditEvent, EventFilter, EventScope, decode_cursor, encode_cursor},
        validate,
    },
    proto::v1::{self as pb, audit_events_server::AuditEvents},
    service::{
        Iam, Page,
        audit::{ListEvents, StreamEvents, StreamItem, StreamStart},
    },
};

pub struct AuditEventsApi {
    iam: Iam,
}

impl AuditEventsApi {
    pub fn new(iam: Iam) -> Self {
        AuditEventsApi { iam }
    }
}

fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(json_value).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(json_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_struct(o: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() }
}

fn actor_kind(k: ActorKind) -> pb::ActorKind {
    match k {
        ActorKind::User => pb::ActorKind::User,
        ActorKind::Service => pb::ActorKind::Service,
        ActorKind::System => pb::ActorKind::System,
    }
}

pub fn event_to_proto(e: &AuditEvent) -> pb::AuditEvent {
    let changes = e
        .changes
        .iter()
        .map(|(field, change)| {
            let part = |k: &str| change.get(k).map(json_value);
            (field.clone(), pb::FieldChange { before: part("before"), after: part("after") })
        })
        .collect();
    pb::AuditEvent {
        cursor: encode_cursor(e.seq),
        event_id: e.event_id.to_string(),
        tenant_id: e.tenant_id.clone().unwrap_or_default(),
        occur_time: Some(convert::ts(e.occur_time)),
        actor: Some(pb::Actor { kind: actor_kind(e.actor.kind) as i32, id: e.actor.id.clone() }),
        action: e.action.clone(),
        target: Some(pb::Target { kind: e.target_kind.clone(), id: e.target_id.clone() }),
        request_id: e.request_id.clone().unwrap_or_default(),
        trace_id: e.trace_id.clone().unwrap_or_default(),
        peer: e.peer.clone().unwrap_or_default(),
        changes,
        details: Some(json_struct(&e.details)),
    }
}

/// The scope of a request: one tenant, or (empty) everything, which only the platform may see.
fn scope(v: &mut Violations, tenant_id: &str) -> EventScope {
    record_tenant(tenant_id);
    if tenant_id.is_empty() {
        EventScope::All
    } else {
        EventScope::Tenant(v.check("tenant_id", validate::tenant_id(tenant_id)).unwrap_or_default())
    }
}

fn prefixes(v: &mut Violations, field: &str, items: &[String]) -> Vec<String> {
    if items.len() > 20 {
        v.add(field, "at most 20 entries");
    }
    for (i, p) in items.iter().enumerate() {
        if p.is_empty() || p.len() > 100 {
            v.add(format!("{field}[{i}]"), "must be 1 to 100 characters");
        }
    }
    items.to_vec()
}

#[tonic::async_trait]
impl AuditEvents for AuditEventsApi {
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let (caller, query) = read(req)?;
        let page = self.iam.list_events(&caller, &query).await?;
        Ok(Response::new(events_page(page, &query.filters)))
    }

    type StreamEventsStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send + 'static>>;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let (caller, query) = read(req)?;
        let items = self.iam.stream_events(&caller, query).await?;
        Ok(Response::new(Box::pin(items.map(stream_message))))
    }
}

fn events_page(page: Page<AuditEvent>, filters: &str) -> pb::ListEventsResponse {
    let next_page_token = next_page_token(&page, filters, |last| encode_cursor(last.seq));
    pb::ListEventsResponse { events: page.items.iter().map(event_to_proto).collect(), next_page_token }
}

fn stream_message(item: crate::domain::Result<StreamItem>) -> Result<pb::StreamEventsResponse, Status> {
    use pb::stream_events_response::Message;
    let message = match item? {
        StreamItem::Event(e) => Message::Event(event_to_proto(&e)),
        StreamItem::Heartbeat(seq) => Message::Heartbeat(pb::Heartbeat { cursor: encode_cursor(seq) }),
    };
    Ok(pb::StreamEventsResponse { message: Some(message) })
}

impl TryFrom<pb::ListEventsRequest> for ListEvents {
    type Error = Error;

    fn try_from(msg: pb::ListEventsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let scope = scope(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        let filter = EventFilter {
            action_prefixes: prefixes(&mut v, "action_prefixes", &msg.action_prefixes),
            target_kinds: if msg.target_kind.is_empty() { vec![] } else { vec![msg.target_kind.clone()] },
            actor_kind: match pb::ActorKind::try_from(msg.actor_kind) {
                Ok(pb::ActorKind::Unspecified) => None,
                Ok(pb::ActorKind::User) => Some(ActorKind::User),
                Ok(pb::ActorKind::Service) => Some(ActorKind::Service),
                Ok(pb::ActorKind::System) => Some(ActorKind::System),
                Err(_) => {
                    v.add("actor_kind", "unknown actor kind");
                    None
                }
            },
            actor_id: (!msg.actor_id.is_empty()).then(|| msg.actor_id.clone()),
            target_id: (!msg.target_id.is_empty()).then(|| msg.target_id.clone()),
            start_time: msg.start_time.as_ref().and_then(convert::from_ts),
            end_time: msg.end_time.as_ref().and_then(convert::from_ts),
        };
        if let (Some(a), Some(b)) = (filter.start_time, filter.end_time)
            && a >= b
        {
            v.add("end_time", "must be after start_time");
        }
        let newest_first = match pb::EventOrder::try_from(msg.order) {
            Ok(pb::EventOrder::NewestFirst) => true,
            Ok(_) => false,
            Err(_) => {
                v.add("order", "unknown order");
                false
            }
        };
        v.finish()?;
        let filters = format!("events|{scope:?}|{filter:?}|{newest_first}");
        let after = decode_page_token(&msg.page_token, &filters)?
            .map(|k| {
                decode_cursor(&k).ok_or_else(|| Error::invalid_field("page_token", "is not a page token of this query"))
            })
            .transpose()?;
        Ok(ListEvents { scope, filter, newest_first, after, limit, filters })
    }
}

impl TryFrom<pb::StreamEventsRequest> for StreamEvents {
    type Error = Error;

    fn try_from(msg: pb::StreamEventsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let scope = scope(&mut v, &msg.tenant_id);
        let filter = EventFilter {
            action_prefixes: prefixes(&mut v, "action_prefixes", &msg.action_prefixes),
            target_kinds: prefixes(&mut v, "target_kinds", &msg.target_kinds),
            ..Default::default()
        };
        let start = match (msg.after_cursor.is_empty(), msg.since_time.as_ref()) {
            (false, Some(_)) => {
                v.add("since_time", "give either after_cursor or since_time, not both");
                StreamStart::Now
            }
            (false, None) => match decode_cursor(&msg.after_cursor) {
                Some(c) => StreamStart::AfterCursor(c),
                None => {
                    v.add("after_cursor", "is not a cursor of this stream");
                    StreamStart::Now
                }
            },
            (true, Some(t)) => match convert::from_ts(t) {
                Some(t) => StreamStart::SinceTime(t),
                None => {
                    v.add("since_time", "is not a valid time");
                    StreamStart::Now
                }
            },
            (true, None) => StreamStart::Now,
        };
        let heartbeat = match msg.heartbeat_interval {
            None => Duration::from_secs(10),
            Some(d) if (1..=300).contains(&d.seconds) => Duration::new(d.seconds as u64, d.nanos.max(0) as u32),
            Some(_) => {
                v.add("heartbeat_interval", "must be between 1 s and 5 min");
                Duration::from_secs(10)
            }
        };
        v.finish()?;
        Ok(StreamEvents { scope, filter, start, heartbeat })
    }
}
