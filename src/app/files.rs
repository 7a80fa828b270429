//! Secrets the server keeps in files beside an embedded database: the platform admin token and the
//! master key ring (each generated on first start, mode 0600), unless configured.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;

/// The admin token: from the configuration, else from (or newly into) the token file.
pub(super) fn admin_token(config: &Config) -> anyhow::Result<(SecretString, Option<PathBuf>)> {
    if let Some(token) = &config.admin_token {
        anyhow::ensure!(token.expose_secret().len() >= 16, "CRM_IAM_ADMIN_TOKEN must be at least 16 characters");
        return Ok((token.clone(), None));
    }
    let path = config.admin_token_file.clone().unwrap_or_else(|| default_token_path(&config.database_url));
    if path.exists() {
        let token = std::fs::read_to_string(&path)?.trim().to_owned();
        anyhow::ensure!(token.len() >= 16, "admin token file {} is empty or too short", path.display());
        tracing::info!(path = %path.display(), "platform admin token read from file");
        return Ok((SecretString::from(token), Some(path)));
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated a platform admin token and stored it in this file (mode 0600)");
    Ok((SecretString::from(token), Some(path)))
}

/// The master key ring: from the configuration (`master_key`, else `master_key_file`), else, on
/// SQLite only, from (or newly into) `crm-iam.master-key` beside the database. PostgreSQL serves
/// several replicas, which must share one key: it has to be configured.
pub fn master_keys(config: &Config) -> anyhow::Result<crate::secrets::MasterKeys> {
    use crate::secrets::MasterKeys;
    if let Some(ring) = &config.master_key {
        return MasterKeys::parse(ring.expose_secret()).map_err(|e| anyhow::anyhow!("CRM_IAM_MASTER_KEY: {e:#}"));
    }
    if let Some(path) = &config.master_key_file {
        return MasterKeys::from_file(path);
    }
    anyhow::ensure!(
        config.database_url.starts_with("sqlite:"),
        "PostgreSQL needs a master key (secrets at rest are sealed with it, and every replica must use the same \
         one): set CRM_IAM_MASTER_KEY or CRM_IAM_MASTER_KEY_FILE (generate one with: crm-iam keys generate-master)"
    );
    let path = default_file_path(&config.database_url, "crm-iam.master-key");
    if path.exists() {
        tracing::info!(path = %path.display(), "master key read from file");
        return MasterKeys::from_file(&path);
    }
    let key = MasterKeys::generate();
    write_private(&path, key.expose_secret())?;
    tracing::info!(
        path = %path.display(),
        "generated the master key that seals secrets at rest and stored it in this file (mode 0600): back it up apart from the database"
    );
    MasterKeys::parse(key.expose_secret())
}

fn default_token_path(database_url: &str) -> PathBuf {
    default_file_path(database_url, "crm-iam.admin-token")
}

/// A file beside the SQLite database (in the working directory otherwise).
fn default_file_path(database_url: &str, file: &str) -> PathBuf {
    let Some(rest) = database_url.strip_prefix("sqlite:") else {
        return PathBuf::from(file);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(file),
        _ => PathBuf::from(file),
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// The listener's TLS settings, read from the configured PEM files (None: plaintext).
pub fn tls_config(config: &Config) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use anyhow::Context;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let read = |p: &std::path::PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?));
    if let Some(ca) = &config.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    tracing::info!(mutual = config.client_ca.is_some(), "TLS on the gRPC listener");
    Ok(Some(tls))
}
