//! The ownership registry under bulk load and a 1,000,000-record transfer:
//! - RecordOwnership ingest (calls of 10,000 records) against a raw multi-row INSERT of the same
//!   rows into a table with the same keys and indexes (the floor);
//! - the transfer job's records/s against raw batched UPDATEs of the same table, same batch size;
//! - server RSS while the job runs, and Access.Check p99 (owner from the registry) during a
//!   transfer against idle.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crm_iam::proto::v1::{self as pb, ownership_transfer_client::OwnershipTransferClient};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use crate::{
    Database,
    harness::{self, Bearer, Load, Row, Server, Stats, fmt_stats},
};

const TENANT: &str = "bench-transfer";
const RECORDS: usize = 1_000_000;
const PER_CALL: usize = 10_000;
const CHECK_RECORDS: usize = 1_000;

fn records() -> usize {
    std::env::var("BENCH_TRANSFER_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(RECORDS)
}

fn batch_size() -> u64 {
    std::env::var("BENCH_TRANSFER_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

type Client =
    OwnershipTransferClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// A tenant with three ACTIVE operators: the departing one, the receiving one, and a checker.
async fn seed(server: &Server) -> anyhow::Result<[String; 3]> {
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: TENANT.into(),
                display_name: "Transfer".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
    let roles = pb::role_admin_client::RoleAdminClient::new(ch.clone())
        .list_roles(pb::ListRolesRequest { tenant_id: TENANT.into(), ..Default::default() })
        .await?
        .into_inner()
        .roles;
    let operator = roles.into_iter().find(|r| r.name == "operator").expect("operator role").role_id;
    let mut users = pb::user_admin_client::UserAdminClient::new(ch);
    let mut ids = Vec::new();
    for name in ["leaving", "taker", "checker"] {
        let user = pb::User { email: format!("{name}@bench.example"), given_name: name.into(), ..Default::default() };
        let id = harness::active_user(&mut users, TENANT, user, vec![operator.clone()]).await?;
        ids.push(id);
    }
    Ok([ids[0].clone(), ids[1].clone(), ids[2].clone()])
}

fn record_id(i: usize) -> String {
    format!("deal-{i:08}")
}

/// RecordOwnership of `n` records in calls of 10,000 (4 calls in flight); records/s.
async fn ingest(client: &Client, owner: &str, n: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let calls = (0..n.div_ceil(PER_CALL)).map(|c| {
        let mut client = client.clone();
        let owner = owner.to_owned();
        async move {
            let ownerships = (c * PER_CALL..((c + 1) * PER_CALL).min(n))
                .map(|i| pb::Ownership {
                    module: "deals".into(),
                    resource_id: record_id(i),
                    owner_user_id: owner.clone(),
                })
                .collect();
            client
                .record_ownership(pb::RecordOwnershipRequest {
                    tenant_id: TENANT.into(),
                    ownerships,
                    request_id: String::new(),
                })
                .await
                .map(|_| ())
        }
    });
    for r in harness::bounded(4, calls).await {
        r?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The floors, straight on the database: multi-row INSERTs (1,000 rows a statement, 10,000 a
/// transaction) into a table with the registry's keys and indexes, then UPDATEs of that table in
/// batches of the job's size, each batch one transaction selecting the owner's next ids (after the
/// last batch's) and updating them by key: what the job does, minus its bookkeeping, audit event
/// and locks.
async fn raw_floors(db: &Database, n: usize, batch: u64) -> anyhow::Result<(f64, f64)> {
    let conn = sea_orm::Database::connect(&db.url).await?;
    let backend = conn.get_database_backend();
    let (uuid_type, ts_type) = match backend {
        DbBackend::Postgres => ("uuid", "timestamptz"),
        _ => ("text", "text"),
    };
    conn.execute_unprepared("DROP TABLE IF EXISTS bench_ownerships").await?;
    conn.execute_unprepared(&format!(
        "CREATE TABLE bench_ownerships (tenant_id varchar NOT NULL, module varchar NOT NULL, \
         resource_id varchar NOT NULL, owner_user_id {uuid_type} NOT NULL, update_time {ts_type} NOT NULL, \
         PRIMARY KEY (tenant_id, module, resource_id))"
    ))
    .await?;
    conn.execute_unprepared(
        "CREATE INDEX ix_bench_ownerships_owner ON bench_ownerships (tenant_id, owner_user_id, module, resource_id)",
    )
    .await?;
    let (from, to) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let ph = |i: usize| match backend {
        DbBackend::Postgres => format!("${i}"),
        _ => "?".into(),
    };
    let now = chrono::Utc::now();

    let t = Instant::now();
    for call in 0..n.div_ceil(PER_CALL) {
        let tx = conn.begin().await?;
        let ids: Vec<usize> = (call * PER_CALL..((call + 1) * PER_CALL).min(n)).collect();
        for chunk in ids.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO bench_ownerships (tenant_id, module, resource_id, owner_user_id, update_time) VALUES ",
            );
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 5);
            for (k, i) in chunk.iter().enumerate() {
                if k > 0 {
                    sql.push(',');
                }
                let b = k * 5;
                sql.push_str(&format!("({},{},{},{},{})", ph(b + 1), ph(b + 2), ph(b + 3), ph(b + 4), ph(b + 5)));
                values.extend([TENANT.into(), "deals".into(), record_id(*i).into(), from.into(), now.into()]);
            }
            tx.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
        }
        tx.commit().await?;
    }
    let insert_rate = n as f64 / t.elapsed().as_secs_f64();
    if backend == DbBackend::Postgres {
        conn.execute_unprepared("ANALYZE bench_ownerships").await?;
    }

    let t = Instant::now();
    let mut moved = 0usize;
    let mut after = String::new();
    loop {
        let tx = conn.begin().await?;
        let rows = tx
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT resource_id FROM bench_ownerships WHERE tenant_id = {} AND owner_user_id = {} \
                     AND module = {} AND resource_id > {} ORDER BY resource_id LIMIT {}",
                    ph(1),
                    ph(2),
                    ph(3),
                    ph(4),
                    ph(5)
                ),
                [TENANT.into(), from.into(), "deals".into(), after.clone().into(), (batch as i64).into()],
            ))
            .await?;
        if rows.is_empty() {
            break;
        }
        let ids: Vec<String> = rows.iter().map(|r| r.try_get_by_index::<String>(0)).collect::<Result<_, _>>()?;
        for chunk in ids.chunks(1000) {
            let list: Vec<String> = (0..chunk.len()).map(|k| ph(k + 5)).collect();
            let mut values: Vec<sea_orm::Value> =
                vec![to.into(), chrono::Utc::now().into(), TENANT.into(), "deals".into()];
            values.extend(chunk.iter().map(|id| sea_orm::Value::from(id.clone())));
            tx.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE bench_ownerships SET owner_user_id = {}, update_time = {} WHERE tenant_id = {} \
                     AND module = {} AND resource_id IN ({})",
                    ph(1),
                    ph(2),
                    ph(3),
                    ph(4),
                    list.join(",")
                ),
                values,
            ))
            .await?;
        }
        tx.commit().await?;
        moved += ids.len();
        after = ids.last().cloned().unwrap_or_default();
    }
    let update_rate = moved as f64 / t.elapsed().as_secs_f64();
    conn.execute_unprepared("DROP TABLE bench_ownerships").await?;
    conn.close().await?;
    Ok((insert_rate, update_rate))
}

