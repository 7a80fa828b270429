//! Notifications: the transactional outbox and its delivery worker.
//!
//! A change that needs a message calls [`Iam::queue_notification`] inside its `Db::write`
//! transaction: the message is a row of `notifications` that commits, or vanishes, with the
//! change. A token the message carries (invitation, password reset) is stored sealed under the
//! master key, bound to the row, and erased when the message is sent, fails or expires.
//!
//! The worker ([`run_worker`], one per replica) claims due rows by lease (one UPDATE: exactly one
//! replica wins each), renders the built-in template of the user's language
//! (`templates.rs`), sends it and records the outcome. A crash between commit and delivery
//! leaves the row PENDING, and it is sent after the lease runs out, by any replica. The message
//! id is stable (`Message-ID: <notification_id@crm-iam>`), so a receiver can drop the rare
//! repeat (a replica that crashed after the SMTP server accepted the message and before the row
//! was marked). Failed attempts retry with exponential backoff and jitter until
//! `notification_retry_period` (or the token's expiry); then the message becomes FAILED, with a
//! `notification.failed` audit event and a metric.

pub mod templates;

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Call, Iam, Page, Target};
use crate::{
    domain::{
        Error, Reason, Result,
        access::Right,
        audit::{AuditRecord, RequestContext},
        caller::Caller,
        notification::{
            Channel, Locale, Notification, NotificationFilter, NotificationKind, NotificationState, RetrySchedule,
        },
        now,
        tenant::Tenant,
        user::IssuedToken,
    },
    secrets::Slot,
    store::{
        Tx,
        outbox::{self, Attempt, NewNotification},
        users,
    },
};

/// A page of a tenant's notifications, newest first.
pub struct ListNotifications {
    pub tenant_id: String,
    pub filter: NotificationFilter,
    pub before: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// A FAILED notification to queue again.
pub struct RetryNotification {
    pub tenant_id: String,
    pub notification_id: Uuid,
}

/// How messages are delivered (from the configuration).
#[derive(Clone)]
pub struct OutboxSettings {
    /// `smtp://…` / `smtps://…`; None = no e-mail channel (nothing is queued).
    pub smtp_url: Option<secrecy::SecretString>,
    pub smtp_from: String,
    pub smtp_timeout: Duration,
    /// `{tenant}` is replaced by the tenant id.
    pub link_base: String,
    pub retry: RetrySchedule,
    pub retry_period: Duration,
    pub poll_interval: Duration,
    /// How long a replica's claim on a message lasts (a crashed sender's messages wait this long).
    pub lease: Duration,
    /// Reset messages an account receives per hour at most (RequestPasswordReset).
    pub resets_per_account_hour: u32,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            smtp_url: None,
            smtp_from: "crm-iam@localhost".into(),
            smtp_timeout: Duration::from_secs(15),
            link_base: "https://{tenant}.crm.example".into(),
            retry: RetrySchedule { first: Duration::from_secs(10), max: Duration::from_secs(600) },
            retry_period: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(2),
            lease: Duration::from_secs(60),
            resets_per_account_hour: 3,
        }
    }
}

/// The outbox of this replica: its settings and the SMTP transport (a pool).
#[derive(Default)]
pub struct Outbox {
    settings: OutboxSettings,
    mailer: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
}

impl Outbox {
    pub fn new(settings: OutboxSettings) -> anyhow::Result<Outbox> {
        let mailer = match &settings.smtp_url {
            None => None,
            Some(url) => {
                let mut url =
                    url::Url::parse(url.expose_secret()).map_err(|e| anyhow::anyhow!("smtp_url is not a URL: {e}"))?;
                anyhow::ensure!(
                    matches!(url.scheme(), "smtp" | "smtps"),
                    "smtp_url must start with smtp:// (STARTTLS when offered) or smtps:// (implicit TLS)"
                );
                if url.scheme() == "smtp" && !url.query_pairs().any(|(k, _)| k == "tls") {
                    // STARTTLS whenever the server offers it (lettre's default for smtp:// is none).
                    url.query_pairs_mut().append_pair("tls", "opportunistic");
                }
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
                    .map_err(|e| anyhow::anyhow!("smtp_url: {e}"))?
                    .timeout(Some(settings.smtp_timeout))
                    .build();
                let from: Mailbox =
                    settings.smtp_from.parse().map_err(|e| anyhow::anyhow!("smtp_from is not an address: {e}"))?;
                Some((transport, from))
            }
        };
        anyhow::ensure!(templates::complete(), "a built-in template is missing");
        Ok(Outbox { settings, mailer })
    }

