//! Notifications: the transactional outbox and its delivery worker.
//!
//! A change that needs a message calls [`Iam::queue_notification`] inside its `Db::write`
//! transaction: the message is a row of `notifications` that commits, or vanishes, with the
//! change. A token the message carries (invitation, password reset) is stored sealed under the
//! master key, bound to the row, and erased when the message is sent, fails or expires.
//!
//! The worker ([`run_worker`], one per replica) claims due rows by lease (one UPDATE: exactly one
//! replica wins each), renders the template of the user's language (the tenant's own, or the
//! built-in one: `templates.rs`), sends it by the row's channel (`channels.rs`: e-mail, or a
//! Standard Webhooks POST to the platform's notification service) and records the outcome. A crash between commit and delivery
//! leaves the row PENDING, and it is sent after the lease runs out, by any replica. The message
//! id is stable (`Message-ID: <notification_id@crm-iam>`, `webhook-id`), so a receiver can drop the rare
//! repeat (a replica that crashed after the SMTP server accepted the message and before the row
//! was marked). Failed attempts retry with exponential backoff and jitter until
//! `notification_retry_period` (or the token's expiry); then the message becomes FAILED, with a
//! `notification.failed` audit event and a metric.

mod admin;
pub mod channels;
pub mod templates;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use admin::{ListNotifications, ListTemplates, RetryNotification, TemplateRef};
use channels::{Mailer, Webhook};

use super::Iam;
use crate::{
    domain::{
        Result, Violations,
        audit::{AuditRecord, RequestContext},
        notification::{Channel, Locale, NotificationKind, RetrySchedule},
        now,
        tenant::{SettingsPatch, Tenant},
        user::IssuedToken,
    },
    secrets::Slot,
    store::{
        Tx, notification_templates,
        outbox::{self, Attempt, NewNotification},
        users,
    },
};

/// How messages are delivered (from the configuration).
#[derive(Clone)]
pub struct OutboxSettings {
    /// `smtp://…` / `smtps://…`; None = no e-mail channel.
    pub smtp_url: Option<SecretString>,
    pub smtp_from: String,
    pub smtp_timeout: Duration,
    /// The platform's notification service; None = no webhook channel.
    pub webhook_url: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub webhook_timeout: Duration,
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
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(10),
            link_base: "https://{tenant}.crm.example".into(),
            retry: RetrySchedule { first: Duration::from_secs(10), max: Duration::from_secs(600) },
            retry_period: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(2),
            lease: Duration::from_secs(60),
            resets_per_account_hour: 3,
        }
    }
}

/// The outbox of this replica: its settings and channels (the SMTP transport is a pool).
#[derive(Default)]
pub struct Outbox {
    settings: OutboxSettings,
    mailer: Option<Mailer>,
    webhook: Option<Webhook>,
}

impl Outbox {
    pub fn new(settings: OutboxSettings) -> anyhow::Result<Outbox> {
        let mailer = match &settings.smtp_url {
            None => None,
            Some(url) => Some(Mailer::new(url, &settings.smtp_from, settings.smtp_timeout)?),
        };
        let webhook = match &settings.webhook_url {
            None => {
                anyhow::ensure!(
                    settings.webhook_secret.is_none(),
                    "notification_webhook_secret is set without notification_webhook_url"
                );
                None
            }
            Some(url) => Some(Webhook::new(url, settings.webhook_secret.as_ref(), settings.webhook_timeout)?),
        };
        anyhow::ensure!(templates::complete(), "a built-in template is missing");
        Ok(Outbox { settings, mailer, webhook })
    }

    pub fn settings(&self) -> &OutboxSettings {
        &self.settings
    }

    /// Whether messages are queued at all (a channel is configured).
    pub fn enabled(&self) -> bool {
        self.mailer.is_some() || self.webhook.is_some()
    }

    fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.mailer.is_some(),
            Channel::Webhook => self.webhook.is_some(),
        }
    }

    /// The tenant's channel: its choice when this server has it, otherwise whichever it has
    /// (e-mail first); None when it has none.
    pub fn channel_for(&self, tenant: &Tenant) -> Option<Channel> {
        [tenant.settings.channel, Some(Channel::Email), Some(Channel::Webhook)]
            .into_iter()
            .flatten()
            .find(|c| self.has(*c))
    }

    /// A tenant may choose only a channel this server has.
    pub fn check_channel(&self, patch: &SettingsPatch, v: &mut Violations) {
        if let Some(Some(channel)) = patch.channel
            && !self.has(channel)
        {
            let setting = match channel {
                Channel::Email => "smtp_url",
                Channel::Webhook => "notification_webhook_url",
            };
            v.add(
                "tenant.settings.notification_policy.channel",
                format!("this server has no {} channel (its operator sets `{setting}`)", channel.as_str()),
            );
        }
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
    /// the same purpose are superseded: their tokens no longer work anyway. `extra`: variables of
    /// the kind's own (`admin`).
    pub(super) async fn queue_notification(
        &self,
        tx: &Tx,
        tenant: &Tenant,
        user: &users::Row,
        kind: NotificationKind,
        token: Option<&IssuedToken>,
        extra: Option<&[(&str, String)]>,
    ) -> Result<Option<Uuid>> {
        let (Some(channel), Some(email)) = (self.outbox.channel_for(tenant), user.email.clone()) else {
            return Ok(None);
        };
        // The first invitation goes to a user created in this transaction: nothing to supersede.
        if kind.carries_token() && kind != NotificationKind::Invitation {
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
        if let Some(extra) = extra {
            for (k, v) in extra {
                variables[*k] = v.as_str().into();
            }
        }
        if channel == Channel::Webhook
            && let Some(phone) = &user.phone
        {
            // The platform's service may text the user instead (erased with the user's data).
            variables["phone"] = phone.clone().into();
        }
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
                channel: channel.as_str(),
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
        // A shutdown does not wait for a slow receiver: what was claimed and not recorded is
        // sent again after the lease (the stable id lets the receiver drop the repeat).
        let delivered = tokio::select! {
            _ = stop.cancelled() => return,
            r = iam.deliver_due(&me) => r,
        };
        let sent = match delivered {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "delivering notifications failed; will retry");
                0
            }
        };
        if sent as u64 >= BATCH {
            continue; // more may be due
        }
        if sent > 0 {
            // A part batch: more may be due, and more are being committed.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LINGER) => {}
            }
            continue;
        }
        let poll = iam.outbox.settings.poll_interval;
        let wait = match outbox::next_due(iam.db.conn()).await {
            Ok(Some(at)) => (at - now()).to_std().unwrap_or(Duration::ZERO).min(poll),
            _ => poll,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {
                // Let a burst of commits gather into one batch: a claim and a record per message
                // would double the database work of every change that queues one.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(LINGER) => {}
                }
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
        }
    }
}

/// Messages one replica claims and sends at once: on SQLite each batch's claim and record wait
/// their turn behind the writers of the request path, so a batch amortizes them over many sends.
pub(crate) const BATCH: u64 = 128;

/// How long a woken worker waits for more commits before it claims (bounded added latency).
const LINGER: Duration = Duration::from_millis(25);

/// Messages sent at once. The SMTP pool keeps twice as many connections: lettre returns a
/// connection to its pool only after the send has finished, so a pool just as large as the
/// concurrency would open (and then drop) a fresh connection for many sends.
pub(crate) const SMTP_CONNECTIONS: u32 = 32;

impl Iam {
    /// Fails expired messages, then claims and sends due ones; returns how many were attempted.
    async fn deliver_due(&self, me: &str) -> Result<usize> {
        let ctx = RequestContext::system("notifications");
        let at = now();
        let expired = if !outbox::any_expired(self.db.conn(), at).await? {
            Vec::new()
        } else {
            self.db
                .write(&ctx, async |tx| {
                    let rows = outbox::expire(tx, at).await?;
                    for r in &rows {
                        tx.audit(failed_event(r, r.last_error.as_deref().unwrap_or("expired before it could be sent")));
                    }
                    Ok(rows.into_iter().map(|r| r.channel).collect::<Vec<_>>())
                })
                .await?
        };
        for channel in expired {
            metrics::counter!("crm_iam_notifications_sent_total", "channel" => channel, "result" => "failed")
                .increment(1);
        }
        let ids = outbox::due(self.db.conn(), at, BATCH).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let lease = chrono::Duration::from_std(self.outbox.settings.lease).unwrap_or(chrono::Duration::seconds(60));
        let until = now() + lease;
        // Those another replica took first are left out.
        let claimed = self.db.write(&ctx, async |tx| outbox::claim(tx, &ids, me, now(), until).await).await?;
        let attempted = claimed.len();
        // The tenants' own templates, read once for the batch.
        let mut tenants: Vec<&str> = claimed.iter().map(|r| r.tenant_id.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let custom = notification_templates::of_tenants(self.db.conn(), &tenants).await?;
        // Sent side by side, at most SMTP_CONNECTIONS at a time (the SMTP pool and the HTTP client
        // keep that many connections; a receiver never sees more at once from one replica).
        let sends: Vec<_> = claimed.iter().map(|row| self.send(row, &custom)).collect();
        let results: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffered(
            futures::stream::iter(sends),
            SMTP_CONNECTIONS as usize,
        ))
        .await;
        self.record_deliveries(&ctx, me, claimed.into_iter().zip(results).collect()).await?;
        Ok(attempted)
    }

