//! Configuration: defaults, then a TOML file (`--config` / `CRM_IAM_CONFIG`), then `CRM_IAM_*`
//! environment variables, then command-line flags (a flag wins).

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every setting of the service. See the README's configuration table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address (`CRM_IAM_LISTEN`, `--listen`).
    pub listen: SocketAddr,
    /// `sqlite://FILE` or `postgres://…` (`CRM_IAM_DATABASE_URL`, `--database-url`).
    pub database_url: String,
    /// HTTP address serving Prometheus `/metrics` (`CRM_IAM_METRICS_LISTEN`, `--metrics-listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// The HTTP listener (`CRM_IAM_HTTP_LISTEN`, `--http-listen`): SCIM under `/scim/v2`; TLS
    /// with the gRPC listener's certificate when one is configured. Unset: off.
    pub http_listen: Option<SocketAddr>,
    /// The platform admin token (`CRM_IAM_ADMIN_TOKEN`). Unset: generated on first start and kept
    /// in `admin_token_file`.
    #[serde(skip_serializing)]
    pub admin_token: Option<SecretString>,
    /// Where a generated admin token is kept. Default: `crm-iam.admin-token` beside the SQLite
    /// file (in the working directory with PostgreSQL).
    pub admin_token_file: Option<PathBuf>,
    /// TLS on the gRPC listener: the server's certificate chain (PEM) (`--tls-cert`).
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM) (`--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: only clients with a certificate issued by these CAs (PEM) may connect
    /// (`--client-ca`; needs `tls_cert`).
    pub client_ca: Option<PathBuf>,
    /// `text` or `json` (`CRM_IAM_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Longest a request may run (callers' `grpc-timeout` shortens it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight calls may take to finish before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Database pool size.
    pub db_max_connections: u32,
    /// How long to wait for a database connection.
    #[serde(with = "humantime_serde")]
    pub db_connect_timeout: Duration,
    /// How often readiness re-checks the database.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// How often deleted users past their restore window are purged.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// How long idempotency keys are kept (at least 24 hours).
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// PostgreSQL: how often each replica re-reads the tenants' policy versions, the safety net
    /// behind LISTEN/NOTIFY (bounds how long another replica may answer with an old rule).
    #[serde(with = "humantime_serde")]
    pub policy_poll_interval: Duration,
    /// Passwords hashed at once (0 = one per CPU core).
    pub password_hash_threads: usize,
    /// Apply pending migrations when serving (`--no-migrate` turns it off).
    pub migrate: bool,
    /// How long audit events of the platform itself (not of a tenant) are kept.
    #[serde(with = "humantime_serde")]
    pub platform_audit_retention: Duration,
    /// The least audit retention a tenant may set (and the least retention keeps for any tenant).
    #[serde(with = "humantime_serde")]
    pub min_audit_retention: Duration,
    /// How often the audit retention job runs.
    #[serde(with = "humantime_serde")]
    pub audit_retention_interval: Duration,
    /// Records a transfer job moves per transaction (and lists in one `ownership.transferred` event).
    pub transfer_batch_size: u64,
    /// How long a replica's claim on a transfer job lasts without renewal: after a crash, another
    /// replica (or the restarted one) resumes the job this long after its last batch.
    #[serde(with = "humantime_serde")]
    pub transfer_lease: Duration,
    /// While Access.Check traffic is served, the transfer worker pauses this fraction of each
    /// batch's duration after it (0 = never yield; 1 = move records at most half of the time).
    pub transfer_yield_ratio: f64,
    /// How often an idle replica looks for transfer jobs created elsewhere or left by a crash.
    #[serde(with = "humantime_serde")]
    pub transfer_poll_interval: Duration,
    /// Testing aid: a random delay of up to this long before each commit (default 0).
    #[serde(with = "humantime_serde")]
    pub debug_commit_delay: Duration,
    /// Unary calls served at once; beyond it calls are refused at once (RESOURCE_EXHAUSTED).
    pub max_concurrent_requests: usize,
    /// `iss` of the access tokens (sibling services check it).
    pub token_issuer: String,
    /// `aud` of the access tokens (sibling services check it).
    pub token_audience: String,
    /// How old the signing key may get before a new one replaces it (0 = only by RotateSigningKey).
    #[serde(with = "humantime_serde")]
    pub signing_key_rotation: Duration,
    /// Algorithm of new signing keys: `EdDSA` (Ed25519, the default) or `ES256` (P-256). A change
    /// rotates to a key of the new algorithm, published ahead like any rotation.
    pub signing_algorithm: crate::service::auth::keys::KeyAlg,
    /// How long a rotated key is in the JWK Set before it signs (the JWK Set's `max-age` is half).
    #[serde(with = "humantime_serde")]
    pub signing_key_publish_ahead: Duration,
    /// The HTTP listener's public base URL (`https://iam.example.com`) for the discovery document's
    /// `jwks_uri`; unset: taken from the request's Host header.
    pub http_public_url: Option<String>,
    /// Identity providers (single sign-on) may have `http://` issuers (a provider on the local
    /// machine or network, for development and tests). Off: only https issuers, so a tenant
    /// administrator cannot point crm-iam's requests at plaintext internal services.
    pub sso_allow_http_issuers: bool,
    /// Envoy external authorization: the route table and the answer for unmatched routes.
    pub ext_authz: crate::service::envoy::ExtAuthzConfig,
    /// Failed logins per minute from one network address; beyond it, logins from that address are
    /// refused for a while (RESOURCE_EXHAUSTED). 0 = no limit.
    pub login_failures_per_address: u32,
    /// Named credentials of sibling services: `[[service_credentials]]` with `name`,
    /// `token_sha256` (hex SHA-256 of the service's token), `methods` (`Access.Check`, `Access.*`)
    /// and optionally `client_subject` (mutual TLS: the client certificate it must come with).
    pub service_credentials: Vec<crate::domain::caller::ServiceCredential>,
    /// The master key ring sealing secrets at rest (`CRM_IAM_MASTER_KEY`): base64 32-byte keys
    /// separated by commas, the sealing key first, older ones after it during a rotation.
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// A file holding the master key ring, one key per line (`CRM_IAM_MASTER_KEY_FILE`; a
    /// Kubernetes Secret). Default with SQLite and no `master_key`: `crm-iam.master-key` beside
    /// the database, generated on first start (mode 0600).
    pub master_key_file: Option<PathBuf>,
    /// Password hashes admitted at once (waiting or running); beyond it, calls that hash are
    /// refused at once with RESOURCE_EXHAUSTED. 0 = 32 per hashing thread.
    pub password_hash_queue: usize,
    /// Bytes the access cache may hold for what callers can make grow (owners of the records
    /// asked about, users of large tenants) (`CRM_IAM_ACCESS_CACHE_BUDGET`, e.g. `256MiB`).
    pub access_cache_budget: bytesize::ByteSize,
    /// Streams (StreamEvents, WatchTransfer) one caller may hold open at once.
    pub max_streams_per_caller: usize,
    /// The e-mail channel (`CRM_IAM_SMTP_URL`): `smtp://[user:pass@]host:port` (STARTTLS when
    /// the server offers it), `smtps://…` (implicit TLS); add `?tls=required` to refuse a server
    /// without STARTTLS. Unset = no e-mail channel (with no channel at all, nothing is queued and
    /// tokens go back to the caller).
    #[serde(skip_serializing)]
    pub smtp_url: Option<SecretString>,
    /// Sender address of e-mails (`CRM_IAM_SMTP_FROM`).
    pub smtp_from: String,
    /// How long one SMTP conversation may take.
    #[serde(with = "humantime_serde")]
    pub smtp_timeout: Duration,
    /// The webhook channel (`CRM_IAM_NOTIFICATION_WEBHOOK_URL`): the platform's notification
    /// service, `http(s)://…`, which receives every message of the tenants that choose the webhook
    /// channel as a JSON POST signed per the Standard Webhooks specification. Set by the operator
    /// only (tenants choose the channel, never the address). Unset = no webhook channel.
    #[serde(skip_serializing)]
    pub notification_webhook_url: Option<SecretString>,
    /// The signing secret of webhooks (`CRM_IAM_NOTIFICATION_WEBHOOK_SECRET`): `whsec_` and the
    /// base64 of 24 to 64 random bytes, as the receiver's Standard Webhooks library expects it.
    #[serde(skip_serializing)]
    pub notification_webhook_secret: Option<SecretString>,
    /// How long one webhook delivery (connect, send, answer) may take.
    #[serde(with = "humantime_serde")]
    pub notification_webhook_timeout: Duration,
    /// Link base of tenants that set none; `{tenant}` becomes the tenant id.
    pub notification_link_base: String,
    /// The first retry of a failed delivery waits this long; each next one twice as long (with
    /// jitter), at most `notification_retry_max`.
    #[serde(with = "humantime_serde")]
    pub notification_retry_first: Duration,
    #[serde(with = "humantime_serde")]
    pub notification_retry_max: Duration,
    /// A message not delivered within this time of being queued becomes FAILED (a message with
    /// a token also when the token expires).
    #[serde(with = "humantime_serde")]
    pub notification_retry_period: Duration,
    /// How often an idle replica looks for messages queued by others or left by a crash.
    #[serde(with = "humantime_serde")]
    pub notification_poll_interval: Duration,
    /// RequestPasswordReset calls per minute from one network address (0 = no limit).
    pub password_reset_requests_per_address: u32,
    /// Reset messages one account receives per hour at most, however many are requested.
    pub password_reset_messages_per_account: u32,
    /// Streams all callers of one tenant may hold open at once.
    pub max_streams_per_tenant: usize,
    /// Proxies (CIDR ranges, e.g. `10.0.0.0/8`) whose `x-forwarded-for` metadata names the client:
    /// logins through them count against the client's address, not the proxy's. Empty: the TCP
    /// peer is the client (the header is ignored, so nobody can choose their address).
    pub trusted_proxies: Vec<String>,
    /// A plaintext listener serving only `grpc.health.v1.Health`, for Kubernetes gRPC probes
    /// when the main listener speaks TLS (probes cannot) (`CRM_IAM_HEALTH_LISTEN`, `--health-listen`).
    pub health_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50051".parse().expect("valid default address"),
            database_url: "sqlite://crm-iam.db".into(),
            metrics_listen: None,
            http_listen: None,
            admin_token: None,
            admin_token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            log_format: LogFormat::Text,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            db_max_connections: 16,
            db_connect_timeout: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(5),
            purge_interval: Duration::from_secs(600),
            idempotency_retention: Duration::from_secs(48 * 3600),
            policy_poll_interval: Duration::from_secs(1),
            password_hash_threads: 0,
            migrate: true,
            platform_audit_retention: Duration::from_secs(400 * 24 * 3600),
            min_audit_retention: crate::service::audit::DEFAULT_MIN_RETENTION,
            audit_retention_interval: Duration::from_secs(3600),
            transfer_batch_size: 2000,
            transfer_lease: Duration::from_secs(30),
            transfer_poll_interval: Duration::from_secs(1),
            transfer_yield_ratio: 1.0,
            debug_commit_delay: Duration::ZERO,
            max_concurrent_requests: 1000,
            token_issuer: "crm-iam".into(),
            token_audience: "crm".into(),
            signing_key_rotation: Duration::from_secs(30 * 24 * 3600),
            signing_algorithm: Default::default(),
            signing_key_publish_ahead: Duration::from_secs(600),
            http_public_url: None,
            sso_allow_http_issuers: false,
            ext_authz: Default::default(),
            login_failures_per_address: 30,
            service_credentials: Vec::new(),
            master_key: None,
            master_key_file: None,
            password_hash_queue: 0,
            health_listen: None,
            trusted_proxies: Vec::new(),
            max_streams_per_caller: 8,
            smtp_url: None,
            smtp_from: "crm-iam@localhost".into(),
            smtp_timeout: Duration::from_secs(15),
            notification_webhook_url: None,
            notification_webhook_secret: None,
            notification_webhook_timeout: Duration::from_secs(10),
            notification_link_base: "https://{tenant}.crm.example".into(),
            notification_retry_first: Duration::from_secs(10),
            notification_retry_max: Duration::from_secs(600),
            notification_retry_period: Duration::from_secs(24 * 3600),
            notification_poll_interval: Duration::from_secs(2),
            password_reset_requests_per_address: 10,
            password_reset_messages_per_account: 3,
            max_streams_per_tenant: 100,
            access_cache_budget: bytesize::ByteSize::b(crate::service::access::DEFAULT_BUDGET),
        }
    }
}

