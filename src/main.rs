//! The `crm-iam` binary: wires configuration → telemetry → application.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

/// mimalloc: faster than glibc's allocator for the many small, short-lived allocations of
/// request handling (measured in BENCHMARKS.md), and it returns memory to the OS promptly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crm_iam::{
    app::{self, Application},
    config::{Config, Overrides},
    telemetry,
};

/// Identity and access service of the CRM platform: tenants, users, departments, roles,
/// access checks, ownership transfer, audit and authentication over gRPC.
#[derive(Parser)]
#[command(name = "crm-iam", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (migrating the database first unless --no-migrate). With no flags: embedded
    /// SQLite file ./crm-iam.db, listening on 127.0.0.1:50051.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit (for a Kubernetes init container or job).
    Migrate(CommonArgs),
    /// Audit trail commands (they talk to a running server over gRPC).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bulk user commands: CSV import and export (they talk to a running server over gRPC).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Write a consistent snapshot of the SQLite database to FILE while the server keeps serving
    /// (works on the database file, not through the server; PostgreSQL: use pg_dump).
    Backup(BackupArgs),
    /// Replace the SQLite database with a backup (works on the files; stop the server first).
    Restore(RestoreArgs),
    /// The master key that seals secrets at rest (TOTP secrets, token signing keys).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for CRM_IAM_MASTER_KEY or a key file.
    GenerateMaster,
    /// Seal every stored secret again under the first key of the configured ring
    /// (CRM_IAM_MASTER_KEY=NEW,OLD or a key file with NEW on the first line). Safe while replicas
    /// serve; afterwards the old key can be dropped from the ring.
    RotateMaster(CommonArgs),
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Onboard a company from CSV: one INVITED user per row. Columns (header row; only email is
    /// required): email, given_name, family_name, display_name, phone, position, employee_number,
    /// department (by name), hire_date (YYYY-MM-DD), roles (role names separated by ';').
    /// Every row is checked first; bad rows are reported with their line and nothing is written
    /// for them. Users whose email exists already are skipped, so a re-run creates nothing twice.
    Import(ImportArgs),
    /// Write every user of a tenant as CSV (the import columns plus user_id and state) to stdout
    /// or --out.
    Export(ExportArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// The server, for example http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// File holding the token (default ./crm-iam.admin-token) when CRM_IAM_TOKEN and
    /// CRM_IAM_ADMIN_TOKEN are unset. A tenant administrator's access token works too.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The tenant to import into.
    #[arg(long)]
    tenant: String,
    /// The CSV file.
    file: PathBuf,
    /// Check every row and report, but create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Create departments named in the file that do not exist yet (otherwise such rows are errors).
    #[arg(long)]
    create_departments: bool,
    /// Write email,user_id,invitation_token of the invited users to this file (mode 0600), for
    /// the mail that invites them. Tokens are returned only once.
    #[arg(long, value_name = "FILE")]
    invitations: Option<PathBuf>,
    /// Rows sent at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The tenant to export.
    #[arg(long)]
    tenant: String,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BackupArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The backup file to write (must not exist).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The backup file to restore.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Replace an existing database (stop the server first).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Follow the audit stream and print one JSON object per event on stdout: the reference
    /// sidecar for feeding a SIEM. With --cursor-file it stores the last cursor after every
    /// event and heartbeat and resumes from it after a restart or a lost connection, so no event
    /// is skipped. Token: CRM_IAM_TOKEN, CRM_IAM_ADMIN_TOKEN or --token-file.
    Tail(TailArgs),
}

#[derive(Args)]
struct TailArgs {
    /// The server, for example http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Only this tenant's events (default: every tenant; needs the platform token).
    #[arg(long)]
    tenant: Option<String>,
    /// Where to keep the last cursor (read at start, written after each event and heartbeat).
    #[arg(long, value_name = "FILE")]
    cursor_file: Option<PathBuf>,
    /// Without a stored cursor: start with the oldest event kept instead of from now.
    #[arg(long)]
    from_beginning: bool,
    /// Only actions starting with this (repeatable), for example --action-prefix auth.
    #[arg(long = "action-prefix", value_name = "PREFIX")]
    action_prefixes: Vec<String>,
    /// Only targets of this kind (repeatable), for example --target-kind user.
    #[arg(long = "target-kind", value_name = "KIND")]
    target_kinds: Vec<String>,
    /// Seconds between heartbeats while nothing happens.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// File holding the token (default ./crm-iam.admin-token) when no token is in the environment.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args)]
struct CommonArgs {
    /// Configuration file (TOML). Env: CRM_IAM_CONFIG.
    #[arg(long, env = "CRM_IAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database: sqlite://FILE or postgres://USER@HOST/DB. Env: CRM_IAM_DATABASE_URL.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// gRPC listen address. Env: CRM_IAM_LISTEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics. Env: CRM_IAM_METRICS_LISTEN.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve HTTP at ADDR: SCIM provisioning under /scim/v2 (TLS with the gRPC certificate when
    /// one is set). Env: CRM_IAM_HTTP_LISTEN.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Do not apply pending migrations on start.
    #[arg(long)]
    no_migrate: bool,
    /// Serve only the gRPC health service, in plaintext, at ADDR (Kubernetes probes when the main
    /// listener speaks TLS). Env: CRM_IAM_HEALTH_LISTEN.
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Serve gRPC over TLS with this certificate chain (PEM). Env: CRM_IAM_TLS_CERT.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM). Env: CRM_IAM_TLS_KEY.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients whose certificate these CAs issued (PEM). Env: CRM_IAM_CLIENT_CA.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

fn load(common: &CommonArgs, mut overrides: Overrides) -> anyhow::Result<Config> {
    overrides.database_url = common.database_url.clone();
    Config::load(common.config.as_deref(), overrides)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let overrides = Overrides {
                listen: args.listen,
                metrics_listen: args.metrics_listen,
                http_listen: args.http_listen,
                migrate: args.no_migrate.then_some(false),
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                client_ca: args.client_ca,
                health_listen: args.health_listen,
                ..Default::default()
            };
            let config = load(&args.common, overrides)?;
            let _telemetry = telemetry::init(config.log_format)?;
            tracing::debug!(?config, "configuration");
            let app = Application::build(config).await?;
            app.run_until_signal().await
        }
        Command::Audit(AuditCommand::Tail(args)) => {
            let _telemetry = telemetry::init(crm_iam::config::LogFormat::Text)?;
            let opts = crm_iam::cli::audit_tail::TailOptions {
                token: crm_iam::cli::token(args.token_file.as_deref())?,
                server: args.server,
                tenant: args.tenant,
                cursor_file: args.cursor_file,
                from_beginning: args.from_beginning,
                action_prefixes: args.action_prefixes,
                target_kinds: args.target_kinds,
                heartbeat: std::time::Duration::from_secs(args.heartbeat_seconds.clamp(1, 300)),
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                app::wait_for_signal().await;
                on_signal.cancel();
            });
            let mut stdout = std::io::stdout();
            crm_iam::cli::audit_tail::tail(opts, &mut stdout, stop).await
        }
        Command::Users(UsersCommand::Import(args)) => {
            let token = crm_iam::cli::token(args.client.token_file.as_deref())?;
            let (users, roles) = crm_iam::cli::users::clients(&args.client.server, &token).await?;
            let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = crm_iam::cli::users::import(
                users,
                roles,
                crm_iam::cli::users::ImportOptions {
                    tenant: args.tenant,
                    file: args.file,
                    dry_run: args.dry_run,
                    create_departments: args.create_departments,
                    concurrency: args.concurrency,
                    invitations: args.invitations,
                    progress,
                },
            )
            .await?;
            for (line, email, problem) in &report.errors {
                eprintln!("line {line} ({email}): {problem}");
            }
            let verb = if args.dry_run { "would be created" } else { "created" };
            println!(
                "{} rows: {} {verb}, {} already present, {} with errors",
                report.rows,
                report.created,
                report.existing,
                report.errors.len()
            );
            anyhow::ensure!(report.errors.is_empty(), "{} rows were not imported (listed above)", report.errors.len());
            Ok(())
        }
        Command::Users(UsersCommand::Export(args)) => {
            let token = crm_iam::cli::token(args.client.token_file.as_deref())?;
            let (users, roles) = crm_iam::cli::users::clients(&args.client.server, &token).await?;
            let n = match &args.out {
                Some(path) => {
                    let mut f = std::fs::File::create(path)?;
                    crm_iam::cli::users::export(users, roles, &args.tenant, &mut f).await?
                }
                None => crm_iam::cli::users::export(users, roles, &args.tenant, &mut std::io::stdout()).await?,
            };
            eprintln!("{n} users exported");
            Ok(())
        }
        Command::Backup(args) => {
            let config = load(&args.common, Overrides::default())?;
            let bytes = crm_iam::cli::backup::backup(&config.database_url, &args.to).await?;
            println!("backup written to {} ({bytes} bytes, integrity checked)", args.to.display());
            Ok(())
        }
        Command::Restore(args) => {
            let config = load(&args.common, Overrides::default())?;
            crm_iam::cli::backup::restore(&config.database_url, &args.from, args.force).await?;
            println!("restored {} into {}; start the server to use it", args.from.display(), config.database_url);
            Ok(())
        }
        Command::Keys(KeysCommand::GenerateMaster) => {
            println!("{}", secrecy::ExposeSecret::expose_secret(&crm_iam::secrets::MasterKeys::generate()));
            Ok(())
        }
        Command::Keys(KeysCommand::RotateMaster(common)) => {
            let config = load(&common, Overrides::default())?;
            let _telemetry = telemetry::init(config.log_format)?;
            let done = crm_iam::cli::keys::rotate_master(&config).await?;
            println!(
                "sealed again under the current master key: {} TOTP secrets, {} identity-provider secrets, {} signing keys",
                done.totp_secrets, done.idp_secrets, done.signing_keys
            );
            Ok(())
        }
        Command::Migrate(common) => {
            let config = load(&common, Overrides::default())?;
            let _telemetry = telemetry::init(config.log_format)?;
            let db = app::connect(&config).await?;
            db.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    crm_iam::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crm-iam: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main())
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "crm-iam failed");
            eprintln!("crm-iam: {e:#}");
            ExitCode::FAILURE
        }
    }
}
