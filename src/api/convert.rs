//! Domain ⇄ protobuf conversions.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        Violations,
        access::{Module, Permission, Scope},
        department::Department,
        etag,
        notification::{Channel, Notification, NotificationState, NotificationTemplate},
        ownership::{RuleTarget, Transfer, TransferRule, TransferState},
        role::Role,
        tenant::{LoginIdentifiers, SettingsPatch, Tenant, TenantSettings},
        user::{User, UserState},
        validate,
    },
    proto::v1 as pb,
};

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(ts)
}

pub fn from_ts(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub fn dur(secs: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: secs as i64, nanos: 0 }
}

/// A duration in whole seconds (sub-second parts are dropped); unset → 0 (the default).
pub fn secs(v: &mut Violations, field: &str, d: Option<&prost_types::Duration>) -> u64 {
    match d {
        None => 0,
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            v.add(field, "must not be negative");
            0
        }
        Some(d) => d.seconds as u64,
    }
}

fn count(v: &mut Violations, field: &str, n: i32) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| {
        v.add(field, "must not be negative");
        0
    })
}

pub fn state_to_proto(s: UserState) -> pb::UserState {
    match s {
        UserState::Invited => pb::UserState::Invited,
        UserState::Active => pb::UserState::Active,
        UserState::Deactivated => pb::UserState::Deactivated,
        UserState::Deleted => pb::UserState::Deleted,
        UserState::Purged => pb::UserState::Purged,
    }
}

pub fn state_from_proto(s: pb::UserState) -> Option<UserState> {
    match s {
        pb::UserState::Unspecified => None,
        pb::UserState::Invited => Some(UserState::Invited),
        pb::UserState::Active => Some(UserState::Active),
        pb::UserState::Deactivated => Some(UserState::Deactivated),
        pb::UserState::Deleted => Some(UserState::Deleted),
        pb::UserState::Purged => Some(UserState::Purged),
    }
}

pub fn settings_to_proto(s: &TenantSettings) -> pb::TenantSettings {
    pb::TenantSettings {
        password_policy: Some(pb::PasswordPolicy { min_length: s.password_min_length as i32 }),
        session_policy: Some(pb::SessionPolicy {
            max_sessions_per_user: s.max_sessions_per_user as i32,
            idle_timeout: Some(dur(s.idle_timeout_secs)),
            absolute_lifetime: Some(dur(s.absolute_lifetime_secs)),
            access_token_ttl: Some(dur(s.access_token_ttl_secs)),
        }),
        lockout_policy: Some(pb::LockoutPolicy {
            max_failed_attempts: s.lockout_max_failed_attempts as i32,
            lockout_duration: Some(dur(s.lockout_duration_secs)),
        }),
        restore_window: Some(dur(s.restore_window_secs)),
        invitation_ttl: Some(dur(s.invitation_ttl_secs)),
        require_mfa_for_admins: s.require_mfa_for_admins,
        audit_retention: Some(dur(s.audit_retention_secs)),
        notification_policy: Some(pb::NotificationPolicy {
            default_locale: s.default_locale.clone(),
            link_base_url: s.link_base_url.clone(),
            channel: match s.channel {
                None => pb::NotificationChannel::Unspecified,
                Some(Channel::Email) => pb::NotificationChannel::Email,
                Some(Channel::Webhook) => pb::NotificationChannel::Webhook,
            } as i32,
        }),
        scim_policy: Some(pb::ScimPolicy { create_departments: s.scim_create_departments }),
        login_policy: Some(pb::LoginPolicy {
            identifiers: [
                (s.login_identifiers.email, pb::LoginIdentifier::Email),
                (s.login_identifiers.username, pb::LoginIdentifier::Username),
                (s.login_identifiers.phone, pb::LoginIdentifier::Phone),
            ]
            .into_iter()
            .filter_map(|(on, id)| on.then_some(id as i32))
            .collect(),
        }),
    }
}

