//! The audit stream under load: commit-to-delivery latency with 100 subscribers while writers
//! commit user updates as fast as they can, and server memory with 1,000 idle streams.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crm_iam::proto::v1::{self as pb, audit_events_client::AuditEventsClient, user_admin_client::UserAdminClient};
use hdrhistogram::Histogram;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;

use crate::{
    Database,
    harness::{Bearer, Load, Row, Server},
};

fn writers() -> usize {
    std::env::var("BENCH_WRITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
}
fn subscribers() -> usize {
    std::env::var("BENCH_SUBSCRIBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}
const IDLE_STREAMS: usize = 1000;

/// The price of commit-ordered appends on PostgreSQL: 8 concurrent writers inserting one audit-
/// sized row per transaction, with and without the transaction-scoped advisory lock that orders them.
async fn serialization_cost(db: &Database, seconds: u64) -> anyhow::Result<Option<Row>> {
    use sea_orm::{ConnectionTrait, Statement};
    if db.label != "PostgreSQL" {
        return Ok(None);
    }
    let conn = sea_orm::Database::connect(&db.url).await?;
    conn.execute_unprepared("CREATE TABLE IF NOT EXISTS bench_appends (seq BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .await?;
    let mut rates = Vec::new();
    for locked in [false, true] {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (conn, done) = (conn.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                use sea_orm::TransactionTrait;
                while Instant::now() < until {
                    let tx = conn.begin().await?;
                    if locked {
                        tx.execute_raw(Statement::from_string(
                            sea_orm::DbBackend::Postgres,
                            "SELECT pg_advisory_xact_lock(42)",
                        ))
                        .await?;
                    }
                    tx.execute_raw(Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        format!("INSERT INTO bench_appends (body) VALUES ('{}')", "x".repeat(400)),
                    ))
                    .await?;
                    tx.commit().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, sea_orm::DbErr>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        rates.push(done.load(Ordering::Relaxed) as f64 / seconds as f64);
    }
    conn.execute_unprepared("DROP TABLE bench_appends").await?;
    let mut r = Row::new("Commit-ordered appends: 8 writers, one row per transaction", db.label);
    r.value = format!("{:.0} commits/s with the ordering lock", rates[1]);
    r.baseline = format!("{:.0} commits/s without it (group commit)", rates[0]);
    r.ratio = format!("{:.0}%", rates[1] * 100.0 / rates[0]);
    r.target = "measure the cost (issue 4)".into();
    Ok(Some(r))
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(&db.url, &[])?;
    let ch = server.channel().await?;
    // One tenant and user per writer: writers in different tenants do not wait for each other,
    // only for the audit append order.
    let mut users = Vec::new();
    for w in 0..writers() {
        let t = format!("audit-{w}");
        pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
            .create_tenant(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant { tenant_id: t.clone(), display_name: t.clone(), ..Default::default() }),
                request_id: String::new(),
            })
            .await?;
        let u = UserAdminClient::new(ch.clone())
            .create_user(pb::CreateUserRequest {
                tenant_id: t.clone(),
                user: Some(pb::User { email: format!("w{w}@bench.example"), ..Default::default() }),
                send_invitation: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .user
            .unwrap()
            .user_id;
        users.push((t, u));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = server.rss_mib();

    // 1,000 idle streams.
    let channels = server.channels(10).await?;
    let mut idle = Vec::with_capacity(IDLE_STREAMS);
    for i in 0..IDLE_STREAMS {
        let mut c = AuditEventsClient::new(InterceptedService::new(channels[i % channels.len()].clone(), Bearer));
        idle.push(c.stream_events(pb::StreamEventsRequest::default()).await?.into_inner());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let streams_rss = server.rss_mib();
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 100 subscribers measuring commit-to-delivery (occur_time is taken in the writing
    // transaction, just before commit; both processes read the same clock).
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for i in 0..subscribers() {
        let mut c = AuditEventsClient::new(InterceptedService::new(channels[i % channels.len()].clone(), Bearer));
        let mut stream = c.stream_events(pb::StreamEventsRequest::default()).await?.into_inner();
        let (stop, delivered) = (stop.clone(), delivered.clone());
        subs.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await else {
                    continue;
                };
                if let Some(pb::stream_events_response::Message::Event(e)) = m.message {
                    let now = chrono::Utc::now();
                    let t = e.occur_time.unwrap_or_default();
                    let at = chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap_or(now);
                    let micros = (now - at).num_microseconds().unwrap_or(0).max(1) as u64;
                    hist.saturating_record(micros);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + load.duration;
    let mut writers = Vec::new();
    for (w, (t, u)) in users.into_iter().enumerate() {
        let mut c = UserAdminClient::new(InterceptedService::new(channels[w % channels.len()].clone(), Bearer));
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut i = 0u64;
            while Instant::now() < until {
                i += 1;
                let t0 = Instant::now();
                let r = c
                    .update_user(pb::UpdateUserRequest {
                        tenant_id: t.clone(),
                        user: Some(pb::User {
                            user_id: u.clone(),
                            position: format!("title {i}"),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths: vec!["position".into()] }),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                    hist.saturating_record(t0.elapsed().as_micros() as u64);
                }
            }
            hist
        }));
    }
    let mut write_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for w in writers {
        write_hist.add(w.await?)?;
    }
    let committed = committed.load(Ordering::Relaxed);
    // Let the last events arrive, then stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < committed * subscribers() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for s in subs {
        all.add(s.await?)?;
    }
    let delivered = delivered.load(Ordering::Relaxed);
    server.stop();

    let rate = committed as f64 / load.duration.as_secs_f64();
    let p50 = all.value_at_quantile(0.5) as f64 / 1000.0;
    let p99 = all.value_at_quantile(0.99) as f64 / 1000.0;
    let mut rows = Vec::new();
    rows.extend(serialization_cost(db, load.duration.as_secs().clamp(2, 10)).await?);
    let mut r = Row::new("Audit commit-to-delivery, 100 subscribers", db.label);
    r.value = format!("p50 {p50:.1} ms, p99 {p99:.1} ms; {rate:.0} events/s committed, {delivered} deliveries");
    r.baseline = format!(
        "{} expected deliveries; the writes themselves: p50 {:.1} ms, p99 {:.1} ms",
        committed * subscribers() as u64,
        write_hist.value_at_quantile(0.5) as f64 / 1000.0,
        write_hist.value_at_quantile(0.99) as f64 / 1000.0
    );
    r.ratio = format!("{:.1}% delivered", delivered as f64 * 100.0 / (committed * subscribers() as u64).max(1) as f64);
    r.target = "p99 ≤ 25 ms, every event delivered".into();
    r.met = Some(p99 <= 25.0 && delivered == committed * subscribers() as u64);
    rows.push(r);
    let mut r = Row::new("Server RSS with 1,000 idle streams", db.label);
    r.value = format!("{streams_rss:.1} MiB");
    r.baseline = format!("idle server {idle_rss:.1} MiB");
    r.ratio = format!("+{:.1} MiB", streams_rss - idle_rss);
    r.target = "≤ 100 MiB".into();
    r.met = Some(streams_rss <= 100.0);
    rows.push(r);
    Ok(rows)
}
