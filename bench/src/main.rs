//! `crm-iam-bench`: reproducible figures for crm-iam, each beside its floor or ceiling measured in
//! the same run on the same machine (see BENCHMARKS.md).
//!
//!     cargo run --release -p crm-iam-bench -- all
//!
//! Every benchmark starts the real server (this binary's hidden `serve` mode: `crm-iam`'s
//! application plus the echo floor on the same stack) in its own process and drives it over
//! gRPC on loopback; client and server share the machine's cores.

/// The echo service (`proto/crm/iam/bench/v1/echo.proto`), compiled by this crate's build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("crm.iam.bench.v1");
}

mod access;
mod audit;
mod auth;
mod envoy;
mod floods;
mod harness;
mod outbox;
mod scim;
mod sso;
mod startup;
mod transfer;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The same allocator as `crm-iam` (the benchmark's server runs in this binary).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crm_iam::{app::Application, config::Config};
use proto::{
    EchoRequest, EchoResponse,
    echo_server::{Echo, EchoServer},
};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(name = "crm-iam-bench", about = "Benchmarks of crm-iam against the limits of this machine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: serve crm-iam plus the echo floor, print "listening ADDR".
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        database_url: String,
    },
    /// Access.Check, BatchCheck, GetUser and ListUsers against the echo floor; RSS under load.
    Access(Opts),
    /// Audit stream: commit-to-delivery latency with 100 subscribers; memory with 1,000 streams.
    Audit(Opts),
    /// Auth: Authenticate and CreateUser against the argon2 ceilings, Check p99 under a login flood, IntrospectToken.
    Auth(Opts),
    /// Ownership: RecordOwnership ingest and a 1,000,000-record transfer against raw SQL floors.
    Transfer(Opts),
    /// Notifications: invitations committed and delivered per second to local SMTP and webhook sinks.
    Outbox(Opts),
    /// SCIM: user lookups and state changes against the equivalent gRPC calls; a 10,000-user first push against users import.
    Scim(Opts),
    /// Envoy with ext_authz to crm-iam against the same Envoy without it (needs `envoy`).
    Envoy(Opts),
    /// Single sign-on: CompleteSso against a local OpenID Provider, Access.Check p99 during a burst (needs node).
    Sso(Opts),
    /// Start-up time to SERVING on a fresh database, and idle RSS.
    Startup(Opts),
    /// Memory under id floods: 1,000,000 record ids and 100,000 unknown tenants within the cache budget.
    Floods(Opts),
    /// Every benchmark.
    All(Opts),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Databases {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Args, Clone)]
struct Opts {
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the requests share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up per run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Which databases. PostgreSQL needs CRM_IAM_BENCH_POSTGRES_URL (or CRM_IAM_TEST_POSTGRES_URL):
    /// a URL whose user may create databases.
    #[arg(long, value_enum, default_value_t = Databases::Both)]
    databases: Databases,
}

impl Opts {
    fn load(&self) -> harness::Load {
        harness::Load {
            concurrency: self.concurrency,
            connections: self.connections,
            warmup: Duration::from_secs(self.warmup),
            duration: Duration::from_secs(self.seconds),
        }
    }
}

/// The echo floor: same stack, same authentication, no work.
struct EchoService;

const ECHO_REASON: &str = "role \"manager\" grants deals.edit at DEPARTMENT scope: the resource's department \
                           \"Sales East\" is in the user's department tree under \"Sales\"";

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let msg = req.into_inner();
        tracing::Span::current().record("tenant_id", msg.tenant_id.as_str());
        Ok(Response::new(EchoResponse { allowed: true, scope: 4, reason: ECHO_REASON.to_owned() }))
    }
}

async fn serve(database_url: String) -> anyhow::Result<()> {
    // A benchmark may give the server a configuration file (the envoy benchmark's route table).
    let file = std::env::var_os("CRM_IAM_CONFIG").map(std::path::PathBuf::from);
    let config = Config::load(
        file.as_deref(),
        crm_iam::config::Overrides {
            listen: Some("127.0.0.1:0".parse()?),
            database_url: Some(database_url),
            ..Default::default()
        },
    )?;
    let _telemetry = crm_iam::telemetry::init(config.log_format)?;
    let app = Application::build(config).await?.with_extra_services(Box::new(|routes| {
        routes.add_service(EchoServer::new(EchoService));
    }));
    println!("listening {}", app.local_addr());
    app.run_until_signal().await
}

/// A new database made for one benchmark: its label, its URL, and what `drop_now` removes.
pub struct Database {
    pub label: &'static str,
    pub url: String,
    pg_admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    fn sqlite() -> anyhow::Result<Database> {
        let dir = tempfile::tempdir()?;
        Ok(Database {
            label: "SQLite",
            url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            pg_admin: None,
            _dir: Some(dir),
        })
    }

