//! `crm-iam audit tail`: the reference sidecar. Follows `AuditEvents.StreamEvents`, prints one
//! JSON object per event on stdout, and keeps the last cursor (of an event or a heartbeat) in a
//! file, so that after a restart or a lost connection it resumes exactly where it stopped.
//!
//! Delivery to stdout is at-least-once: an event is printed, then its cursor is stored, so a
//! crash between the two prints that one event again on restart; every line carries its
//! `cursor` and `event_id` for a downstream de-duplication. The stream itself never skips.

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::{Code, service::interceptor::InterceptedService, transport::Endpoint};

use super::Bearer;
use crate::proto::v1::{self as pb, audit_events_client::AuditEventsClient, stream_events_response::Message};

/// What to follow.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub server: String,
    pub tenant: Option<String>,
    pub cursor_file: Option<PathBuf>,
    pub from_beginning: bool,
    pub action_prefixes: Vec<String>,
    pub target_kinds: Vec<String>,
    pub heartbeat: Duration,
    pub token: String,
}

fn value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        Some(Kind::StructValue(s)) => structure(s),
    }
}

fn structure(s: &prost_types::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

/// The JSON line of one event.
pub fn event_json(e: &pb::AuditEvent) -> Value {
    let time = e
        .occur_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let actor = e.actor.clone().unwrap_or_default();
    let target = e.target.clone().unwrap_or_default();
    let kind = pb::ActorKind::try_from(actor.kind)
        .unwrap_or(pb::ActorKind::Unspecified)
        .as_str_name()
        .trim_start_matches("ACTOR_KIND_");
    let changes: serde_json::Map<String, Value> = e
        .changes
        .iter()
        .map(|(k, c)| {
            let side = |v: &Option<prost_types::Value>| v.as_ref().map(value).unwrap_or(Value::Null);
            (k.clone(), json!({"before": side(&c.before), "after": side(&c.after)}))
        })
        .collect();
    json!({
        "cursor": e.cursor,
        "event_id": e.event_id,
        "tenant_id": e.tenant_id,
        "occur_time": time,
        "actor": {"kind": kind, "id": actor.id},
        "action": e.action,
        "target": {"kind": target.kind, "id": target.id},
        "request_id": e.request_id,
        "trace_id": e.trace_id,
        "peer": e.peer,
        "changes": changes,
        "details": e.details.as_ref().map(structure).unwrap_or(json!({})),
    })
}

fn store_cursor(path: &std::path::Path, cursor: &str) -> anyhow::Result<()> {
    // Write-then-rename: the file always holds a whole cursor, old or new.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, cursor)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Follows the stream until `stop`; returns an error only for what retrying cannot fix.
pub async fn tail(
    opts: TailOptions,
    out: &mut (dyn std::io::Write + Send),
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut cursor = match &opts.cursor_file {
        Some(f) if f.exists() => Some(std::fs::read_to_string(f)?.trim().to_owned()).filter(|c| !c.is_empty()),
        _ => None,
    };
    let endpoint = Endpoint::from_shared(opts.server.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let bearer = Bearer::new(&opts.token)?;
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        let since_time = (first && cursor.is_none() && opts.from_beginning)
            .then_some(prost_types::Timestamp { seconds: 0, nanos: 0 });
        let req = pb::StreamEventsRequest {
            tenant_id: opts.tenant.clone().unwrap_or_default(),
            after_cursor: cursor.clone().unwrap_or_default(),
            since_time,
            action_prefixes: opts.action_prefixes.clone(),
            target_kinds: opts.target_kinds.clone(),
            heartbeat_interval: Some(prost_types::Duration { seconds: opts.heartbeat.as_secs() as i64, nanos: 0 }),
        };
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = AuditEventsClient::new(InterceptedService::new(channel, bearer.clone()));
            let mut stream = client.stream_events(req).await?.into_inner();
            loop {
                let Some(msg) = stream.message().await? else { return Ok::<_, tonic::Status>(()) };
                let next = match msg.message {
                    Some(Message::Event(e)) => {
                        writeln!(out, "{}", event_json(&e)).map_err(|e| tonic::Status::internal(e.to_string()))?;
                        out.flush().map_err(|e| tonic::Status::internal(e.to_string()))?;
                        e.cursor
                    }
                    Some(Message::Heartbeat(h)) => h.cursor,
                    None => continue,
                };
                if let Some(f) = &opts.cursor_file {
                    store_cursor(f, &next).map_err(|e| tonic::Status::internal(e.to_string()))?;
                }
                cursor = Some(next);
            }
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = attempt => r,
        };
        first = false;
        match result {
            Ok(()) => {
                tracing::info!("stream ended (server shutting down?); reconnecting");
                backoff = Duration::from_millis(250);
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::OutOfRange
                        | Code::InvalidArgument
                        | Code::Unauthenticated
                        | Code::PermissionDenied
                        | Code::NotFound
                ) =>
            {
                anyhow::bail!("{}: {}", s.code(), s.message());
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), ?backoff, "stream interrupted; resuming");
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}