/// Settings paths accepted in `UpdateTenant`'s mask.
pub const SETTINGS_PATHS: &[&str] = &[
    "settings",
    "settings.password_policy",
    "settings.session_policy",
    "settings.lockout_policy",
    "settings.restore_window",
    "settings.invitation_ttl",
    "settings.require_mfa_for_admins",
    "settings.audit_retention",
    "settings.notification_policy",
    "settings.scim_policy",
    "settings.login_policy",
];

/// The settings changes named by `paths` (all of them when `paths` contains "settings"), taken
/// from `s`; unset values reset to the defaults.
pub fn settings_patch(v: &mut Violations, s: Option<&pb::TenantSettings>, paths: &[String]) -> SettingsPatch {
    let default = pb::TenantSettings::default();
    let s = s.unwrap_or(&default);
    let all = paths.iter().any(|p| p == "settings");
    let has = |p: &str| all || paths.iter().any(|x| x == p);
    let base = "tenant.settings";
    let mut out = SettingsPatch::default();
    if has("settings.password_policy") {
        let p = s.password_policy.unwrap_or_default();
        out.password_min_length = Some(count(v, &format!("{base}.password_policy.min_length"), p.min_length));
    }
    if has("settings.session_policy") {
        let p = s.session_policy.unwrap_or_default();
        out.max_sessions_per_user =
            Some(count(v, &format!("{base}.session_policy.max_sessions_per_user"), p.max_sessions_per_user));
        out.idle_timeout_secs = Some(secs(v, &format!("{base}.session_policy.idle_timeout"), p.idle_timeout.as_ref()));
        out.absolute_lifetime_secs =
            Some(secs(v, &format!("{base}.session_policy.absolute_lifetime"), p.absolute_lifetime.as_ref()));
        out.access_token_ttl_secs =
            Some(secs(v, &format!("{base}.session_policy.access_token_ttl"), p.access_token_ttl.as_ref()));
    }
    if has("settings.lockout_policy") {
        let p = s.lockout_policy.unwrap_or_default();
        out.lockout_max_failed_attempts =
            Some(count(v, &format!("{base}.lockout_policy.max_failed_attempts"), p.max_failed_attempts));
        out.lockout_duration_secs =
            Some(secs(v, &format!("{base}.lockout_policy.lockout_duration"), p.lockout_duration.as_ref()));
    }
    if has("settings.restore_window") {
        out.restore_window_secs = Some(secs(v, &format!("{base}.restore_window"), s.restore_window.as_ref()));
    }
    if has("settings.invitation_ttl") {
        out.invitation_ttl_secs = Some(secs(v, &format!("{base}.invitation_ttl"), s.invitation_ttl.as_ref()));
    }
    if has("settings.require_mfa_for_admins") {
        out.require_mfa_for_admins = Some(s.require_mfa_for_admins);
    }
    if has("settings.audit_retention") {
        out.audit_retention_secs = Some(secs(v, &format!("{base}.audit_retention"), s.audit_retention.as_ref()));
    }
    if has("settings.notification_policy") {
        let p = s.notification_policy.clone().unwrap_or_default();
        let field = format!("{base}.notification_policy");
        out.default_locale = v.check(&format!("{field}.default_locale"), validate::locale(&p.default_locale));
        out.link_base_url = v.check(&format!("{field}.link_base_url"), validate::link_base(&p.link_base_url));
        out.channel = match pb::NotificationChannel::try_from(p.channel) {
            Ok(pb::NotificationChannel::Unspecified) => Some(None),
            Ok(pb::NotificationChannel::Email) => Some(Some(Channel::Email)),
            Ok(pb::NotificationChannel::Webhook) => Some(Some(Channel::Webhook)),
            Err(_) => {
                v.add(format!("{field}.channel"), "must be a NotificationChannel");
                None
            }
        };
    }
    if has("settings.scim_policy") {
        out.scim_create_departments = Some(s.scim_policy.unwrap_or_default().create_departments);
    }
    if has("settings.login_policy") {
        let ids = s.login_policy.clone().unwrap_or_default().identifiers;
        out.login_identifiers = login_identifiers(v, &format!("{base}.login_policy.identifiers"), &ids);
    }
    out
}