    pub fn settings(&self) -> &OutboxSettings {
        &self.settings
    }

    /// Whether messages are queued at all (a channel is configured).
    pub fn enabled(&self) -> bool {
        self.mailer.is_some()
    }

    fn link_base(&self, tenant: &Tenant) -> String {
        if tenant.settings.link_base_url.is_empty() {
            self.settings.link_base.replace("{tenant}", &tenant.tenant_id).trim_end_matches('/').to_owned()
        } else {
            tenant.settings.link_base_url.clone()
        }
    }
}

/// The page a message's link opens.
fn link_path(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::PasswordReset => "reset-password",
        _ => "accept-invitation",
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl Iam {
    /// Queues a message to the user in the caller's transaction (nothing when no channel is
    /// configured or the user has no address). Earlier undelivered messages carrying a token of
    /// the same purpose are superseded: their tokens no longer work anyway.
    pub(super) async fn queue_notification(
        &self,
        tx: &Tx,
        tenant: &Tenant,
        user: &users::Row,
        kind: NotificationKind,
        token: Option<&IssuedToken>,
    ) -> Result<Option<Uuid>> {
        let Some(email) = user.email.clone().filter(|_| self.outbox.enabled()) else {
            return Ok(None);
        };
        if kind.carries_token() {
            let same_purpose: &[NotificationKind] = match kind {
                NotificationKind::PasswordReset => &[NotificationKind::PasswordReset],
                _ => &[NotificationKind::Invitation, NotificationKind::InvitationReminder],
            };
            outbox::supersede(tx, user.user_id, same_purpose).await?;
        }
        let id = Uuid::now_v7();
        let t = now();
        let mut give_up = t + chrono::Duration::from_std(self.outbox.settings.retry_period).unwrap_or_default();
        let mut variables = serde_json::json!({
            "name": user.display_name,
            "tenant": tenant.display_name,
            "time": fmt_time(t),
            "link_base": self.outbox.link_base(tenant),
        });
        let secret = match token {
            Some(token) => {
                give_up = give_up.min(token.expire_time);
                variables["expires"] = fmt_time(token.expire_time).into();
                Some(self.auth.secrets.seal_str(Slot::NotificationSecret(id), &token.token))
            }
            None => None,
        };
        let locale = Locale::pick(&user.locale, &tenant.settings.default_locale);
        outbox::insert(
            tx,
            NewNotification {
                notification_id: id,
                tenant_id: tenant.tenant_id.clone(),
                user_id: Some(user.user_id),
                kind,
                channel: Channel::Email.as_str(),
                recipient: email,
                locale: locale.tag().to_owned(),
                variables,
                secret,
                give_up_time: give_up,
            },
        )
        .await?;
        Ok(Some(id))
    }

    /// Messages waiting to be sent, on all tenants (the queue-depth gauge).
    pub async fn pending_notifications(&self) -> Result<u64> {
        outbox::pending_count(self.db.conn()).await
    }

    /// ListNotifications (needs users.view at TENANT scope; the token is never shown).
    pub async fn list_notifications(&self, caller: &Caller, q: &ListNotifications) -> Result<Page<Notification>> {
        let tenant_id = q.tenant_id.as_str();
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::Tenant).await?;
        self.tenant_settings(tenant_id).await?;
        let rows = outbox::list(self.db.conn(), tenant_id, &q.filter, q.before, q.limit + 1).await?;
        Ok(Page::from_rows(rows, q.limit))
    }

    /// RetryNotification (needs users.edit at TENANT scope): a FAILED message without a token
    /// is queued again for a fresh retry period. One that carried a token cannot be (the token
    /// was erased when it failed): send a new invitation or reset instead.
    pub async fn retry_notification(&self, call: &Call, cmd: RetryNotification) -> Result<Notification> {
        let (tenant_id, id) = (cmd.tenant_id.as_str(), cmd.notification_id);
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        let give_up = now() + chrono::Duration::from_std(self.outbox.settings.retry_period).unwrap_or_default();
        let out = self
            .db
            .write(&call.ctx, async |tx| {
                crate::store::tenants::lock(tx, tenant_id).await?;
                let row = outbox::find(&**tx, tenant_id, id).await?.ok_or_else(|| outbox::not_found(id))?;
                let n = outbox::to_domain(row)?;
                let not_retryable = |why: &str| {
                    Error::precondition(
                        Reason::NotificationNotRetryable,
                        "NOTIFICATION_STATE",
                        format!("notifications/{id}"),
                        why.to_owned(),
                    )
                };
                if n.state != NotificationState::Failed {
                    return Err(not_retryable("only a FAILED notification can be retried"));
                }
                if n.kind.carries_token() {
                    return Err(not_retryable(
                        "its token was erased when it failed: resend the invitation or reset the password instead",
                    ));
                }
                outbox::requeue(tx, id, give_up).await?;
                tx.audit(AuditRecord::new(Some(tenant_id), "notification.retried", "notification", id));
                let row = outbox::find(&**tx, tenant_id, id).await?.ok_or_else(|| outbox::not_found(id))?;
                outbox::to_domain(row)
            })
            .await?;
        Ok(out)
    }

    /// The delivery state of the user's latest invitation (GetUser).
    pub async fn invitation_delivery(&self, user_id: Uuid) -> Result<Option<NotificationState>> {
        outbox::invitation_state(self.db.conn(), user_id).await
    }
}

