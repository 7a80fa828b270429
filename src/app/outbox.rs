//! The notifications outbox of this replica, from the configuration.

use crate::{
    config::Config,
    domain::notification::RetrySchedule,
    service::notify::{Outbox, OutboxSettings},
};

pub fn build(config: &Config) -> anyhow::Result<Outbox> {
    Outbox::new(OutboxSettings {
        smtp_url: config.smtp_url.clone(),
        smtp_from: config.smtp_from.clone(),
        smtp_timeout: config.smtp_timeout,
        webhook_url: config.notification_webhook_url.clone(),
        webhook_secret: config.notification_webhook_secret.clone(),
        webhook_timeout: config.notification_webhook_timeout,
        link_base: config.notification_link_base.clone(),
        retry: RetrySchedule { first: config.notification_retry_first, max: config.notification_retry_max },
        retry_period: config.notification_retry_period,
        poll_interval: config.notification_poll_interval,
        lease: config.transfer_lease,
        resets_per_account_hour: config.password_reset_messages_per_account,
    })
}
