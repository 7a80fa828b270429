//! NotificationAdmin: the tenant's messages (list, retry) and templates (list, set, delete,
//! preview); the delivery state GetUser shows; the notice to administrators of a new one.

use strum::IntoEnumIterator;
use uuid::Uuid;

use super::{fmt_time, link_path, templates};
use crate::{
    domain::{
        Error, Reason, Result, Violations,
        access::Right,
        audit::AuditRecord,
        caller::Caller,
        check_etag,
        notification::{
            Locale, Notification, NotificationFilter, NotificationKind, NotificationState, NotificationTemplate,
        },
        now,
        tenant::Tenant,
    },
    service::{Call, Iam, Page, Target},
    store::{Tx, notification_templates, outbox, roles, tenants, users},
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

/// The templates of a tenant.
pub struct ListTemplates {
    pub tenant_id: String,
}

/// One template of a tenant: a kind in a language, with a draft or new wording when set.
pub struct TemplateRef {
    pub tenant_id: String,
    pub kind: NotificationKind,
    pub locale: Locale,
    /// SetTemplate: the new wording; PreviewTemplate: a draft (empty = the wording in use).
    pub subject: String,
    pub body: String,
    /// SetTemplate: the template must still have this etag (empty = any).
    pub etag: String,
}

/// Administrators told of a new one, at most (the first ones by id).
const NEW_ADMIN_NOTICES: usize = 20;

fn template_of(row: notification_templates::Row, kind: NotificationKind, locale: Locale) -> NotificationTemplate {
    NotificationTemplate {
        kind,
        locale,
        subject: row.subject,
        body: row.body,
        custom: true,
        update_time: Some(row.update_time),
        version: Some(row.version),
    }
}

fn builtin_template(kind: NotificationKind, locale: Locale) -> NotificationTemplate {
    let (subject, body) = templates::builtin(kind, locale);
    NotificationTemplate {
        kind,
        locale,
        subject: subject.into(),
        body: body.into(),
        custom: false,
        update_time: None,
        version: None,
    }
}

impl Iam {
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
        self.db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
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
            .await
    }

    /// The delivery state of the user's latest invitation (GetUser).
    pub async fn invitation_delivery(&self, user_id: Uuid) -> Result<Option<NotificationState>> {
        outbox::invitation_state(self.db.conn(), user_id).await
    }

    /// ListTemplates (needs settings.view at TENANT scope): every kind in every language.
    pub async fn list_templates(&self, caller: &Caller, q: &ListTemplates) -> Result<Vec<NotificationTemplate>> {
        let tenant_id = q.tenant_id.as_str();
        self.authorize(caller, tenant_id, Right::SETTINGS_VIEW, Target::Tenant).await?;
        self.tenant_settings(tenant_id).await?;
        let mut own = notification_templates::list(self.db.conn(), tenant_id).await?;
        let mut out = Vec::new();
        for kind in NotificationKind::iter() {
            for locale in Locale::iter() {
                let i = own.iter().position(|r| r.kind == kind.as_str() && r.locale == locale.tag());
                out.push(match i {
                    Some(i) => template_of(own.swap_remove(i), kind, locale),
                    None => builtin_template(kind, locale),
                });
            }
        }
        Ok(out)
    }

    /// SetTemplate (needs settings.edit at TENANT scope): checked by rendering with sample data.
    pub async fn set_template(&self, call: &Call, cmd: TemplateRef) -> Result<NotificationTemplate> {
        let tenant_id = cmd.tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        let tenant = self.tenant_settings(tenant_id).await?;
        self.check_template(&tenant, &cmd, "template.")?;
        let (kind, locale) = (cmd.kind, cmd.locale);
        self.db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                let before = notification_templates::get(&**tx, tenant_id, kind, locale).await?;
                check_etag(&cmd.etag, before.as_ref().map_or(0, |b| b.version), "template")?;
                let row =
                    notification_templates::put(tx, tenant_id, kind, locale, cmd.subject, cmd.body, before.as_ref())
                        .await?;
                let after = template_of(row, kind, locale);
                tx.audit(template_record("notification.template_set", tenant_id, &after, before.is_some()));
                Ok(after)
            })
            .await
    }

    /// DeleteTemplate (needs settings.edit at TENANT scope): back to the built-in wording.
    pub async fn delete_template(&self, call: &Call, cmd: TemplateRef) -> Result<NotificationTemplate> {
        let tenant_id = cmd.tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        let (kind, locale) = (cmd.kind, cmd.locale);
        self.db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                if !notification_templates::delete(tx, tenant_id, kind, locale).await? {
                    return Err(notification_templates::not_found(kind, locale));
                }
                let builtin = builtin_template(kind, locale);
                tx.audit(template_record("notification.template_deleted", tenant_id, &builtin, true));
                Ok(builtin)
            })
            .await
    }

    /// PreviewTemplate (needs settings.view at TENANT scope): the draft, or the wording in use,
    /// rendered with sample data.
    pub async fn preview_template(&self, caller: &Caller, cmd: TemplateRef) -> Result<templates::Rendered> {
        let tenant_id = cmd.tenant_id.as_str();
        self.authorize(caller, tenant_id, Right::SETTINGS_VIEW, Target::Tenant).await?;
        let tenant = self.tenant_settings(tenant_id).await?;
        let in_use = match notification_templates::get(self.db.conn(), tenant_id, cmd.kind, cmd.locale).await? {
            Some(row) => template_of(row, cmd.kind, cmd.locale),
            None => builtin_template(cmd.kind, cmd.locale),
        };
        let draft = TemplateRef {
            subject: if cmd.subject.is_empty() { in_use.subject } else { cmd.subject.clone() },
            body: if cmd.body.is_empty() { in_use.body } else { cmd.body.clone() },
            ..cmd
        };
        self.check_template(&tenant, &draft, "")?;
        templates::render(&draft.subject, &draft.body, &self.sample_variables(&tenant, draft.kind))
            .map_err(|e| Error::internal(anyhow::anyhow!("a checked template did not render: {e}")))
    }

    fn check_template(&self, tenant: &Tenant, t: &TemplateRef, base: &str) -> Result<()> {
        let sample = self.sample_variables(tenant, t.kind);
        let mut v = Violations::default();
        for (part, problem) in templates::check(t.kind, &t.subject, &t.body, &sample) {
            v.add(format!("{base}{part}"), problem);
        }
        v.finish()
    }

    /// The variables of a kind's messages, with sample values (the tenant's own name and links).
    fn sample_variables(&self, tenant: &Tenant, kind: NotificationKind) -> serde_json::Value {
        let t = now();
        let all = serde_json::json!({
            "name": "Ann Lee",
            "tenant": tenant.display_name,
            "time": fmt_time(t),
            "link": format!("{}/{}?token=SAMPLE-TOKEN", self.outbox.link_base(tenant), link_path(kind)),
            "expires": fmt_time(t + chrono::Duration::days(7)),
            "admin": "Bob Smith",
        });
        let vars = templates::variables(kind).iter().map(|k| (k.to_string(), all[k].clone()));
        serde_json::Value::Object(vars.collect())
    }

    /// Tells the tenant's other active administrators (the first ones) that `admin` became one,
    /// in the transaction that made them one: a stolen session used to raise an accomplice is
    /// seen by the people it would be hidden from.
    pub(crate) async fn notify_new_administrator(
        &self,
        tx: &Tx,
        tenant_id: &str,
        admin_role: Uuid,
        admin: &users::Row,
    ) -> Result<()> {
        if !self.outbox.enabled() {
            return Ok(());
        }
        let tenant = tenants::get(&**tx, tenant_id).await?;
        let mut holders = roles::holders(&**tx, admin_role).await?;
        holders.sort();
        let mut told = 0;
        for user_id in holders.into_iter().filter(|u| *u != admin.user_id) {
            if told == NEW_ADMIN_NOTICES {
                break;
            }
            let Some(row) = users::find(&**tx, tenant_id, user_id).await? else { continue };
            if users::state(&row)? != crate::domain::user::UserState::Active {
                continue;
            }
            let extra = [("admin", admin.display_name.clone())];
            if self
                .queue_notification(tx, &tenant, &row, NotificationKind::NewAdministrator, None, Some(&extra))
                .await?
                .is_some()
            {
                told += 1;
            }
        }
        Ok(())
    }
}

/// The audit event of a template change (its wording is not secret: it is recorded).
fn template_record(action: &str, tenant_id: &str, t: &NotificationTemplate, replaced: bool) -> AuditRecord {
    AuditRecord::new(
        Some(tenant_id),
        action,
        "notification_template",
        format!("{}/{}", t.kind.as_str(), t.locale.tag()),
    )
    .with_detail("kind", t.kind.as_str())
    .with_detail("locale", t.locale.tag())
    .with_detail("subject", t.subject.clone())
    .with_detail("replaced", replaced)
}
