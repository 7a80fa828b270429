//! `crm-iam backup` / `restore`: file-level commands for the embedded SQLite database (they do not
//! talk to the server). A backup is a consistent snapshot taken while the server keeps serving
//! (`VACUUM INTO` reads one transaction's view of the database); a restore puts a backup in place
//! of the database file while the server is stopped. PostgreSQL is backed up with its own tools
//! (`pg_dump`; see the README).

use std::path::{Path, PathBuf};

use sea_orm::{ConnectionTrait, Database, Statement};

/// The file of a `sqlite://` URL, or an error naming what to do for PostgreSQL.
pub fn sqlite_path(database_url: &str) -> anyhow::Result<PathBuf> {
    if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        anyhow::bail!(
            "backup and restore work on the embedded SQLite database; for PostgreSQL use pg_dump / pg_restore \
             (see the README, \"Backup and restore\")"
        );
    }
    let rest =
        database_url.strip_prefix("sqlite:").ok_or_else(|| anyhow::anyhow!("not a database URL: {database_url:?}"))?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    anyhow::ensure!(!path.is_empty() && path != ":memory:", "an in-memory database cannot be backed up");
    Ok(PathBuf::from(path))
}

async fn integrity(path: &Path) -> anyhow::Result<()> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let db = Database::connect(&url).await.map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(backend, "PRAGMA integrity_check"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("integrity check returned nothing"))?;
    let verdict: String = row.try_get_by_index(0)?;
    anyhow::ensure!(verdict == "ok", "{} failed its integrity check: {verdict}", path.display());
    let migrations = db
        .query_one_raw(Statement::from_string(backend, "SELECT COUNT(*) FROM seaql_migrations"))
        .await
        .map_err(|_| anyhow::anyhow!("{} is not a crm-iam database (no migration table)", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("no migration rows"))?;
    let n: i64 = migrations.try_get_by_index(0)?;
    anyhow::ensure!(n > 0, "{} is not a crm-iam database (no migrations applied)", path.display());
    db.close().await?;
    Ok(())
}

/// Writes a consistent snapshot of the database to `to` (which must not exist) and checks it.
pub async fn backup(database_url: &str, to: &Path) -> anyhow::Result<u64> {
    let from = sqlite_path(database_url)?;
    anyhow::ensure!(from.exists(), "database {} does not exist", from.display());
    anyhow::ensure!(!to.exists(), "{} exists: choose a new file (a backup never overwrites)", to.display());
    let db = Database::connect(format!("sqlite://{}", from.display()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", from.display()))?;
    let target = to.to_str().ok_or_else(|| anyhow::anyhow!("the backup path must be valid UTF-8"))?;
    // The path is a string literal in SQL: double any single quote.
    let sql = format!("VACUUM INTO '{}'", target.replace('\'', "''"));
    db.execute_unprepared(&sql).await.map_err(|e| anyhow::anyhow!("backup failed: {e}"))?;
    db.close().await?;
    integrity(to).await?;
    Ok(std::fs::metadata(to)?.len())
}

/// Replaces the database file with a backup (the server must be stopped). Refuses to overwrite an
/// existing database unless `force`.
pub async fn restore(database_url: &str, from: &Path, force: bool) -> anyhow::Result<()> {
    let target = sqlite_path(database_url)?;
    anyhow::ensure!(from.exists(), "backup {} does not exist", from.display());
    integrity(from).await?;
    anyhow::ensure!(
        force || !target.exists(),
        "{} exists: stop the server and pass --force to replace it with the backup",
        target.display()
    );
    // Copy beside the target, then rename: a crash leaves either the old or the new database.
    let tmp = target.with_extension("restore-tmp");
    std::fs::copy(from, &tmp).map_err(|e| anyhow::anyhow!("cannot copy the backup: {e}"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let stale = PathBuf::from(format!("{}{suffix}", target.display()));
        if stale.exists() {
            std::fs::remove_file(&stale)?;
        }
    }
    std::fs::rename(&tmp, &target)?;
    Ok(())
}
