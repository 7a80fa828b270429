//! Users (employees) and their lifecycle.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifecycle state. See `crm.iam.v1.UserState` for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserState {
    Invited,
    Active,
    Deactivated,
    Deleted,
    Purged,
}

impl UserState {
    pub const ALL: [UserState; 5] =
        [UserState::Invited, UserState::Active, UserState::Deactivated, UserState::Deleted, UserState::Purged];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<UserState> {
        s.parse().ok()
    }

    /// ACTIVE and INVITED users count against the tenant's seat limit.
    pub fn takes_seat(self) -> bool {
        matches!(self, UserState::Active | UserState::Invited)
    }
}

/// A user as stored (never with a password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: Uuid,
    pub tenant_id: String,
    pub email: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub position: String,
    pub employee_number: Option<String>,
    pub department_id: Option<Uuid>,
    pub hire_date: Option<NaiveDate>,
    /// A login name unique in the tenant (SCIM `userName` when it is not the e-mail address).
    pub username: Option<String>,
    /// The identity provider's id of the user (SCIM `externalId`).
    pub external_id: Option<String>,
    pub state: UserState,
    pub role_ids: Vec<Uuid>,
    pub mfa_enrolled: bool,
    pub must_change_password: bool,
    pub attributes: BTreeMap<String, String>,
    /// Language of the user's messages ("" = the tenant's default).
    pub locale: String,
    pub last_login_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub deactivate_time: Option<DateTime<Utc>>,
    pub delete_time: Option<DateTime<Utc>>,
    pub purge_after: Option<DateTime<Utc>>,
    pub purge_time: Option<DateTime<Utc>>,
    pub version: i64,
    /// Whether the latest invitation was delivered (INVITED users, filled in by GetUser only;
    /// not part of the user's record or its audit diffs).
    #[serde(skip)]
    pub invitation_delivery: Option<super::notification::NotificationState>,
}

/// A validated profile of a new user.
#[derive(Debug, Clone)]
pub struct Profile {
    pub email: String,
    pub email_key: String,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub position: String,
    pub employee_number: Option<String>,
    pub department_id: Option<Uuid>,
    pub hire_date: Option<NaiveDate>,
    pub attributes: BTreeMap<String, String>,
    pub locale: String,
    /// The login name and its uniqueness key.
    pub username: Option<(String, String)>,
    pub external_id: Option<String>,
}

/// Who the person is and how to reach them, in the order shown: the start of every list of user
/// fields (the profile, the personal data a purge erases, the CSV columns), so a field added here
/// is edited, erased and exported alike.
pub const PERSON_FIELDS: [&str; 7] =
    ["email", "given_name", "family_name", "display_name", "phone", "position", "employee_number"];

/// The fields of a user's profile (what UpdateUser edits, what a purge erases besides credentials).
pub const PROFILE_FIELDS: &[&str] =
    &fields::<13>(&PERSON_FIELDS, &["department_id", "hire_date", "attributes", "locale", "username", "external_id"]);

/// `first` then `then`, as one list of `N` field names (built at compile time).
pub const fn fields<const N: usize>(first: &[&'static str], then: &[&'static str]) -> [&'static str; N] {
    assert!(first.len() + then.len() == N, "N must be the length of both lists together");
    let mut out = [""; N];
    let mut i = 0;
    while i < first.len() {
        out[i] = first[i];
        i += 1;
    }
    let mut j = 0;
    while j < then.len() {
        out[i + j] = then[j];
        j += 1;
    }
    out
}

/// "Given Family", the display name used when none is given.
pub fn derived_display_name(given: &str, family: &str) -> String {
    format!("{given} {family}").trim().to_owned()
}

/// How a new user gets in: a password set now, or an invitation accepted later.
pub enum Credential {
    Password { password: secrecy::SecretString, permanent: bool },
    Invitation,
}

/// Validated profile changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<(String, String)>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub phone: Option<Option<String>>,
    pub position: Option<String>,
    pub employee_number: Option<Option<String>>,
    pub department_id: Option<Option<Uuid>>,
    pub hire_date: Option<Option<NaiveDate>>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub locale: Option<String>,
    pub username: Option<Option<(String, String)>>,
    pub external_id: Option<Option<String>>,
}

/// A single-use token issued to a user (invitation or password reset). The token is returned
/// once to the caller; only its hash is stored. Never serialized, so it never reaches the
/// idempotency store or an audit record.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: secrecy::SecretString,
    pub expire_time: DateTime<Utc>,
}

/// Result of creating a user (or of resending an invitation / resetting a password).
#[derive(Clone, Serialize, Deserialize)]
pub struct UserWithToken {
    pub user: User,
    #[serde(skip)]
    pub token: Option<IssuedToken>,
    /// When the token (if one was issued) expires; kept for replays, which carry no token.
    pub token_expire_time: Option<DateTime<Utc>>,
}

/// Filters of a user listing.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub states: Vec<UserState>,
    /// Users of any of these departments (None: any department or none).
    pub department_ids: Option<Vec<Uuid>>,
    /// Case-insensitive substring of email or a name.
    pub query: Option<String>,
    /// Only users of these departments may be shown at all (the caller's visibility; None: all).
    pub visible_department_ids: Option<Vec<Uuid>>,
    /// Users who have not logged in since this time (never-logged-in users included).
    pub last_login_before: Option<DateTime<Utc>>,
    /// Users whose last login is at or after this time.
    pub last_login_after: Option<DateTime<Utc>>,
    pub never_logged_in: bool,
    /// Some(true): only users with a second factor; Some(false): only users without.
    pub mfa_enrolled: Option<bool>,
    /// Only holders of this role.
    pub role_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_lists_grow_from_the_person_fields() {
        assert_eq!(&PROFILE_FIELDS[..7], &PERSON_FIELDS[..]);
        assert_eq!(
            &PROFILE_FIELDS[7..],
            &["department_id", "hire_date", "attributes", "locale", "username", "external_id"]
        );
        let personal = crate::domain::audit::PERSONAL_FIELDS;
        assert!(PERSON_FIELDS.iter().all(|f| personal.contains(f)), "every person field is personal data");
        assert!(!personal.contains(&"department_id"), "the department is not personal data");
        assert_eq!(fields::<3>(&["a"], &["b", "c"]), ["a", "b", "c"]);
    }
}
