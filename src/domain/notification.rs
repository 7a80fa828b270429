//! Notifications: what a message is about, its language, its delivery state, and the retry
//! schedule. No I/O here (the outbox rows are in `store::outbox`, delivery in
//! `service::notify`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a message says. The stored and API names are the snake_case ones.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An invitation with its link (CreateUser with `send_invitation`).
    Invitation,
    /// The invitation again (ResendInvitation).
    InvitationReminder,
    /// A password-reset link (ResetPassword without a temporary password, RequestPasswordReset).
    PasswordReset,
    /// The password was changed (ChangePassword, CompletePasswordReset).
    PasswordChanged,
    /// The account was locked after failed logins.
    AccountLocked,
    /// A second factor was enabled.
    MfaEnabled,
    /// The second factor was removed.
    MfaDisabled,
    /// To the tenant's administrators: someone was given the administrator role.
    NewAdministrator,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the message carries a single-use token (kept sealed until delivered).
    pub fn carries_token(self) -> bool {
        matches!(self, Self::Invitation | Self::InvitationReminder | Self::PasswordReset)
    }
}

/// Where a message goes: an e-mail to the user (SMTP), or a signed HTTP POST to the platform's
/// notification service (Standard Webhooks), which may send it as an SMS or in-app message.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString, strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Delivery state: PENDING (queued or retrying), SENT, FAILED (retries ran out; RetryNotification
/// queues it again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationState {
    Pending,
    Sent,
    Failed,
}

impl NotificationState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The languages of the built-in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, strum::EnumIter)]
pub enum Locale {
    #[default]
    En,
    Ru,
    ZhCn,
}

impl Locale {
    /// From a BCP 47 tag, by its language (and, for Chinese, its script or region: Simplified
    /// Chinese only). Case does not matter; `_` is taken for `-`.
    pub fn parse(tag: &str) -> Option<Locale> {
        let tag = tag.trim().replace('_', "-").to_ascii_lowercase();
        let mut parts = tag.split('-');
        let language = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        if rest.iter().any(|p| p.is_empty() || p.len() > 8 || !p.chars().all(|c| c.is_ascii_alphanumeric())) {
            return None;
        }
        match language {
            "en" => Some(Locale::En),
            "ru" => Some(Locale::Ru),
            "zh" if rest.iter().all(|p| matches!(*p, "cn" | "hans" | "sg")) => Some(Locale::ZhCn),
            _ => None,
        }
    }

    /// The canonical tag.
    pub fn tag(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::Ru => "ru",
            Locale::ZhCn => "zh-CN",
        }
    }

    /// The user's language, else the tenant's, else English.
    pub fn pick(user: &str, tenant: &str) -> Locale {
        Locale::parse(user).or_else(|| Locale::parse(tenant)).unwrap_or_default()
    }
}

/// The wording of one kind of message in one language: a tenant's own (`custom`, with its
/// version) or the built-in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationTemplate {
    pub kind: NotificationKind,
    pub locale: Locale,
    pub subject: String,
    pub body: String,
    pub custom: bool,
    pub update_time: Option<DateTime<Utc>>,
    pub version: Option<i64>,
}

/// A message in the outbox, as administrators see it (never its token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub notification_id: Uuid,
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub kind: NotificationKind,
    pub channel: String,
    pub recipient: String,
    pub locale: String,
    pub state: NotificationState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_time: DateTime<Utc>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub sent_time: Option<DateTime<Utc>>,
}

/// Filters of ListNotifications.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub user_id: Option<Uuid>,
    pub kind: Option<NotificationKind>,
    pub state: Option<NotificationState>,
}

/// The retry schedule: exponential from `first` (doubling, at most `max` apart), with jitter, so
/// a receiver that comes back is not hit by every queued message at the same instant.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub first: Duration,
    pub max: Duration,
}

impl RetrySchedule {
    /// The wait before attempt `attempts + 1`, after `attempts` failed ones (≥ 1).
    pub fn delay(&self, attempts: u32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        delays.nth(attempts.saturating_sub(1).min(64) as usize).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_parse_by_language() {
        assert_eq!(Locale::parse("ru-RU"), Some(Locale::Ru));
        assert_eq!(Locale::parse("zh_CN"), Some(Locale::ZhCn));
        assert_eq!(Locale::parse("zh-Hans"), Some(Locale::ZhCn));
        assert_eq!(Locale::parse("zh-TW"), None, "Traditional Chinese has no templates");
        assert_eq!(Locale::parse("de"), None);
        assert_eq!(Locale::parse("en--"), None);
        assert_eq!(Locale::pick("", "ru"), Locale::Ru);
        assert_eq!(Locale::pick("zh-CN", "ru"), Locale::ZhCn);
        assert_eq!(Locale::pick("xx", ""), Locale::En);
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let s = RetrySchedule { first: Duration::from_secs(1), max: Duration::from_secs(60) };
        for attempts in 1..=20u32 {
            let d = s.delay(attempts);
            let base = Duration::from_secs(1u64 << (attempts - 1).min(6)).min(s.max);
            assert!(d >= base && d <= base * 2, "attempt {attempts}: {d:?} vs {base:?}");
        }
    }
}