/// Delivers due messages until `stop`: woken by local commits that queued one, and polling for
/// those of other replicas, retries that fall due and leases of crashed senders.
pub async fn run_worker(iam: Iam, stop: CancellationToken) {
    if !iam.outbox.enabled() {
        return;
    }
    let me = format!("replica-{}", Uuid::new_v4());
    let wake = iam.db.outbox_commits();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let sent = match iam.deliver_due(&me).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "delivering notifications failed; will retry");
                0
            }
        };
        if sent > 0 {
            continue; // more may be due
        }
        let poll = iam.outbox.settings.poll_interval;
        let wait = match outbox::next_due(iam.db.conn()).await {
            Ok(Some(at)) => (at - now()).to_std().unwrap_or(Duration::ZERO).min(poll),
            _ => poll,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
        }
    }
}

/// Messages one replica sends at once.
const BATCH: u64 = 16;

impl Iam {
    /// Fails expired messages, then claims and sends due ones; returns how many were attempted.
    async fn deliver_due(&self, me: &str) -> Result<usize> {
        let ctx = RequestContext::system("notifications");
        let at = now();
        let expired = self
            .db
            .write(&ctx, async |tx| {
                let rows = outbox::expire(tx, at).await?;
                for r in &rows {
                    tx.audit(failed_event(r, r.last_error.as_deref().unwrap_or("expired before it could be sent")));
                }
                Ok(rows.len())
            })
            .await?;
        for _ in 0..expired {
            metrics::counter!("crm_iam_notifications_sent_total", "channel" => "email", "result" => "failed")
                .increment(1);
        }
        let ids = outbox::due(self.db.conn(), at, BATCH).await?;
        let lease = chrono::Duration::from_std(self.outbox.settings.lease).unwrap_or(chrono::Duration::seconds(60));
        let mut attempted = 0;
        for id in ids {
            if !self.db.write(&ctx, async |tx| outbox::claim(tx, id, me, now(), now() + lease).await).await? {
                continue; // another replica was first
            }
            let Some(row) = outbox::get(self.db.conn(), id).await? else { continue };
            attempted += 1;
            let result = self.send(&row).await;
            self.record_delivery(&ctx, me, &row, result).await?;
        }
        Ok(attempted)
    }