/// A login policy's identifiers: empty = the default (e-mail only); each known kind at most once.
fn login_identifiers(v: &mut Violations, field: &str, ids: &[i32]) -> Option<LoginIdentifiers> {
    if ids.is_empty() {
        return Some(LoginIdentifiers::default());
    }
    let mut out = LoginIdentifiers { email: false, username: false, phone: false };
    for id in ids {
        let slot = match pb::LoginIdentifier::try_from(*id) {
            Ok(pb::LoginIdentifier::Email) => &mut out.email,
            Ok(pb::LoginIdentifier::Username) => &mut out.username,
            Ok(pb::LoginIdentifier::Phone) => &mut out.phone,
            Ok(pb::LoginIdentifier::Unspecified) | Err(_) => {
                v.add(field, "must hold LOGIN_IDENTIFIER_EMAIL, _USERNAME or _PHONE");
                return None;
            }
        };
        if std::mem::replace(slot, true) {
            v.add(field, "must name each identifier at most once");
            return None;
        }
    }
    Some(out)
}

pub fn tenant_to_proto(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        settings: Some(settings_to_proto(&t.settings)),
        tenant_id: t.tenant_id,
        display_name: t.display_name,
        seat_limit: t.seat_limit,
        seats_used: t.seats_used,
        create_time: Some(ts(t.create_time)),
        update_time: Some(ts(t.update_time)),
        etag: etag(t.version),
        state: if t.suspension.is_some() { pb::TenantState::Suspended } else { pb::TenantState::Active }.into(),
        suspend_reason: t.suspension.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
        suspend_time: t.suspension.map(|s| ts(s.since)),
    }
}

pub fn notification_state_to_proto(s: NotificationState) -> pb::NotificationState {
    match s {
        NotificationState::Pending => pb::NotificationState::Pending,
        NotificationState::Sent => pb::NotificationState::Sent,
        NotificationState::Failed => pb::NotificationState::Failed,
    }
}

pub fn notification_state_from_proto(s: pb::NotificationState) -> Option<NotificationState> {
    match s {
        pb::NotificationState::Unspecified => None,
        pb::NotificationState::Pending => Some(NotificationState::Pending),
        pb::NotificationState::Sent => Some(NotificationState::Sent),
        pb::NotificationState::Failed => Some(NotificationState::Failed),
    }
}

pub fn notification_to_proto(n: Notification) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.to_string(),
        tenant_id: n.tenant_id,
        user_id: n.user_id.map(|u| u.to_string()).unwrap_or_default(),
        kind: n.kind.as_str().to_owned(),
        channel: n.channel,
        state: notification_state_to_proto(n.state) as i32,
        attempts: n.attempts,
        last_error: n.last_error.unwrap_or_default(),
        locale: n.locale,
        create_time: Some(ts(n.create_time)),
        update_time: Some(ts(n.update_time)),
        sent_time: opt_ts(n.sent_time),
        next_attempt_time: (n.state == NotificationState::Pending).then(|| ts(n.next_attempt_time)),
    }
}

pub fn user_to_proto(u: User) -> pb::User {
    pb::User {
        user_id: u.user_id.to_string(),
        tenant_id: u.tenant_id,
        email: u.email.unwrap_or_default(),
        given_name: u.given_name,
        family_name: u.family_name,
        display_name: u.display_name,
        phone: u.phone.unwrap_or_default(),
        position: u.position,
        employee_number: u.employee_number.unwrap_or_default(),
        department_id: u.department_id.map(|d| d.to_string()).unwrap_or_default(),
        hire_date: u.hire_date.map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default(),
        state: state_to_proto(u.state) as i32,
        role_ids: u.role_ids.iter().map(|r| r.to_string()).collect(),
        mfa_enrolled: u.mfa_enrolled,
        must_change_password: u.must_change_password,
        attributes: u.attributes,
        last_login_time: opt_ts(u.last_login_time),
        create_time: Some(ts(u.create_time)),
        update_time: Some(ts(u.update_time)),
        deactivate_time: opt_ts(u.deactivate_time),
        delete_time: opt_ts(u.delete_time),
        purge_after: opt_ts(u.purge_after),
        etag: etag(u.version),
        purge_time: opt_ts(u.purge_time),
        locale: u.locale,
        username: u.username.unwrap_or_default(),
        external_id: u.external_id.unwrap_or_default(),
        invitation_delivery: u.invitation_delivery.map_or(0, |s| notification_state_to_proto(s) as i32),
    }
}

