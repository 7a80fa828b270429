//! Tenants (customer accounts) and their policies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{error::Violations, notification::Channel};

/// A customer account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub tenant_id: String,
    pub display_name: String,
    /// 0 = unlimited.
    pub seat_limit: i32,
    /// ACTIVE + INVITED users.
    pub seats_used: i32,
    pub settings: TenantSettings,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub version: i64,
    /// Set while the platform has the tenant suspended.
    pub suspension: Option<Suspension>,
}

/// Why and since when a tenant is suspended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    pub since: DateTime<Utc>,
}

impl Tenant {
    /// PERMISSION_DENIED (TENANT_SUSPENDED) while the tenant is suspended.
    pub fn ensure_open(&self) -> crate::domain::Result<()> {
        match self.suspension {
            None => Ok(()),
            Some(_) => Err(crate::domain::Error::new(
                crate::domain::Kind::PermissionDenied,
                crate::domain::Reason::TenantSuspended,
                format!("tenant {:?} is suspended: ask the platform's operators", self.tenant_id),
            )),
        }
    }
}

/// A tenant to create, already validated.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub tenant_id: String,
    pub display_name: String,
    pub seat_limit: i32,
    pub settings: TenantSettings,
}

/// Changes to a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub display_name: Option<String>,
    pub seat_limit: Option<i32>,
    pub settings: SettingsPatch,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Effective policies of a tenant (durations in seconds). Stored as JSON; fields added later
/// take their defaults when reading settings written before them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantSettings {
    pub password_min_length: u32,
    pub max_sessions_per_user: u32,
    pub idle_timeout_secs: u64,
    pub absolute_lifetime_secs: u64,
    pub access_token_ttl_secs: u64,
    pub lockout_max_failed_attempts: u32,
    pub lockout_duration_secs: u64,
    pub restore_window_secs: u64,
    pub invitation_ttl_secs: u64,
    pub require_mfa_for_admins: bool,
    pub audit_retention_secs: u64,
    /// Language of messages to users without their own ("" = English).
    pub default_locale: String,
    /// Base of the links in messages ("" = the server's `notification_link_base`).
    pub link_base_url: String,
    /// How messages reach users (None = the server's default).
    pub channel: Option<Channel>,
    /// Whether a SCIM `department` naming no department creates it.
    pub scim_create_departments: bool,
    /// Which identifiers a password login may name.
    pub login_identifiers: LoginIdentifiers,
}

/// Which identifiers a password login may name (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginIdentifiers {
    pub email: bool,
    pub username: bool,
    pub phone: bool,
}

impl Default for LoginIdentifiers {
    fn default() -> Self {
        LoginIdentifiers { email: true, username: false, phone: false }
    }
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            password_min_length: 12,
            max_sessions_per_user: 10,
            idle_timeout_secs: 12 * HOUR,
            absolute_lifetime_secs: 30 * DAY,
            access_token_ttl_secs: 15 * MINUTE,
            lockout_max_failed_attempts: 5,
            lockout_duration_secs: 5 * MINUTE,
            restore_window_secs: 30 * DAY,
            invitation_ttl_secs: 7 * DAY,
            require_mfa_for_admins: false,
            audit_retention_secs: 400 * DAY,
            default_locale: String::new(),
            link_base_url: String::new(),
            channel: None,
            scim_create_departments: false,
            login_identifiers: LoginIdentifiers::default(),
        }
    }
}

/// Changes to settings. `Some(0)` resets a numeric field to its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub password_min_length: Option<u32>,
    pub max_sessions_per_user: Option<u32>,
    pub idle_timeout_secs: Option<u64>,
    pub absolute_lifetime_secs: Option<u64>,
    pub access_token_ttl_secs: Option<u64>,
    pub lockout_max_failed_attempts: Option<u32>,
    pub lockout_duration_secs: Option<u64>,
    pub restore_window_secs: Option<u64>,
    pub invitation_ttl_secs: Option<u64>,
    pub require_mfa_for_admins: Option<bool>,
    pub audit_retention_secs: Option<u64>,
    /// Already validated and canonical.
    pub default_locale: Option<String>,
    /// Already validated.
    pub link_base_url: Option<String>,
    /// `Some(None)` = the server's default.
    pub channel: Option<Option<Channel>>,
    pub scim_create_departments: Option<bool>,
    pub login_identifiers: Option<LoginIdentifiers>,
}

impl SettingsPatch {
    pub fn is_empty(&self) -> bool {
        *self == SettingsPatch::default()
    }
}

