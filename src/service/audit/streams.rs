//! Listing the audit trail, the streams (replay from the database, then the hub), and retention.

use super::*;
use crate::{
    domain::{access::Right, caller::Caller},
    service::{Target, require_platform},
};

impl Iam {
    /// A tenant's trail: its administrators (`settings.view` at tenant scope); everything: the
    /// platform.
    async fn may_read_audit(&self, caller: &Caller, scope: &EventScope) -> Result<()> {
        match scope {
            EventScope::All => require_platform(caller),
            EventScope::Tenant(t) => self.authorize(caller, t, Right::SETTINGS_VIEW, Target::Tenant).await,
        }
    }

    /// `AuditEvents.ListEvents`.
    pub async fn list_events(&self, caller: &Caller, q: &ListEvents) -> Result<Page<AuditEvent>> {
        self.may_read_audit(caller, &q.scope).await?;
        if let EventScope::Tenant(t) = &q.scope {
            self.tenant_settings(t).await?;
        }
        let rows = audit::page(self.db.conn(), &q.scope, &q.filter, q.newest_first, q.after, q.limit + 1).await?;
        Ok(Page::from_rows(rows, q.limit))
    }

    /// `AuditEvents.StreamEvents`: validates the start, then streams from a task of its own,
    /// holding a place in the stream caps. A user's stream ends when their session or rights do
    /// (checked every [`ACCESS_RECHECK`]), every stream when the server stops.
    pub async fn stream_events(&self, caller: &Caller, q: StreamEvents) -> Result<ReceiverStream<Result<StreamItem>>> {
        let StreamEvents { scope, filter, start, heartbeat } = q;
        self.may_read_audit(caller, &scope).await?;
        let tenant = match &scope {
            EventScope::Tenant(t) => t.as_str(),
            EventScope::All => "",
        };
        let slot = self.audit.open_stream(caller, tenant)?;
        let user = caller.user().ok().cloned();
        let stop = self.stop.clone();
        if let EventScope::Tenant(t) = &scope {
            self.tenant_settings(t).await?;
        }
        let conn = self.db.conn();
        let head = audit::max_seq(conn).await?;
        let cursor = match start {
            StreamStart::AfterCursor(c) => {
                if c < audit::watermark(conn, &scope).await? {
                    return Err(out_of_range());
                }
                if c > head {
                    return Err(Error::new(
                        Kind::OutOfRange,
                        Reason::CursorExpired,
                        "the cursor is ahead of this server's audit stream (from another installation?): restart from since_time or from now",
                    ));
                }
                c
            }
            StreamStart::SinceTime(t) => audit::position_at(conn, &scope, t, head).await?,
            StreamStart::Now => head,
        };
        let (tx, rx) = mpsc::channel(64);
        let iam = self.clone();
        self.audit.subscribers.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _slot = slot;
            let hub = iam.audit.clone();
            if let Err(e) = iam.follow(scope, filter, cursor, heartbeat, user, &tx, stop).await {
                let _ = tx.send(Err(e)).await;
            }
            hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Whether a user's stream may go on: the session open, and `right` at TENANT scope
    /// (what opening it needed) still held.
    pub async fn stream_allowed(
        &self,
        user: &crate::domain::caller::UserCaller,
        tenant: &str,
        right: crate::domain::access::Right,
    ) -> Result<()> {
        let session = self.session_facts(&user.tenant_id, user.session_id).await?;
        if !session.is_some_and(|f| f.user_id == user.user_id && f.active_at(now())) {
            return Err(Error::unauthenticated("the session of this stream has ended: log in again"));
        }
        let caller = crate::domain::caller::Caller::User(user.clone());
        self.authorize(&caller, tenant, right, crate::service::Target::Tenant).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn follow(
        &self,
        scope: EventScope,
        filter: EventFilter,
        mut cursor: i64,
        heartbeat: Duration,
        user: Option<crate::domain::caller::UserCaller>,
        tx: &mpsc::Sender<Result<StreamItem>>,
        stop: CancellationToken,
    ) -> Result<()> {
        let hub = self.audit.clone();
        let mut head_rx = hub.head.subscribe();
        let mut last_sent = tokio::time::Instant::now();
        let mut next_check = tokio::time::Instant::now() + ACCESS_RECHECK;
        loop {
            if tx.is_closed() || stop.is_cancelled() {
                return Ok(());
            }
            if let Some(u) = &user
                && tokio::time::Instant::now() >= next_check
            {
                let EventScope::Tenant(tenant) = &scope else {
                    return Err(Error::permission_denied("not allowed: the whole trail is the platform's"));
                };
                self.stream_allowed(u, tenant, crate::domain::access::Right::SETTINGS_VIEW).await?;
                next_check = tokio::time::Instant::now() + ACCESS_RECHECK;
            }
            if last_sent.elapsed() >= heartbeat {
                if tx.send(Ok(StreamItem::Heartbeat(cursor))).await.is_err() {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
            }
            // Caught up enough to be served from memory?
            let (events, through) = match hub.read(cursor, &scope, &filter, PAGE as usize) {
                Some(found) => found,
                None => {
                    // Behind the ring: from the database, checking retention has not passed us;
                    // one of a few shared permits per page, so replays take turns.
                    let _turn = hub.replay.acquire().await.map_err(Error::internal)?;
                    let conn = self.db.conn();
                    if cursor < audit::watermark(conn, &scope).await? {
                        return Err(out_of_range());
                    }
                    let max = audit::max_seq(conn).await?;
                    let events = audit::range(conn, &scope, &filter, cursor, max, PAGE).await?;
                    let through =
                        if (events.len() as u64) < PAGE { max } else { events.last().map(|e| e.seq).unwrap_or(max) };
                    (events.into_iter().map(Arc::new).collect(), through)
                }
            };
            let progressed = through > cursor;
            for e in events {
                let seq = e.seq;
                if tx.send(Ok(StreamItem::Event(e))).await.is_err() {
                    return Ok(());
                }
                cursor = seq;
                last_sent = tokio::time::Instant::now();
            }
            cursor = cursor.max(through);
            if progressed && hub.head() > cursor {
                continue;
            }
            // Caught up: wait for news, a heartbeat deadline, an access re-check, or the end.
            let deadline = (last_sent + heartbeat).min(if user.is_some() { next_check } else { last_sent + heartbeat });
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tx.closed() => return Ok(()),
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Deletes audit events past their retention, in small batches; returns how many.
    pub async fn enforce_audit_retention(&self, platform_retention: Duration) -> Result<u64> {
        let ctx = RequestContext::system("audit-retention");
        let mut scopes: Vec<(String, u64)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = tenants::list(self.db.conn(), after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.tenant_id.clone());
            let floor = self.audit.min_retention_secs();
            scopes.extend(page.iter().map(|t| (t.tenant_id.clone(), t.settings.audit_retention_secs.max(floor))));
        }
        scopes.push((String::new(), platform_retention.as_secs()));
        let mut total = 0;
        for (scope, secs) in scopes {
            let cutoff = now() - chrono::Duration::seconds(secs as i64);
            loop {
                let n = self.db.write(&ctx, async |tx| audit::purge_before(tx, &scope, cutoff, PAGE).await).await?;
                total += n;
                if n < PAGE {
                    break;
                }
            }
        }
        Ok(total)
    }
}