    async fn postgres(admin_url: &str) -> anyhow::Result<Database> {
        use sea_orm::ConnectionTrait;
        let name = format!("crm_iam_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(admin_url).await?;
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
        admin.close().await?;
        let (base, query) =
            admin_url.split_once('?').map(|(b, q)| (b, format!("?{q}"))).unwrap_or((admin_url, String::new()));
        let slash = base.rfind('/').ok_or_else(|| anyhow::anyhow!("bad PostgreSQL URL"))?;
        Ok(Database {
            label: "PostgreSQL",
            url: format!("{}/{name}{query}", &base[..slash]),
            pg_admin: Some((admin_url.to_owned(), name)),
            _dir: None,
        })
    }

    pub async fn drop_now(mut self) {
        use sea_orm::ConnectionTrait;
        if let Some((admin_url, name)) = self.pg_admin.take()
            && let Ok(admin) = sea_orm::Database::connect(&admin_url).await
        {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// A kind of database to run on (PostgreSQL: a URL whose user may create databases).
enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// A new, empty database of this kind.
    async fn fresh(&self) -> anyhow::Result<Database> {
        match self {
            Backend::Sqlite => Database::sqlite(),
            Backend::Postgres(admin_url) => Database::postgres(admin_url).await,
        }
    }
}

fn backends(which: Databases) -> anyhow::Result<Vec<Backend>> {
    let mut out = Vec::new();
    if matches!(which, Databases::Sqlite | Databases::Both) {
        out.push(Backend::Sqlite);
    }
    if matches!(which, Databases::Postgres | Databases::Both) {
        let url = std::env::var("CRM_IAM_BENCH_POSTGRES_URL").or_else(|_| std::env::var("CRM_IAM_TEST_POSTGRES_URL"));
        match url {
            Ok(url) => out.push(Backend::Postgres(url)),
            Err(_) if which == Databases::Both => {
                eprintln!("note: no CRM_IAM_BENCH_POSTGRES_URL: PostgreSQL skipped (see BENCHMARKS.md)")
            }
            Err(_) => anyhow::bail!("set CRM_IAM_BENCH_POSTGRES_URL to a PostgreSQL URL that may create databases"),
        }
    }
    Ok(out)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpus} CPUs ({model}), {mem:.0} GiB RAM")
}

fn main() -> anyhow::Result<()> {
    crm_iam::tune_allocator();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (opts, which) = match cli.command {
        Cmd::Serve { database_url } => return serve(database_url).await,
        Cmd::Access(o) => (o, "access"),
        Cmd::Audit(o) => (o, "audit"),
        Cmd::Auth(o) => (o, "auth"),
        Cmd::Startup(o) => (o, "startup"),
        Cmd::Outbox(o) => (o, "outbox"),
        Cmd::Scim(o) => (o, "scim"),
        Cmd::Envoy(o) => (o, "envoy"),
        Cmd::Sso(o) => (o, "sso"),
        Cmd::Floods(o) => (o, "floods"),
        Cmd::Transfer(o) => (o, "transfer"),
        Cmd::All(o) => (o, "all"),
    };
    println!("machine: {}", machine());
    println!(
        "load: {} concurrent requests over {} connections, {} s measured after {} s warm-up\n",
        opts.concurrency, opts.connections, opts.seconds, opts.warmup
    );
    let mut rows = Vec::new();
    for backend in backends(opts.databases)? {
        let label = backend.label();
        if matches!(which, "startup" | "all") {
            rows.extend(startup::run(label, async || backend.fresh().await).await?);
        }
        if matches!(which, "outbox" | "all") {
            // Eight writers: invitations are written one transaction each.
            let load = harness::Load { concurrency: opts.concurrency.min(8), ..opts.load() };
            match outbox::run(async || backend.fresh().await, label, load).await {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("[{label}] outbox failed: {e:#}");
                    let mut r = harness::Row::new("outbox benchmark", label);
                    r.value = format!("failed: {e}");
                    r.met = Some(false);
                    rows.push(r);
                }
            }
        }
        // Every benchmark gets a database of its own.
        for name in ["access", "audit", "auth", "transfer", "floods", "scim", "envoy", "sso"] {
            if which != name && which != "all" {
                continue;
            }
            let db = backend.fresh().await?;
            let result = match name {
                "access" => access::run(&db, opts.load()).await,
                "audit" => audit::run(&db, opts.load()).await,
                "auth" => auth::run(&db, opts.load()).await,
                "floods" => floods::run(&db).await,
                "scim" => scim::run(&db, opts.load()).await,
                "envoy" => envoy::run(&db, opts.load()).await,
                "sso" => sso::run(&db, opts.load()).await,
                _ => transfer::run(&db, opts.load()).await,
            };
            db.drop_now().await;
            match result {
                Ok(r) => rows.extend(r),
                // The other benchmarks still run; the table shows the failure.
                Err(e) => {
                    eprintln!("[{label}] {name} failed: {e:#}");
                    let mut r = harness::Row::new(&format!("{name} benchmark"), label);
                    r.value = format!("failed: {e}");
                    r.met = Some(false);
                    rows.push(r);
                }
            }
        }
    }
    harness::print_table(&rows);
    Ok(())
}
