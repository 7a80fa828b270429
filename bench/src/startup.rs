//! Start-up time to SERVING and idle memory: the server is spawned on a fresh database (so the
//! time includes creating and migrating it, making the first signing key and the built-in roles)
//! and polled with the gRPC health check until it answers SERVING; RSS is read after it has been
//! idle for three seconds.

use std::time::{Duration, Instant};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Database,
    harness::{Row, Server},
};

const RUNS: usize = 5;

/// Spawns a server on `url` and returns (time to SERVING, idle RSS in MiB).
async fn once(url: &str) -> anyhow::Result<(Duration, f64)> {
    let started = Instant::now();
    let server = Server::start(url, &[])?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?;
    let serving = loop {
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
            if status.is_ok_and(|s| s.into_inner().status == 1) {
                break started.elapsed();
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the server did not become SERVING");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = server.rss_mib();
    server.stop();
    Ok((serving, rss))
}

pub async fn run(label: &str, fresh: impl AsyncFn() -> anyhow::Result<Database>) -> anyhow::Result<Vec<Row>> {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let d = fresh().await?;
        let (t, m) = once(&d.url).await?;
        d.drop_now().await;
        times.push(t);
        rss.push(m);
    }
    times.sort();
    rss.sort_by(f64::total_cmp);
    let (t, m) = (times[RUNS / 2], rss[RUNS / 2]);
    let mut rows = Vec::new();
    let mut r = Row::new("Start-up to SERVING (fresh database, migrations included)", label);
    r.value = format!(
        "{:.0} ms (median of {RUNS}; {:.0}–{:.0} ms)",
        t.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3
    );
    r.target = "≤ 300 ms on SQLite".into();
    if label == "SQLite" {
        r.met = Some(t <= Duration::from_millis(300));
    }
    rows.push(r);
    let mut r = Row::new("Idle RSS", label);
    r.value = format!("{m:.1} MiB (median of {RUNS})");
    r.target = "≤ 30 MiB".into();
    r.met = Some(m <= 30.0);
    rows.push(r);
    Ok(rows)
}
