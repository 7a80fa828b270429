//! `crm.iam.v1.NotificationAdmin`: a tenant's administrators see the messages sent to their users
//! and queue failed ones again.

use tonic::{Request, Response, Status};

use super::{accept, convert, decode_uuid_page_token, next_page_token, page_size, read, tenant_field, uuid_field};
use crate::{
    domain::{Error, Result, Violations, notification::NotificationFilter, validate},
    proto::v1::{self as pb, notification_admin_server::NotificationAdmin},
    service::{
        Iam,
        notify::{ListNotifications, RetryNotification},
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
