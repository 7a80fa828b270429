//! The notifications outbox: invitations committed (`CreateUser` with `send_invitation`) and
//! delivered per second to a local SMTP sink and to a local webhook sink, against the rate of
//! the same `CreateUser` on a server without a channel, in the same run; and the latency from
//! the acknowledged commit to the sink receiving the message.
//!
//! The sinks are minimal local servers in this process (an SMTP responder that accepts every
//! message, an HTTP/1.1 responder that answers 204), so what is measured is crm-iam's side.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crm_iam::proto::v1::{self as pb, user_admin_client::UserAdminClient};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tonic::service::interceptor::InterceptedService;

use crate::{
    Database,
    harness::{self, Bearer, Load, Row, Server},
};

/// When each recipient's invitation arrived at a sink.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Connections the sinks accepted (a channel that does not reuse them shows here).
static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A local server handing each connection to `conn`; returns its port.
async fn sink<F, Fut>(arrivals: Arrivals, conn: F) -> anyhow::Result<u16>
where
    F: Fn(TcpStream, Arrivals) -> Fut + Send + Copy + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            tokio::spawn(conn(stream, arrivals.clone()));
        }
    });
    Ok(port)
}

/// An SMTP server that takes every message and notes when it arrived, by recipient.
async fn smtp_sink(arrivals: Arrivals) -> anyhow::Result<u16> {
    sink(arrivals, async |stream: TcpStream, arrivals: Arrivals| {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let _ = write.write_all(b"220 sink ESMTP\r\n").await;
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-sink\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("RCPT TO:") {
                rcpt.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                b"250 OK\r\n"
            } else if upper.starts_with("DATA") {
                let _ = write.write_all(b"354 go on\r\n").await;
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                let at = Instant::now();
                let mut a = arrivals.lock().unwrap();
                for r in rcpt.drain(..) {
                    a.entry(r).or_insert(at);
                }
                b"250 queued\r\n"
            } else if upper.starts_with("QUIT") {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 OK\r\n"
            };
            if write.write_all(reply).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// An HTTP/1.1 server (keep-alive) that answers every POST 204 and notes when each recipient's
/// webhook arrived.
async fn webhook_sink(arrivals: Arrivals) -> anyhow::Result<u16> {
    sink(arrivals, async |stream: TcpStream, arrivals: Arrivals| {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        loop {
            let mut length = 0usize;
            loop {
                line.clear();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                && let Some(email) = v["data"]["recipient"]["email"].as_str()
            {
                arrivals.lock().unwrap().entry(email.to_owned()).or_insert(at);
            }
            if write.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await
}

/// What one run of CreateUser measured: the create rate, and per recipient when its commit was
/// acknowledged.
struct Creates {
    stats: harness::Stats,
    acked: HashMap<String, Instant>,
    window: Duration,
}

async fn create_invitations(server: &Server, load: Load, run: &str) -> anyhow::Result<Creates> {
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: run.into(), display_name: run.into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?;
    let channels = server.channels(load.connections).await?;
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tenant, acks) = (run.to_owned(), acked.clone());
    let started = Instant::now();
    let stats = harness::run(&channels, load, move |c, seq| {
        let (tenant, acks) = (tenant.clone(), acks.clone());
        async move {
            let email = format!("u{seq}@{tenant}.example");
            UserAdminClient::new(InterceptedService::new(c, Bearer))
                .create_user(pb::CreateUserRequest {
                    tenant_id: tenant,
                    user: Some(pb::User { email: email.clone(), given_name: "Bench".into(), ..Default::default() }),
                    send_invitation: true,
                    ..Default::default()
                })
                .await?;
            acks.lock().unwrap().insert(email, Instant::now());
            Ok(())
        }
    })
    .await;
    let window = started.elapsed();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    Ok(Creates { stats, acked, window })
}

/// Delivery against the create rate of the same run: delivered per second while creating (all
/// messages acknowledged in the window, delivered by its end plus a second), and the
/// commit-to-delivery latency of every message.
fn delivery_row(name: &str, label: &str, creates: &Creates, arrivals: &Arrivals, baseline: f64) -> Vec<Row> {
    let arrivals = arrivals.lock().unwrap();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut missing = 0;
    for (email, acked) in &creates.acked {
        match arrivals.get(email) {
            Some(at) => hist.saturating_record(at.saturating_duration_since(*acked).as_micros().max(1) as u64),
            None => missing += 1,
        }
    }
    let delivered = creates.acked.len() - missing;
    let committed = creates.acked.len().max(1);
    let keep_up = delivered as f64 / committed as f64;
    let p99 = hist.value_at_quantile(0.99) as f64 / 1000.0;

    let mut create = Row::new(&format!("CreateUser with an invitation, {name} channel"), label);
    create.value = harness::fmt_stats(&creates.stats);
    create.baseline = format!("{baseline:.0}/s without a channel (same run)");
    create.ratio = format!("{:.0}%", creates.stats.rate * 100.0 / baseline);
    create.target = "no slower than without, beyond noise".into();

    let mut delivery = Row::new(&format!("Invitations delivered to a local {name} sink while created"), label);
    delivery.value = format!(
        "{delivered} of {committed} within the run ({:.0}/s); commit to delivery p50 {:.0} ms, p99 {p99:.0} ms",
        delivered as f64 / creates.window.as_secs_f64(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
    );
    delivery.baseline = format!("{:.0} created/s", committed as f64 / creates.window.as_secs_f64());
    delivery.ratio = format!("{:.0}%", keep_up * 100.0);
    delivery.target = "≥ 90% delivered, p99 ≤ 1 s".into();
    delivery.met = Some(keep_up >= 0.9 && p99 <= 1000.0);
    vec![create, delivery]
}

/// Waits (bounded) until every acknowledged message arrived, or the deadline passes.
async fn settle(creates: &Creates, arrivals: &Arrivals, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let all = {
            let a = arrivals.lock().unwrap();
            creates.acked.keys().all(|k| a.contains_key(k))
        };
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The request path alone: a webhook channel whose receiver accepts connections and never
/// answers (the worker's first batch waits out a long timeout), so the server queues every
/// message and delivers almost none while CreateUser runs.
async fn queue_only(
    db_for: &impl AsyncFn() -> anyhow::Result<Database>,
    label: &str,
    load: Load,
    baseline: f64,
) -> anyhow::Result<Row> {
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let db = db_for().await?;
    let url = format!("http://127.0.0.1:{port}/hook");
    let env = [
        ("CRM_IAM_NOTIFICATION_WEBHOOK_URL", url.as_str()),
        ("CRM_IAM_NOTIFICATION_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("CRM_IAM_NOTIFICATION_WEBHOOK_TIMEOUT", "10m"),
    ];
    let server = Server::start(&db.url, &env)?;
    let creates = create_invitations(&server, load, "queued").await?;
    server.stop();
    db.drop_now().await;
    held.abort();
    let mut r = Row::new("CreateUser with an invitation queued, nothing delivered meanwhile", label);
    r.value = harness::fmt_stats(&creates.stats);
    r.baseline = format!("{baseline:.0}/s without a channel (same run)");
    r.ratio = format!("{:.0}%", creates.stats.rate * 100.0 / baseline);
    r.target = "the outbox row's own cost".into();
    Ok(r)
}

pub async fn run(
    db_for: impl AsyncFn() -> anyhow::Result<Database>,
    label: &str,
    load: Load,
) -> anyhow::Result<Vec<Row>> {
    // Without a channel: the floor of CreateUser with an invitation (the token goes to the caller).
    let db = db_for().await?;
    let server = Server::start(&db.url, &[])?;
    let baseline = create_invitations(&server, load, "plain").await?;
    server.stop();
    db.drop_now().await;
    let mut rows = vec![queue_only(&db_for, label, load, baseline.stats.rate).await?];
    for channel in ["SMTP", "webhook"] {
        let db = db_for().await?;
        let arrivals: Arrivals = Arc::default();
        let env: Vec<(String, String)> = if channel == "SMTP" {
            let port = smtp_sink(arrivals.clone()).await?;
            vec![("CRM_IAM_SMTP_URL".into(), format!("smtp://127.0.0.1:{port}"))]
        } else {
            let port = webhook_sink(arrivals.clone()).await?;
            vec![
                ("CRM_IAM_NOTIFICATION_WEBHOOK_URL".into(), format!("http://127.0.0.1:{port}/hook")),
                ("CRM_IAM_NOTIFICATION_WEBHOOK_SECRET".into(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ]
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = Server::start(&db.url, &env)?;
        let creates = create_invitations(&server, load, "outbox").await?;
        settle(&creates, &arrivals, Duration::from_secs(1)).await;
        eprintln!(
            "[{label}] {channel}: the sink accepted {} connections",
            CONNECTIONS.swap(0, std::sync::atomic::Ordering::Relaxed)
        );
        rows.extend(delivery_row(channel, label, &creates, &arrivals, baseline.stats.rate));
        // What was still queued drains afterwards (not counted above).
        settle(&creates, &arrivals, Duration::from_secs(60)).await;
        server.stop();
        db.drop_now().await;
    }
    Ok(rows)
}