pub fn department_to_proto(d: Department) -> pb::Department {
    pb::Department {
        department_id: d.department_id.to_string(),
        tenant_id: d.tenant_id,
        name: d.name,
        parent_department_id: d.parent_department_id.map(|p| p.to_string()).unwrap_or_default(),
        head_user_id: d.head_user_id.map(|h| h.to_string()).unwrap_or_default(),
        create_time: Some(ts(d.create_time)),
        update_time: Some(ts(d.update_time)),
        etag: etag(d.version),
    }
}

pub fn scope_to_proto(s: Scope) -> pb::Scope {
    match s {
        Scope::None => pb::Scope::None,
        Scope::Own => pb::Scope::Own,
        Scope::Department => pb::Scope::Department,
        Scope::Tenant => pb::Scope::Tenant,
    }
}

pub fn scope_from_proto(s: i32) -> Option<Scope> {
    match pb::Scope::try_from(s).ok()? {
        pb::Scope::Unspecified => None,
        pb::Scope::None => Some(Scope::None),
        pb::Scope::Own => Some(Scope::Own),
        pb::Scope::Department => Some(Scope::Department),
        pb::Scope::Tenant => Some(Scope::Tenant),
    }
}

/// Permissions of a request; a missing scope is a violation under `field[i].scope`.
pub fn permissions_from_proto(v: &mut Violations, field: &str, ps: &[pb::Permission]) -> Vec<Permission> {
    let mut out = Vec::with_capacity(ps.len());
    for (i, p) in ps.iter().enumerate() {
        let scope = scope_from_proto(p.scope).unwrap_or_else(|| {
            // Keep the position, so later checks name the right index (the request fails anyway).
            v.add(
                format!("{field}[{i}].scope"),
                "must be one of SCOPE_NONE, SCOPE_OWN, SCOPE_DEPARTMENT, SCOPE_TENANT",
            );
            Scope::None
        });
        out.push(Permission { module: p.module.clone(), action: p.action.clone(), scope });
    }
    out
}

pub fn permission_to_proto(p: Permission) -> pb::Permission {
    pb::Permission { module: p.module, action: p.action, scope: scope_to_proto(p.scope) as i32 }
}

pub fn role_to_proto(r: Role) -> pb::Role {
    pb::Role {
        role_id: r.role_id.to_string(),
        tenant_id: r.tenant_id,
        name: r.name,
        description: r.description,
        builtin: r.builtin.is_some(),
        permissions: r.permissions.into_iter().map(permission_to_proto).collect(),
        user_count: r.user_count as i64,
        create_time: Some(ts(r.create_time)),
        update_time: Some(ts(r.update_time)),
        etag: etag(r.version),
    }
}

pub fn module_to_proto(m: Module) -> pb::Module {
    pb::Module {
        etag: if m.builtin { String::new() } else { etag(m.version) },
        name: m.name,
        display_name: m.display_name,
        actions: m.actions,
        builtin: m.builtin,
    }
}

pub fn transfer_state_to_proto(s: TransferState) -> pb::TransferState {
    match s {
        TransferState::Pending => pb::TransferState::Pending,
        TransferState::Running => pb::TransferState::Running,
        TransferState::Succeeded => pb::TransferState::Succeeded,
        TransferState::Failed => pb::TransferState::Failed,
        TransferState::Cancelled => pb::TransferState::Cancelled,
    }
}