    /// Renders and sends one message by its channel.
    async fn send(&self, row: &outbox::Row, custom: &[notification_templates::Row]) -> std::result::Result<(), String> {
        let kind: NotificationKind = row.kind.parse().map_err(|_| format!("unknown kind {:?}", row.kind))?;
        let channel: Channel = row.channel.parse().map_err(|_| format!("unknown channel {:?}", row.channel))?;
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
        let custom =
            custom.iter().find(|t| t.tenant_id == row.tenant_id && t.kind == kind.as_str() && t.locale == locale.tag());
        let (subject, body) = match custom {
            Some(t) => (t.subject.as_str(), t.body.as_str()),
            None => templates::builtin(kind, locale),
        };
        let rendered = templates::render(subject, body, &vars)?;
        let id = row.notification_id.to_string();
        match channel {
            Channel::Email => {
                let mailer = self.outbox.mailer.as_ref().ok_or("this server has no e-mail channel")?;
                mailer.send(&id, &row.recipient, rendered).await
            }
            Channel::Webhook => {
                let webhook = self.outbox.webhook.as_ref().ok_or("this server has no webhook channel")?;
                webhook.send(&id, &webhook_payload(row, kind, &vars, rendered)).await
            }
        }
    }

    /// Records the outcome of a batch of attempts in one transaction (each kept only if this
    /// replica still holds the message), then counts them.
    async fn record_deliveries(
        &self,
        ctx: &RequestContext,
        me: &str,
        outcomes: Vec<(outbox::Row, std::result::Result<(), String>)>,
    ) -> Result<()> {
        let mut recorded = Vec::with_capacity(outcomes.len());
        for (row, result) in outcomes {
            let attempts = row.attempts as u32 + 1;
            let (attempt, label) = match result {
                Ok(()) => (Attempt::Sent, "sent"),
                Err(error) => {
                    let error: String = error.chars().take(500).collect();
                    let delay = self.outbox.settings.retry.delay(attempts);
                    let at = now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    if at > row.give_up_time {
                        (Attempt::Failed { error }, "failed")
                    } else {
                        tracing::info!(notification_id = %row.notification_id, attempts, error = %error, "notification not delivered; will retry");
                        (Attempt::Retry { error, at }, "retry")
                    }
                }
            };
            recorded.push((row, attempt, label));
        }
        let kept = self
            .db
            .write(ctx, async |tx| {
                let sent: Vec<Uuid> = recorded
                    .iter()
                    .filter(|(_, a, _)| matches!(a, Attempt::Sent))
                    .map(|(r, _, _)| r.notification_id)
                    .collect();
                let sent = outbox::finish_sent(tx, &sent, me).await?;
                let mut kept = Vec::with_capacity(recorded.len());
                for (row, attempt, _) in &recorded {
                    let k = match attempt {
                        Attempt::Sent => sent.contains(&row.notification_id),
                        _ => outbox::finish(tx, row.notification_id, me, attempt.clone()).await?,
                    };
                    if k && let Attempt::Failed { error } = attempt {
                        tx.audit(failed_event(row, error));
                    }
                    kept.push(k);
                }
                Ok(kept)
            })
            .await?;
        for ((row, _, label), kept) in recorded.iter().zip(kept) {
            if !kept {
                tracing::warn!(notification_id = %row.notification_id, "the notification's claim was lost while sending");
                continue;
            }
            metrics::counter!("crm_iam_notifications_sent_total", "channel" => row.channel.clone(), "result" => *label)
                .increment(1);
            if *label == "sent" {
                let latency = (now() - row.create_time).to_std().unwrap_or_default();
                metrics::histogram!("crm_iam_notification_delivery_seconds", "channel" => row.channel.clone())
                    .record(latency.as_secs_f64());
            } else if *label == "failed" {
                tracing::warn!(notification_id = %row.notification_id, attempts = row.attempts + 1, "notification FAILED: retries ran out");
            }
        }
        Ok(())
    }
}

/// The JSON a webhook carries: the message as rendered for the user (so the receiver can send it
/// as it is) and what it needs to send it its own way (an SMS with the link, an in-app notice).
/// `type` is `notification.<kind>`.
fn webhook_payload(
    row: &outbox::Row,
    kind: NotificationKind,
    vars: &serde_json::Value,
    message: templates::Rendered,
) -> serde_json::Value {
    let text = |k: &str| vars.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut data = serde_json::json!({
        "notification_id": row.notification_id,
        "tenant_id": row.tenant_id,
        "user_id": row.user_id,
        "kind": kind.as_str(),
        "locale": row.locale,
        "recipient": { "email": row.recipient, "name": text("name"), "phone": text("phone") },
        "subject": message.subject,
        "body": message.body,
    });
    for k in ["link", "expires", "admin"] {
        if vars.get(k).is_some() {
            data[k] = text(k).into();
        }
    }
    serde_json::json!({
        "type": format!("notification.{}", kind.as_str()),
        "timestamp": now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
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