/// One Access.Check of one of the checker's own records (the owner comes from the registry).
async fn check_own(ch: tonic::transport::Channel, checker: Arc<String>, seq: u64) -> Result<(), tonic::Status> {
    let mut client = pb::access_client::AccessClient::with_interceptor(ch, Bearer);
    let r = client
        .check(pb::CheckRequest {
            tenant_id: TENANT.into(),
            user_id: checker.to_string(),
            module: "deals".into(),
            action: "edit".into(),
            resource: Some(pb::Resource {
                resource_id: format!("own-{:06}", seq as usize % CHECK_RECORDS),
                ..Default::default()
            }),
        })
        .await?;
    if r.into_inner().allowed { Ok(()) } else { Err(tonic::Status::internal("denied")) }
}

/// Access.Check of the checker's own records, closed loop.
async fn checks(server: &Server, load: Load, checker: Arc<String>) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    Ok(harness::run(&channels, load, move |ch, seq| check_own(ch, checker.clone(), seq)).await)
}

/// Starts a transfer of everything `from` owns to `to` and waits for its end; returns records/s
/// and the highest server RSS seen (sampled every 100 ms).
async fn transfer(server: &Server, client: &Client, from: &str, to: &str) -> anyhow::Result<(f64, i64, f64)> {
    let mut client = client.clone();
    let t = Instant::now();
    let tr = client
        .start_transfer(pb::StartTransferRequest {
            tenant_id: TENANT.into(),
            from_user_id: from.into(),
            rules: vec![pb::TransferRule {
                module: String::new(),
                target: Some(pb::transfer_rule::Target::ToUserId(to.into())),
            }],
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .transfer
        .unwrap();
    let mut max_rss = server.rss_mib();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        max_rss = max_rss.max(server.rss_mib());
        let now = client
            .get_transfer(pb::GetTransferRequest { tenant_id: TENANT.into(), transfer_id: tr.transfer_id.clone() })
            .await?
            .into_inner()
            .transfer
            .unwrap();
        match pb::TransferState::try_from(now.state) {
            Ok(pb::TransferState::Succeeded) => {
                return Ok((now.moved as f64 / t.elapsed().as_secs_f64(), now.moved, max_rss));
            }
            Ok(pb::TransferState::Pending | pb::TransferState::Running) => {}
            _ => anyhow::bail!("transfer ended badly: {now:?}"),
        }
    }
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let n = records();
    let batch = batch_size();
    let batch_env = batch.to_string();
    let server = Server::start(&db.url, &[("CRM_IAM_TRANSFER_BATCH_SIZE", &batch_env)])?;
    let [from, to, checker] = seed(&server).await?;
    let client: Client = OwnershipTransferClient::new(server.channel().await?).max_decoding_message_size(64 << 20);

    let ingest_rate = ingest(&client, &from, n).await?;
    eprintln!("[{}] recorded {n} records: {ingest_rate:.0}/s", db.label);
    // The checker owns its own small set of records.
    {
        let mut c = client.clone();
        let ownerships = (0..CHECK_RECORDS)
            .map(|i| pb::Ownership {
                module: "deals".into(),
                resource_id: format!("own-{i:06}"),
                owner_user_id: checker.clone(),
            })
            .collect();
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: TENANT.into(),
            ownerships,
            request_id: String::new(),
        })
        .await?;
    }
    let checker = Arc::new(checker);
    let rss_before = server.rss_mib();

    // 1. The job alone: records/s and memory.
    let (rate, moved, max_rss) = transfer(&server, &client, &from, &to).await?;
    eprintln!("[{}] transferred {moved}: {rate:.0}/s, max RSS {max_rss:.1} MiB", db.label);

    // 2. Access.Check idle, then while the records move back.
    let idle = checks(&server, load, checker.clone()).await?;
    let busy_load = Load { warmup: Duration::ZERO, duration: Duration::from_secs(3600), ..load };
    let done = Arc::new(AtomicBool::new(false));
    let during = {
        let (done, checker) = (done.clone(), checker.clone());
        let channels = server.channels(load.connections).await?;
        tokio::spawn(async move {
            // Closed loop like `checks`, but it stops as soon as the transfer ends.
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let watcher = tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                s2.store(true, Ordering::Relaxed);
            });
            let stats =
                harness::run_until(&channels, busy_load, stop, move |ch, seq| check_own(ch, checker.clone(), seq))
                    .await;
            watcher.abort();
            stats
        })
    };
    let back = transfer(&server, &client, &to, &from).await;
    done.store(true, Ordering::Relaxed);
    let during = during.await?;
    let (back_rate, _, back_rss) = back?;
    eprintln!("[{}] transfer under Check load: {back_rate:.0}/s, Check {}", db.label, fmt_stats(&during));
    server.stop();

    let (insert_floor, update_floor) = raw_floors(db, n, batch).await?;
    eprintln!("[{}] raw floors: insert {insert_floor:.0}/s, update {update_floor:.0}/s", db.label);

    let mut rows = Vec::new();
    let mut r = Row::new(&format!("RecordOwnership ingest ({n} records, 10,000 a call)"), db.label);
    r.value = format!("{ingest_rate:.0} records/s");
    r.baseline = format!("raw multi-row INSERT {insert_floor:.0} records/s");
    r.ratio = format!("{:.0}% of raw", ingest_rate * 100.0 / insert_floor);
    r.target = "≥ 50,000 records/s on PostgreSQL".into();
    r.met = (db.label == "PostgreSQL").then_some(ingest_rate >= 50_000.0);
    rows.push(r);
    let mut r = Row::new(&format!("Transfer of {moved} records (batches of {batch})"), db.label);
    r.value = format!("{rate:.0} records/s");
    r.baseline = format!("raw batched UPDATE {update_floor:.0} records/s");
    let ratio = rate / update_floor;
    r.ratio = format!("{:.0}% of raw", ratio * 100.0);
    r.target = "≥ 50% of raw".into();
    r.met = Some(ratio >= 0.5);
    rows.push(r);
    let mut r = Row::new("Server RSS during the transfer", db.label);
    r.value = format!("max {:.1} MiB (2nd run under load: {back_rss:.1})", max_rss);
    r.baseline = format!("{rss_before:.1} MiB before");
    r.ratio = format!("+{:.1} MiB", max_rss - rss_before);
    r.target = "flat (no growth with job size)".into();
    r.met = Some(max_rss - rss_before < 64.0);
    rows.push(r);
    let mut r = Row::new("Access.Check p99 during a transfer", db.label);
    r.value = format!("{:.2} ms ({})", during.p99_ms, fmt_stats(&during));
    r.baseline = format!("idle {}", fmt_stats(&idle));
    let ratio = during.p99_ms / idle.p99_ms;
    r.ratio = format!("{ratio:.2}× idle");
    r.target = "≤ 2× idle".into();
    r.met = Some(ratio <= 2.0 && during.errors == 0);
    rows.push(r);
    Ok(rows)
}