impl TenantSettings {
    /// Applies a patch (0 → default) and checks every range, naming bad fields by their API path.
    pub fn apply(&self, p: &SettingsPatch) -> Result<TenantSettings, Violations> {
        let d = TenantSettings::default();
        let mut s = self.clone();
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = p.$field {
                    s.$field = if v == 0 { d.$field } else { v };
                }
            };
        }
        set!(password_min_length);
        set!(max_sessions_per_user);
        set!(idle_timeout_secs);
        set!(absolute_lifetime_secs);
        set!(access_token_ttl_secs);
        set!(lockout_max_failed_attempts);
        set!(lockout_duration_secs);
        set!(restore_window_secs);
        set!(invitation_ttl_secs);
        set!(audit_retention_secs);
        if let Some(v) = p.require_mfa_for_admins {
            s.require_mfa_for_admins = v;
        }
        if let Some(v) = &p.default_locale {
            s.default_locale = v.clone();
        }
        if let Some(v) = &p.link_base_url {
            s.link_base_url = v.clone();
        }
        if let Some(v) = p.channel {
            s.channel = v;
        }
        if let Some(v) = p.scim_create_departments {
            s.scim_create_departments = v;
        }
        if let Some(v) = p.login_identifiers {
            s.login_identifiers = v;
        }

        let mut v = Violations::default();
        let mut range = |field: &str, value: u64, min: u64, max: u64, unit: &str| {
            if !(min..=max).contains(&value) {
                v.add(field, format!("must be between {} and {}", fmt_amount(min, unit), fmt_amount(max, unit)));
            }
        };
        let base = "tenant.settings.";
        range(&format!("{base}password_policy.min_length"), s.password_min_length.into(), 8, 128, "");
        range(&format!("{base}session_policy.max_sessions_per_user"), s.max_sessions_per_user.into(), 1, 100, "");
        range(&format!("{base}session_policy.idle_timeout"), s.idle_timeout_secs, 5 * MINUTE, 30 * DAY, "s");
        range(&format!("{base}session_policy.absolute_lifetime"), s.absolute_lifetime_secs, HOUR, 365 * DAY, "s");
        range(&format!("{base}session_policy.access_token_ttl"), s.access_token_ttl_secs, MINUTE, HOUR, "s");
        range(&format!("{base}lockout_policy.max_failed_attempts"), s.lockout_max_failed_attempts.into(), 3, 100, "");
        range(&format!("{base}lockout_policy.lockout_duration"), s.lockout_duration_secs, MINUTE, DAY, "s");
        range(&format!("{base}restore_window"), s.restore_window_secs, HOUR, 3650 * DAY, "s");
        range(&format!("{base}invitation_ttl"), s.invitation_ttl_secs, HOUR, 90 * DAY, "s");
        range(&format!("{base}audit_retention"), s.audit_retention_secs, DAY, 3650 * DAY, "s");
        if v.is_empty() { Ok(s) } else { Err(v) }
    }
}

impl TenantSettings {
    /// The platform's floor on audit retention (`min_audit_retention`): a tenant may keep its
    /// trail longer, never shorter, so an administrator cannot erase the record of their own
    /// actions by setting a day. Checked only when a patch sets the retention (a value stored
    /// before the floor was raised stays, and retention applies the floor to it).
    pub fn check_audit_floor(&self, p: &SettingsPatch, floor_secs: u64, base: &str, v: &mut Violations) {
        if p.audit_retention_secs.is_some() && self.audit_retention_secs < floor_secs {
            v.add(
                format!("{base}audit_retention"),
                format!("must be at least {} (the platform's minimum audit retention)", fmt_amount(floor_secs, "s")),
            );
        }
    }
}

fn fmt_amount(value: u64, unit: &str) -> String {
    match unit {
        "s" if value.is_multiple_of(DAY) => format!("{}d", value / DAY),
        "s" if value.is_multiple_of(HOUR) => format!("{}h", value / HOUR),
        "s" if value.is_multiple_of(MINUTE) => format!("{}m", value / MINUTE),
        "s" => format!("{value}s"),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_resets_to_default_and_ranges_are_checked() {
        let s = TenantSettings { restore_window_secs: 99 * DAY, ..Default::default() };
        let reset = s.apply(&SettingsPatch { restore_window_secs: Some(0), ..Default::default() }).unwrap();
        assert_eq!(reset.restore_window_secs, 30 * DAY);

        let err = s
            .apply(&SettingsPatch { invitation_ttl_secs: Some(60), password_min_length: Some(4), ..Default::default() })
            .unwrap_err()
            .into_error();
        let fields: Vec<_> = err.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["tenant.settings.password_policy.min_length", "tenant.settings.invitation_ttl"]);
        assert!(err.field_violations[1].description.contains("1h and 90d"), "{:?}", err.field_violations);
    }

    #[test]
    fn settings_json_missing_fields_take_defaults() {
        let s: TenantSettings = serde_json::from_str(r#"{"restore_window_secs": 7200}"#).unwrap();
        assert_eq!(s.restore_window_secs, 7200);
        assert_eq!(s.invitation_ttl_secs, TenantSettings::default().invitation_ttl_secs);
    }
}