/// The database URL with any password replaced, for logs (parsed with the `url` crate; a URL it
/// cannot parse is shown only when it holds no `@`, so a password is never printed).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => raw.to_owned(),
        Err(_) if raw.contains('@') => "<a database URL that does not parse>".to_owned(),
        Err(_) => raw.to_owned(),
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("metrics_listen", &self.metrics_listen)
            .field("http_listen", &self.http_listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("admin_token_file", &self.admin_token_file)
            .field("master_key", &self.master_key.as_ref().map(|_| "<set>"))
            .field("master_key_file", &self.master_key_file)
            .field("log_format", &self.log_format)
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("db_max_connections", &self.db_max_connections)
            .finish_non_exhaustive()
    }
}

/// Values given on the command line (only those present override).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
}

impl Config {
    /// Loads defaults ← file ← environment ← flags.
    pub fn load(file: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        let figment = figment
            .merge(Env::prefixed("CRM_IAM_").ignore(&["CONFIG", "TEST_POSTGRES_URL"]))
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract()?;
        anyhow::ensure!(
            (1..=10_000).contains(&config.transfer_batch_size),
            "transfer_batch_size must be between 1 and 10000"
        );
        anyhow::ensure!(config.transfer_lease >= Duration::from_secs(1), "transfer_lease must be at least 1s");
        anyhow::ensure!(
            config.tls_cert.is_some() == config.tls_key.is_some(),
            "tls_cert and tls_key go together: give both or neither"
        );
        anyhow::ensure!(
            config.client_ca.is_none() || config.tls_cert.is_some(),
            "client_ca (mutual TLS) needs tls_cert and tls_key"
        );
        anyhow::ensure!(
            config.signing_key_rotation.is_zero() || config.signing_key_rotation >= Duration::from_secs(2 * 3600),
            "signing_key_rotation must be 0 (off) or at least 2h (tokens live up to 1h)"
        );
        anyhow::ensure!(
            (Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&config.signing_key_publish_ahead),
            "signing_key_publish_ahead must be between 1s and 24h (at least 2m with several replicas)"
        );
        config.ext_authz.compile().map_err(|e| anyhow::anyhow!("ext_authz: {e}"))?;
        anyhow::ensure!(
            config.idempotency_retention >= Duration::from_secs(24 * 3600),
            "idempotency_retention must be at least 24h"
        );
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/iam"), "postgres://app:***@db:5432/iam");
        assert_eq!(redact_url("sqlite://crm-iam.db"), "sqlite://crm-iam.db");
        assert_eq!(redact_url("postgres://app@db/iam"), "postgres://app@db/iam", "no password, nothing to hide");
        assert_eq!(
            redact_url("postgres://app:p%40ss@db/iam?sslmode=require"),
            "postgres://app:***@db/iam?sslmode=require"
        );
        assert!(
            !redact_url("postgres://app:s3cret@[db/iam").contains("s3cret"),
            "an unparseable URL hides its password too"
        );
        let c = Config { database_url: "postgres://app:s3cret@db/iam".into(), ..Default::default() };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7000\"\nrequest_timeout = \"5s\"\n").unwrap();
        let c = Config::load(Some(&file), Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        let c = Config::load(
            Some(&file),
            Overrides { listen: Some("127.0.0.1:7001".parse().unwrap()), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7001);
    }
}