pub fn transfer_state_from_proto(s: pb::TransferState) -> Option<TransferState> {
    match s {
        pb::TransferState::Unspecified => None,
        pb::TransferState::Pending => Some(TransferState::Pending),
        pb::TransferState::Running => Some(TransferState::Running),
        pb::TransferState::Succeeded => Some(TransferState::Succeeded),
        pb::TransferState::Failed => Some(TransferState::Failed),
        pb::TransferState::Cancelled => Some(TransferState::Cancelled),
    }
}

pub fn rule_to_proto(r: &TransferRule) -> pb::TransferRule {
    pb::TransferRule {
        module: r.module.clone().unwrap_or_default(),
        target: Some(match r.target {
            RuleTarget::User(u) => pb::transfer_rule::Target::ToUserId(u.to_string()),
            RuleTarget::RoundRobin(d) => pb::transfer_rule::Target::RoundRobinDepartmentId(d.to_string()),
        }),
    }
}

/// Rules of a request; each bad one is a field violation under `rules[i]`.
pub fn rules_from_proto(v: &mut Violations, rules: &[pb::TransferRule]) -> Vec<TransferRule> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let module = (!r.module.is_empty()).then(|| r.module.clone());
        if r.module.len() > 63 {
            v.add(format!("rules[{i}].module"), "is not a module name (at most 63 characters)");
        }
        let target = match &r.target {
            None => {
                v.add(format!("rules[{i}].target"), "give to_user_id or round_robin_department_id");
                continue;
            }
            Some(pb::transfer_rule::Target::ToUserId(u)) => {
                match v.check(&format!("rules[{i}].to_user_id"), validate::uuid(u)) {
                    Some(u) => RuleTarget::User(u),
                    None => continue,
                }
            }
            Some(pb::transfer_rule::Target::RoundRobinDepartmentId(d)) => {
                match v.check(&format!("rules[{i}].round_robin_department_id"), validate::uuid(d)) {
                    Some(d) => RuleTarget::RoundRobin(d),
                    None => continue,
                }
            }
        };
        out.push(TransferRule { module, target });
    }
    if rules.len() > 100 {
        v.add("rules", "at most 100 rules");
    }
    out
}

pub fn transfer_to_proto(t: Transfer) -> pb::Transfer {
    pb::Transfer {
        transfer_id: t.transfer_id.to_string(),
        tenant_id: t.tenant_id,
        from_user_id: t.from_user_id.to_string(),
        rules: t.rules.iter().map(rule_to_proto).collect(),
        state: transfer_state_to_proto(t.state) as i32,
        total: t.total,
        moved: t.moved,
        progress: t
            .progress
            .into_iter()
            .map(|p| pb::ModuleProgress {
                module: p.module,
                moved: p.moved,
                to_user_ids: p.targets.iter().map(|u| u.to_string()).collect(),
            })
            .collect(),
        error: t.error,
        create_time: Some(ts(t.create_time)),
        start_time: opt_ts(t.start_time),
        end_time: opt_ts(t.end_time),
        update_time: Some(ts(t.update_time)),
    }
}

pub fn precondition_to_proto(v: crate::domain::error::PreconditionViolation) -> pb::TransferViolation {
    pb::TransferViolation { r#type: v.kind, subject: v.subject, description: v.description }
}

pub fn counts_to_proto(counts: Vec<(String, i64)>) -> (Vec<pb::ModuleCount>, i64) {
    let total = counts.iter().map(|(_, n)| n).sum();
    (counts.into_iter().map(|(module, count)| pb::ModuleCount { module, count }).collect(), total)
}

pub fn template_to_proto(t: NotificationTemplate) -> pb::NotificationTemplate {
    pb::NotificationTemplate {
        kind: t.kind.as_str().to_owned(),
        locale: t.locale.tag().to_owned(),
        subject: t.subject,
        body: t.body,
        custom: t.custom,
        update_time: t.update_time.map(ts),
        etag: t.version.map(etag).unwrap_or_default(),
    }
}
