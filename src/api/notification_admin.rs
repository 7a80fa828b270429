//! `crm.iam.v1.NotificationAdmin`: a tenant's administrators see the messages sent to their users,
//! queue failed ones again, and word messages their own way.

use tonic::{Request, Response, Status};

use super::{accept, convert, decode_uuid_page_token, next_page_token, page_size, read, tenant_field, uuid_field};
use crate::{
    domain::{
        Error, Result, Violations,
        notification::{Locale, NotificationFilter, NotificationKind},
        validate,
    },
    proto::v1::{self as pb, notification_admin_server::NotificationAdmin},
    service::{
        Iam,
        notify::{ListNotifications, ListTemplates, RetryNotification, TemplateRef},
    },
};

pub struct NotificationAdminApi {
    iam: Iam,
}

impl NotificationAdminApi {
    pub fn new(iam: Iam) -> Self {
        NotificationAdminApi { iam }
    }
}

#[tonic::async_trait]
impl NotificationAdmin for NotificationAdminApi {
    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let (caller, query): (_, ListNotifications) = read(req)?;
        let page = self.iam.list_notifications(&caller, &query).await?;
        let next_page_token = next_page_token(&page, &query.filters, |last| last.notification_id.to_string());
        let notifications = page.items.into_iter().map(convert::notification_to_proto).collect();
        Ok(Response::new(pb::ListNotificationsResponse { notifications, next_page_token }))
    }

    async fn retry_notification(
        &self,
        req: Request<pb::RetryNotificationRequest>,
    ) -> Result<Response<pb::RetryNotificationResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let n = self.iam.retry_notification(&call, cmd).await?;
        Ok(Response::new(pb::RetryNotificationResponse { notification: Some(convert::notification_to_proto(n)) }))
    }

    async fn list_templates(
        &self,
        req: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let (caller, query): (_, ListTemplates) = read(req)?;
        let templates = self.iam.list_templates(&caller, &query).await?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: templates.into_iter().map(convert::template_to_proto).collect(),
        }))
    }

    async fn set_template(
        &self,
        req: Request<pb::SetTemplateRequest>,
    ) -> Result<Response<pb::SetTemplateResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let t = self.iam.set_template(&call, cmd).await?;
        Ok(Response::new(pb::SetTemplateResponse { template: Some(convert::template_to_proto(t)) }))
    }

    async fn delete_template(
        &self,
        req: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<pb::DeleteTemplateResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let t = self.iam.delete_template(&call, cmd).await?;
        Ok(Response::new(pb::DeleteTemplateResponse { template: Some(convert::template_to_proto(t)) }))
    }

    async fn preview_template(
        &self,
        req: Request<pb::PreviewTemplateRequest>,
    ) -> Result<Response<pb::PreviewTemplateResponse>, Status> {
        let (caller, cmd): (_, TemplateRef) = read(req)?;
        let r = self.iam.preview_template(&caller, cmd).await?;
        Ok(Response::new(pb::PreviewTemplateResponse { subject: r.subject, body: r.body }))
    }
}

fn kind_field(v: &mut Violations, field: &str, kind: &str) -> NotificationKind {
    v.check(field, kind.trim().parse().map_err(|_| "is not a notification kind (see Notification.kind)".to_string()))
        .unwrap_or(NotificationKind::Invitation)
}

fn locale_field(v: &mut Violations, field: &str, locale: &str) -> Locale {
    v.check(field, Locale::parse(locale).ok_or_else(|| "must be en, ru or zh-CN".to_string())).unwrap_or_default()
}

impl TryFrom<pb::ListTemplatesRequest> for ListTemplates {
    type Error = Error;

    fn try_from(msg: pb::ListTemplatesRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        v.finish()?;
        Ok(ListTemplates { tenant_id })
    }
}

impl TryFrom<pb::SetTemplateRequest> for TemplateRef {
    type Error = Error;

    fn try_from(msg: pb::SetTemplateRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let t = msg.template.unwrap_or_default();
        let kind = kind_field(&mut v, "template.kind", &t.kind);
        let locale = locale_field(&mut v, "template.locale", &t.locale);
        v.finish()?;
        Ok(TemplateRef { tenant_id, kind, locale, subject: t.subject, body: t.body, etag: t.etag })
    }
}

impl TryFrom<pb::DeleteTemplateRequest> for TemplateRef {
    type Error = Error;

    fn try_from(msg: pb::DeleteTemplateRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let kind = kind_field(&mut v, "kind", &msg.kind);
        let locale = locale_field(&mut v, "locale", &msg.locale);
        v.finish()?;
        Ok(TemplateRef { tenant_id, kind, locale, subject: String::new(), body: String::new(), etag: String::new() })
    }
}

impl TryFrom<pb::PreviewTemplateRequest> for TemplateRef {
    type Error = Error;

    fn try_from(msg: pb::PreviewTemplateRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let kind = kind_field(&mut v, "kind", &msg.kind);
        let locale = locale_field(&mut v, "locale", &msg.locale);
        v.finish()?;
        Ok(TemplateRef { tenant_id, kind, locale, subject: msg.subject, body: msg.body, etag: String::new() })
    }
}

impl TryFrom<pb::ListNotificationsRequest> for ListNotifications {
    type Error = Error;

    fn try_from(msg: pb::ListNotificationsRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let user_id = v.check("user_id", validate::optional_uuid(&msg.user_id)).flatten();
        let kind = match msg.kind.trim() {
            "" => None,
            k => v.check("kind", k.parse().map_err(|_| "is not a notification kind".to_string())),
        };
        let state = match pb::NotificationState::try_from(msg.state) {
            Ok(s) => convert::notification_state_from_proto(s),
            Err(_) => {
                v.add("state", "is not a notification state");
                None
            }
        };
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("notifications|{tenant_id}|{}|{}|{}", msg.user_id, msg.kind, msg.state);
        let before = decode_uuid_page_token(&msg.page_token, &filters)?;
        Ok(ListNotifications { tenant_id, filter: NotificationFilter { user_id, kind, state }, before, limit, filters })
    }
}

impl TryFrom<pb::RetryNotificationRequest> for RetryNotification {
    type Error = Error;

    fn try_from(msg: pb::RetryNotificationRequest) -> Result<Self> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let notification_id = uuid_field(&mut v, "notification_id", &msg.notification_id);
        v.finish()?;
        Ok(RetryNotification { tenant_id, notification_id })
    }
}
