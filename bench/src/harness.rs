//! The benchmark harness: a real crm-iam server in its own process (with the echo floor on the
//! same stack), gRPC clients on loopback, and a closed-loop load generator with latency histograms.

use std::{
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const TOKEN: &str = "bench-admin-token-0123456789abcdef";
/// The master key of benchmark servers (base64 of 32 bytes).
const MASTER_KEY: &str = "YmVuY2gtbWFzdGVyLWtleS0wMTIzNDU2Nzg5YWJjZGU=";

/// Adds the admin bearer token.
#[derive(Clone)]
pub struct Bearer;

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("authorization", MetadataValue::from_static("Bearer bench-admin-token-0123456789abcdef"));
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A server process started by the benchmark (killed when dropped).
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `crm-iam-bench serve` (this binary) on the database and waits until it serves.
    pub fn start(database_url: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--database-url", database_url])
            .env("CRM_IAM_ADMIN_TOKEN", TOKEN)
            .env("CRM_IAM_MASTER_KEY", MASTER_KEY)
            .env("RUST_LOG", std::env::var("CRM_IAM_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Ok(n) = std::env::var("CRM_IAM_BENCH_SERVER_THREADS") {
            cmd.env("TOKIO_WORKER_THREADS", n);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow::anyhow!("server did not start: {line:?}"))?
            .parse()?;
        Ok(Server { child, addr })
    }

    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Channel::from_shared(format!("http://{}", self.addr))?.tcp_nodelay(true).connect().await?);
        }
        Ok(out)
    }

    pub async fn channel(&self) -> anyhow::Result<Authed> {
        Ok(InterceptedService::new(self.channels(1).await?.remove(0), Bearer))
    }

    /// Resident memory of the server process, MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Samples a process's RSS every 100 ms until stopped; returns the maximum.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssSampler {
    pub fn start(server: &Server) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (pid, flag) = (server.child.id(), stop.clone());
        let task = tokio::spawn(async move {
            let mut max = rss_mib(pid);
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                max = max.max(rss_mib(pid));
            }
            max
        });
        RssSampler { stop, task }
    }

    pub async fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(f64::NAN)
    }
}

/// How hard and how long to drive a call.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Drives `call` with `load.concurrency` callers in a closed loop over `load.connections`
/// HTTP/2 connections; latencies after the warm-up go into one histogram.
pub async fn run<F, Fut>(channels: &[Channel], load: Load, call: F) -> Stats
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    run_until(channels, load, Arc::new(AtomicBool::new(false)), call).await
}

/// [`run`], ending early when `stop` is set (the rate is over the time actually measured).
pub async fn run_until<F, Fut>(channels: &[Channel], load: Load, stop: Arc<AtomicBool>, call: F) -> Stats
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let mut tasks = Vec::with_capacity(load.concurrency);
    for i in 0..load.concurrency {
        let channel = channels[i % channels.len()].clone();
        let call = call.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let (mut n, mut errors) = (0u64, 0u64);
            // Each caller starts at its own place in the request pool (callers walking it in
            // lockstep would all ask about the same records at once).
            let mut seq = (i as u64) * 7919 * 1_000;
            loop {
                let t0 = Instant::now();
                if t0 >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                seq += 1;
                let result = call(channel.clone(), seq).await;
                if t0 >= measure_from {
                    let micros = t0.elapsed().as_micros() as u64;
                    hist.saturating_record(micros.max(1));
                    n += 1;
                    if result.is_err() {
                        errors += 1;
                    }
                }
            }
            (hist, n, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut n, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, k, e) = t.await.expect("load task");
        all.add(h).expect("merge histograms");
        n += k;
        errors += e;
    }
    let measured = Instant::now().min(end).saturating_duration_since(measure_from).max(Duration::from_millis(1));
    Stats {
        rate: n as f64 / measured.as_secs_f64(),
        p50_ms: all.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub backend: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(name: &str, backend: &str) -> Row {
        Row {
            name: name.into(),
            backend: backend.into(),
            value: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            met: None,
        }
    }
}

pub fn print_table(rows: &[Row]) {
    println!("| benchmark | db | measured | floor / ceiling (same run) | ratio | target | met |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name, r.backend, r.value, r.baseline, r.ratio, r.target, met
        );
    }
}

pub fn fmt_stats(s: &Stats) -> String {
    let mut out = format!("{:.0}/s, p50 {:.2} ms, p99 {:.2} ms", s.rate, s.p50_ms, s.p99_ms);
    if s.errors > 0 {
        out.push_str(&format!(", {} errors", s.errors));
    }
    out
}

/// Runs futures with at most `n` at a time.
pub async fn bounded<T, Fut>(n: usize, items: impl IntoIterator<Item = Fut>) -> Vec<T>
where
    Fut: Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter(items).buffer_unordered(n).collect().await
}

/// Creates an ACTIVE user without hashing a password (invited, then deactivated and reactivated),
/// so seeding measures nothing of argon2; returns the user id.
pub async fn active_user<T>(
    users: &mut crm_iam::proto::v1::user_admin_client::UserAdminClient<T>,
    tenant_id: &str,
    user: crm_iam::proto::v1::User,
    role_ids: Vec<String>,
) -> Result<String, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use crm_iam::proto::v1 as pb;
    let id = users
        .create_user(pb::CreateUserRequest {
            tenant_id: tenant_id.into(),
            user: Some(user),
            send_invitation: true,
            role_ids,
            ..Default::default()
        })
        .await?
        .into_inner()
        .user
        .expect("created user")
        .user_id;
    users
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: tenant_id.into(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await?;
    users
        .reactivate_user(pb::ReactivateUserRequest {
            tenant_id: tenant_id.into(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await?;
    Ok(id)
}
