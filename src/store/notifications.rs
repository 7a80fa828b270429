//! Commits of other replicas, heard through PostgreSQL's LISTEN/NOTIFY on one connection.

use sea_orm::sqlx::{self, postgres::PgListener};

use super::{Db, PolicyChange, audit::AUDIT_CHANNEL, db::POLICY_CHANNEL};

/// What another replica committed.
#[derive(Debug)]
pub enum Notice {
    /// Access rules changed.
    Policy(PolicyChange),
    /// Audit events were appended.
    Audit,
    /// A policy notice this version cannot read.
    Malformed(String),
}

/// A LISTEN connection to both channels.
pub struct Listener(PgListener);

impl Listener {
    /// Connects and listens (PostgreSQL only).
    pub async fn connect(db: &Db) -> Result<Listener, sqlx::Error> {
        let pool = db.conn().get_postgres_connection_pool().clone();
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen_all([POLICY_CHANNEL, AUDIT_CHANNEL]).await?;
        Ok(Listener(listener))
    }

    /// The next notice; None when the connection was lost (notices may be missing: start over).
    pub async fn next(&mut self) -> Option<Notice> {
        match self.0.try_recv().await {
            Ok(Some(n)) if n.channel() == AUDIT_CHANNEL => Some(Notice::Audit),
            Ok(Some(n)) => Some(match PolicyChange::parse(n.payload()) {
                Some(change) => Notice::Policy(change),
                None => Notice::Malformed(n.payload().to_owned()),
            }),
            Ok(None) | Err(_) => None,
        }
    }
}