    /// Renders and sends one message.
    async fn send(&self, row: &outbox::Row) -> std::result::Result<(), String> {
        let kind: NotificationKind = row.kind.parse().map_err(|_| format!("unknown kind {:?}", row.kind))?;
        let mut vars: serde_json::Value =
            serde_json::from_str(&row.variables).map_err(|e| format!("stored variables: {e}"))?;
        if let Some(sealed) = &row.secret {
            let token = self
                .auth
                .secrets
                .open_str(Slot::NotificationSecret(row.notification_id), sealed)
                .map_err(|e| format!("the message's token does not open: {e}"))?;
            let base = vars["link_base"].as_str().unwrap_or_default().to_owned();
            vars["link"] = format!("{base}/{}?token={}", link_path(kind), token.expose_secret()).into();
        } else if kind.carries_token() {
            return Err("the message's token is gone".into());
        }
        let locale = Locale::parse(&row.locale).unwrap_or_default();
        let rendered = templates::render(kind, locale, &vars)?;
        let (transport, from) = self.outbox.mailer.as_ref().ok_or("no e-mail channel is configured")?;
        let to: Mailbox = row.recipient.parse().map_err(|e| format!("the recipient is not an address: {e}"))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!("<{}@crm-iam>", row.notification_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(rendered.body)
            .map_err(|e| format!("building the message: {e}"))?;
        // The transport's own timeout bounds each command; this bounds the whole conversation.
        match tokio::time::timeout(self.outbox.settings.smtp_timeout * 2, transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            // lettre's errors name the server's reply, never the message's content.
            Ok(Err(e)) => Err(format!("SMTP: {e}")),
            Err(_) => Err("SMTP: timed out".into()),
        }
    }

    async fn record_delivery(
        &self,
        ctx: &RequestContext,
        me: &str,
        row: &outbox::Row,
        result: std::result::Result<(), String>,
    ) -> Result<()> {
        let attempts = row.attempts as u32 + 1;
        let (attempt, result_label) = match result {
            Ok(()) => (Attempt::Sent, "sent"),
            Err(error) => {
                let error: String = error.chars().take(500).collect();
                let at =
                    now() + chrono::Duration::from_std(self.outbox.settings.retry.delay(attempts)).unwrap_or_default();
                if at > row.give_up_time {
                    (Attempt::Failed { error }, "failed")
                } else {
                    (Attempt::Retry { error, at }, "retry")
                }
            }
        };
        let failed_error = match &attempt {
            Attempt::Failed { error } => Some(error.clone()),
            _ => None,
        };
        if let Attempt::Retry { error, .. } = &attempt {
            tracing::info!(notification_id = %row.notification_id, attempts, error = %error, "notification not delivered; will retry");
        }
        let kept = self
            .db
            .write(ctx, async |tx| {
                let kept = outbox::finish(tx, row.notification_id, me, attempt).await?;
                if kept && let Some(error) = &failed_error {
                    tx.audit(failed_event(row, error));
                }
                Ok(kept)
            })
            .await?;
        if !kept {
            tracing::warn!(notification_id = %row.notification_id, "the notification's claim was lost while sending");
            return Ok(());
        }
        metrics::counter!("crm_iam_notifications_sent_total", "channel" => "email", "result" => result_label)
            .increment(1);
        if result_label == "sent" {
            let latency = (now() - row.create_time).to_std().unwrap_or_default();
            metrics::histogram!("crm_iam_notification_delivery_seconds", "channel" => "email")
                .record(latency.as_secs_f64());
        } else if result_label == "failed" {
            tracing::warn!(notification_id = %row.notification_id, attempts, "notification FAILED: retries ran out");
        }
        Ok(())
    }
}

/// The audit event of a message that will not be delivered (no token, no address in it).
fn failed_event(row: &outbox::Row, error: &str) -> AuditRecord {
    let mut record = AuditRecord::new(Some(&row.tenant_id), "notification.failed", "notification", row.notification_id)
        .with_detail("kind", row.kind.clone())
        .with_detail("channel", row.channel.clone())
        .with_detail("attempts", row.attempts + 1)
        .with_detail("error", error.to_owned());
    if let Some(u) = row.user_id {
        record = record.with_detail("user_id", u.to_string());
    }
    record
}
