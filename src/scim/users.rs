//! SCIM Users ↔ crm-iam users. The mapping (also in the README):
//!
//! | SCIM | crm-iam |
//! | --- | --- |
//! | `id` | `user_id` |
//! | `externalId` | `external_id` |
//! | `userName` | `username`, or the e-mail address when they are the same |
//! | `emails` (`work`, else the primary, else the first) | `email` |
//! | `name.givenName`, `name.familyName`, `displayName` | `given_name`, `family_name`, `display_name` |
//! | `title` | `position` |
//! | `phoneNumbers` (`work`, else the primary, else the first; E.164 or `tel:`) | `phone` |
//! | `active` | `state`: false = DEACTIVATED; true = ACTIVE (or INVITED until the invitation is accepted) |
//! | enterprise `employeeNumber` | `employee_number` |
//! | enterprise `department` (by name) | `department_id` |
//! | enterprise `manager.value` | `attributes["manager"]` (a user id of the tenant) |
//! | `groups` (read-only) | the user's roles |
//! | `meta.version` | the etag |

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{Path, Query},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    ListQuery, Scim, ScimError, ScimResult, body_json, etag, filter, if_match, list_response, patch, resource, schema,
    sort,
};
use crate::{
    domain::{
        Reason, Violations,
        user::{Credential, Profile, User, UserPatch, UserState, derived_display_name},
        validate,
    },
    service::{
        scim::{Directory, IdentityKind},
        users::{ChangeUserState, CreateUser, UpdateUser, UserRef},
    },
};

/// The attribute name of a field in violations: `emails` for `user.email`.
pub fn scim_name(field: &str) -> &str {
    match field.trim_start_matches("user.") {
        "email" => "emails",
        "given_name" => "name.givenName",
        "family_name" => "name.familyName",
        "display_name" => "displayName",
        "position" => "title",
        "phone" => "phoneNumbers",
        "employee_number" => "employeeNumber",
        "department_id" => "department",
        "username" => "userName",
        "external_id" => "externalId",
        other => other,
    }
}

/// A user as SCIM shows it.
pub fn to_scim(u: &User, dir: &Directory, base: &str) -> Value {
    let id = u.user_id.to_string();
    // Empty values are unassigned (RFC 7643 §2.5), and a display name made from the name is not
    // one of its own.
    let mut name = Map::new();
    for (k, v) in [("givenName", &u.given_name), ("familyName", &u.family_name)] {
        if !v.is_empty() {
            name.insert(k.into(), v.as_str().into());
        }
    }
    let mut r = json!({
        "schemas": [schema::USER, schema::ENTERPRISE_USER],
        "id": id,
        "userName": u.username.clone().or_else(|| u.email.clone()).unwrap_or_default(),
        "active": matches!(u.state, UserState::Active | UserState::Invited),
        "meta": {
            "resourceType": "User",
            "created": u.create_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastModified": u.update_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("{base}/Users/{id}"),
            "version": etag(&crate::domain::etag(u.version)),
        },
    });
    if !name.is_empty() {
        r["name"] = Value::Object(name);
    }
    if !u.display_name.is_empty() && u.display_name != derived_display_name(&u.given_name, &u.family_name) {
        r["displayName"] = u.display_name.as_str().into();
    }
    if let Some(x) = &u.external_id {
        r["externalId"] = x.as_str().into();
    }
    if let Some(e) = &u.email {
        r["emails"] = json!([{"value": e}]);
    }
    if let Some(p) = &u.phone {
        r["phoneNumbers"] = json!([{"value": p}]);
    }
    if !u.position.is_empty() {
        r["title"] = u.position.as_str().into();
    }
    let groups: Vec<Value> = u
        .role_ids
        .iter()
        .map(|g| json!({"value": g.to_string(), "display": dir.role_name(*g), "$ref": format!("{base}/Groups/{g}")}))
        .collect();
    if !groups.is_empty() {
        r["groups"] = groups.into();
    }
    let mut ext = Map::new();
    if let Some(n) = &u.employee_number {
        ext.insert("employeeNumber".into(), n.as_str().into());
    }
    if let Some(d) = u.department_id.and_then(|d| dir.department_name(d)) {
        ext.insert("department".into(), d.into());
    }
    if let Some(m) = u.attributes.get("manager") {
        ext.insert("manager".into(), json!({"value": m, "$ref": format!("{base}/Users/{m}")}));
    }
    if !ext.is_empty() {
        r[schema::ENTERPRISE_USER] = Value::Object(ext);
    }
    r
}

/// What a SCIM representation asks the user to be, validated field by field.
struct Desired {
    profile: Profile,
    active: bool,
}

fn string_at<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    filter::member(v, name).filter(|v| !v.is_null())
}

fn text(v: &Value, name: &str, out: &mut Violations, field: &str) -> String {
    match string_at(v, name) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            out.add(field, "must be a string");
            String::new()
        }
    }
}

/// The one value of a multi-valued attribute that counts: the primary, else `work`, else the first.
fn chosen(v: &Value, name: &str, out: &mut Violations) -> Option<String> {
    let items = match string_at(v, name)? {
        Value::Array(items) => items.clone(),
        Value::Object(_) => vec![filter::member(v, name).cloned().unwrap_or_default()],
        _ => {
            out.add(name, "must be a list");
            return None;
        }
    };
    let is = |i: &Value, k: &str, want: &Value| {
        filter::member(i, k).is_some_and(|x| {
            x == want || x.as_str().is_some_and(|s| Some(s.to_ascii_lowercase().as_str()) == want.as_str())
        })
    };
    // The work value first: crm-iam keeps one, and Entra ID edits `emails[type eq "work"]`.
    let pick = items
        .iter()
        .find(|i| is(i, "type", &Value::String("work".into())))
        .or_else(|| {
            items.iter().find(|i| {
                is(i, "primary", &Value::Bool(true))
                    || filter::member(i, "primary")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.eq_ignore_ascii_case("true"))
            })
        })
        .or(items.first())?;
    match filter::member(pick, "value") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => {
            out.add(format!("{name}.value"), "must be a string");
            None
        }
    }
}

/// SCIM booleans as IdPs send them: `true`, or Entra ID's `"True"` / `"False"`.
fn boolean(v: Option<&Value>, field: &str, out: &mut Violations) -> Option<bool> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(_) => {
            out.add(field, "must be true or false");
            None
        }
    }
}

/// Validates a representation (POST or PUT body, or a patched resource); `current` is the user
/// being replaced (its values stand in for read-only ones).
async fn desired(scim: &Scim, dir: &mut Directory, r: &Value, v: &mut Violations) -> ScimResult<Option<Desired>> {
    let iam = &scim.iam;
    let user_name = text(r, "userName", v, "userName").trim().to_owned();
    if user_name.is_empty() {
        v.add("userName", "is required");
    }
    let email = match chosen(r, "emails", v) {
        Some(e) => e,
        None if user_name.contains('@') => user_name.clone(),
        None => {
            v.add("emails", "a user needs an e-mail address (in emails, or as the userName)");
            String::new()
        }
    };
    let email = v.check("emails", validate::email(&email));
    let username = v.check("userName", validate::username(&user_name));
    let external_id = text(r, "externalId", v, "externalId");
    let external_id = v.check("externalId", validate::external_id(&external_id));
    let name = string_at(r, "name").cloned().unwrap_or(Value::Null);
    let given = text(&name, "givenName", v, "name.givenName");
    let given = v.check("name.givenName", validate::text(&given, 100));
    let family = text(&name, "familyName", v, "name.familyName");
    let family = v.check("name.familyName", validate::text(&family, 100));
    let display = text(r, "displayName", v, "displayName");
    let display = v.check("displayName", validate::text(&display, 200));
    let title = text(r, "title", v, "title");
    let title = v.check("title", validate::text(&title, 100));
    let phone = chosen(r, "phoneNumbers", v).map(|p| p.trim_start_matches("tel:").to_owned()).unwrap_or_default();
    let phone = v.check("phoneNumbers", validate::phone(&phone));
    let active = boolean(filter::member(r, "active"), "active", v).unwrap_or(true);
    let ext = string_at(r, schema::ENTERPRISE_USER).cloned().unwrap_or(Value::Null);
    let number = text(&ext, "employeeNumber", v, "employeeNumber");
    let number = v.check("employeeNumber", validate::employee_number(&number));
    let department = text(&ext, "department", v, "department");
    let department_id = if department.trim().is_empty() {
        Some(None)
    } else {
        match iam.scim_department(&scim.call, &scim.tenant_id, dir, department.trim()).await {
            Ok(d) => Some(Some(d)),
            Err(e) if e.kind == crate::domain::Kind::InvalidArgument || e.reason == Reason::DepartmentNotFound => {
                let why = e.field_violations.first().map(|f| f.description.clone()).unwrap_or(e.message);
                v.add("department", why);
                None
            }
            Err(e) => return Err(e.into()),
        }
    };
    let manager = string_at(&ext, "manager").and_then(|m| match m {
        Value::String(s) => Some(s.clone()),
        m => filter::member(m, "value").and_then(Value::as_str).map(str::to_owned),
    });
    let mut attributes = BTreeMap::new();
    if let Some(m) = manager.filter(|m| !m.is_empty()) {
        let found = match Uuid::parse_str(&m) {
            Ok(id) => {
                match iam.get_user(&scim.call, UserRef { tenant_id: scim.tenant_id.clone(), user_id: id }).await {
                    Ok(u) if !matches!(u.state, UserState::Deleted | UserState::Purged) => Some(id),
                    Ok(_) => None,
                    Err(e) if e.reason == Reason::UserNotFound => None,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(_) => None,
        };
        match found {
            Some(id) => {
                attributes.insert("manager".to_owned(), id.to_string());
            }
            None => v.add("manager", "must be the id of a user of this tenant"),
        }
    }
    let (Some((email, email_key)), Some(username), Some(external_id), Some(given), Some(family), Some(display)) =
        (email, username, external_id, given, family, display)
    else {
        return Ok(None);
    };
    let (Some(title), Some(phone), Some(number), Some(department_id)) = (title, phone, number, department_id) else {
        return Ok(None);
    };
    // The userName is stored only when it is not the e-mail address itself.
    let username = username.filter(|(_, key)| *key != email_key);
    let display = if display.is_empty() { derived_display_name(&given, &family) } else { display };
    Ok(Some(Desired {
        profile: Profile {
            email,
            email_key,
            given_name: given,
            family_name: family,
            display_name: display,
            phone,
            position: title,
            employee_number: number,
            department_id,
            hire_date: None,
            attributes,
            locale: String::new(),
            username,
            external_id,
        },
        active,
    }))
}

fn invalid(v: Violations) -> ScimError {
    match v.finish() {
        Err(e) => e.into(),
        Ok(()) => ScimError::bad("invalidValue", "the resource is not valid"),
    }
}

async fn load(scim: &Scim, id: &str) -> ScimResult<User> {
    let user_id = Uuid::parse_str(id).map_err(|_| ScimError::not_found(format!("no user {id:?}")))?;
    let user = scim.iam.get_user(&scim.call, UserRef { tenant_id: scim.tenant_id.clone(), user_id }).await?;
    if matches!(user.state, UserState::Deleted | UserState::Purged) {
        return Err(ScimError::not_found(format!("no user {id:?}")));
    }
    Ok(user)
}

pub async fn get(scim: Scim, Path(id): Path<String>, Query(q): Query<ListQuery>) -> ScimResult {
    let user = load(&scim, &id).await?;
    let dir = scim.iam.scim_directory(&scim.call, &scim.tenant_id).await?;
    Ok(resource(StatusCode::OK, &super::project(to_scim(&user, &dir, &scim.base), &q)))
}

pub async fn search(scim: Scim, headers: HeaderMap, body: Bytes) -> ScimResult {
    let q = ListQuery::from_search(&headers, &body)?;
    list(scim, Query(q)).await
}

pub async fn list(scim: Scim, Query(q): Query<ListQuery>) -> ScimResult {
    let (start, count) = q.window()?;
    let parsed = match q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(filter::parse(f).map_err(|e| ScimError::bad("invalidFilter", e))?),
        None => None,
    };
    let dir = scim.iam.scim_directory(&scim.call, &scim.tenant_id).await?;
    // IdPs look a user up before creating it: answered from one indexed read.
    let users = match parsed.as_ref().and_then(filter::lookup) {
        Some((attr, value)) => {
            let kind = if attr == "userName" { IdentityKind::UserName } else { IdentityKind::ExternalId };
            scim.iam.scim_find_user(&scim.call, &scim.tenant_id, kind, value).await?.into_iter().collect()
        }
        None => scim.iam.scim_all_users(&scim.call, &scim.tenant_id).await?,
    };
    let mut all: Vec<Value> = users
        .iter()
        .filter(|u| !matches!(u.state, UserState::Deleted | UserState::Purged))
        .map(|u| to_scim(u, &dir, &scim.base))
        .filter(|r| parsed.as_ref().is_none_or(|f| filter::matches(f, r)))
        .collect();
    sort(&mut all, &q)?;
    Ok(list_response(all, start, count, &q))
}

/// Refuses a userName that already names another user (as its username or, for a user without
/// one, its address): the IdP's `userName eq` lookup must find one person.
async fn user_name_free(scim: &Scim, r: &Value, me: Option<uuid::Uuid>) -> ScimResult<()> {
    let Some(name) = filter::member(r, "userName").and_then(Value::as_str).map(str::trim).filter(|n| !n.is_empty())
    else {
        return Ok(());
    };
    match scim.iam.scim_find_user(&scim.call, &scim.tenant_id, IdentityKind::UserName, name).await? {
        Some(other) if Some(other.user_id) != me => Err(ScimError::new(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            "another user of this tenant has this userName (as username or e-mail address)",
        )),
        _ => Ok(()),
    }
}

pub async fn create(scim: Scim, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let mut dir = scim.iam.scim_directory(&scim.call, &scim.tenant_id).await?;
    let mut v = Violations::default();
    let Some(d) = desired(&scim, &mut dir, &body, &mut v).await? else { return Err(invalid(v)) };
    user_name_free(&scim, &body, None).await?;
    let created = scim
        .iam
        .create_user(
            &scim.call,
            CreateUser {
                tenant_id: scim.tenant_id.clone(),
                profile: Some(d.profile),
                credential: Some(Credential::Invitation),
                role_ids: Vec::new(),
                invalid: v,
            },
        )
        .await?;
    let mut user = created.user;
    if !d.active {
        user = set_active(&scim, user, false).await?;
    }
    Ok(resource(StatusCode::CREATED, &to_scim(&user, &dir, &scim.base)))
}

/// Moves the user to the `active` state asked for (INVITED counts as active).
async fn set_active(scim: &Scim, user: User, active: bool) -> ScimResult<User> {
    let step = ChangeUserState {
        tenant_id: scim.tenant_id.clone(),
        user_id: user.user_id,
        etag: String::new(),
        reason: "SCIM provisioning".into(),
        transfer_to: None,
    };
    Ok(match (active, user.state) {
        (false, UserState::Active | UserState::Invited) => scim.iam.deactivate_user(&scim.call, step).await?.0,
        (true, UserState::Deactivated) => scim.iam.reactivate_user(&scim.call, step).await?,
        _ => user,
    })
}

/// Stores a whole representation over `user` (PUT, and PATCH after applying its operations).
async fn store(scim: &Scim, user: User, etag_sent: String, r: &Value) -> ScimResult {
    let mut dir = scim.iam.scim_directory(&scim.call, &scim.tenant_id).await?;
    let mut v = Violations::default();
    let Some(d) = desired(scim, &mut dir, r, &mut v).await? else { return Err(invalid(v)) };
    user_name_free(scim, r, Some(user.user_id)).await?;
    let p = d.profile;
    let mut attributes = user.attributes.clone();
    attributes.remove("manager");
    attributes.extend(p.attributes);
    // A representation that changes nothing of the profile (a PATCH of `active`, a retried PUT)
    // writes nothing: no new version, no empty `user.updated` event.
    let same = user.email.as_deref() == Some(p.email.as_str())
        && user.given_name == p.given_name
        && user.family_name == p.family_name
        && user.display_name == p.display_name
        && user.phone == p.phone
        && user.position == p.position
        && user.employee_number == p.employee_number
        && user.department_id == p.department_id
        && user.attributes == attributes
        && user.username == p.username.as_ref().map(|(n, _)| n.clone())
        && user.external_id == p.external_id;
    if same {
        let sent = etag_sent;
        if !sent.is_empty() && sent != crate::domain::etag(user.version) {
            return Err(crate::domain::Error::etag_mismatch("user").into());
        }
        let updated = set_active(scim, user, d.active).await?;
        return Ok(resource(StatusCode::OK, &to_scim(&updated, &dir, &scim.base)));
    }
    let patch = UserPatch {
        email: Some((p.email, p.email_key)),
        given_name: Some(p.given_name),
        family_name: Some(p.family_name),
        display_name: Some(p.display_name),
        phone: Some(p.phone),
        position: Some(p.position),
        employee_number: Some(p.employee_number),
        department_id: Some(p.department_id),
        hire_date: None,
        attributes: Some(attributes),
        locale: None,
        username: Some(p.username),
        external_id: Some(p.external_id),
    };
    let etag = if etag_sent.is_empty() { crate::domain::etag(user.version) } else { etag_sent };
    let updated = scim
        .iam
        .update_user(&scim.call, UpdateUser { tenant_id: scim.tenant_id.clone(), user_id: user.user_id, patch, etag })
        .await?;
    let updated = set_active(scim, updated, d.active).await?;
    Ok(resource(StatusCode::OK, &to_scim(&updated, &dir, &scim.base)))
}

pub async fn replace(scim: Scim, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let user = load(&scim, &id).await?;
    store(&scim, user, if_match(&headers), &body).await
}

pub async fn patch(scim: Scim, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let user = load(&scim, &id).await?;
    let sent = if_match(&headers);
    if !sent.is_empty() && sent != crate::domain::etag(user.version) {
        return Err(crate::domain::Error::etag_mismatch("user").into());
    }
    let dir = scim.iam.scim_directory(&scim.call, &scim.tenant_id).await?;
    let mut r = to_scim(&user, &dir, &scim.base);
    patch::apply(&mut r, &body).map_err(|(t, d)| ScimError::bad(t, d))?;
    let etag = crate::domain::etag(user.version);
    store(&scim, user, etag, &r).await
}

/// DELETE: the user is deleted (restorable for the tenant's window, then purged). A user who
/// still owns records is not: nothing may be orphaned. Such a user is deactivated instead (login
/// blocked, seat freed: what the IdP wants now) and the answer is 409 naming what to do, so the
/// IdP's retry succeeds once an administrator has transferred the records.
pub async fn delete(scim: Scim, Path(id): Path<String>, headers: HeaderMap) -> ScimResult<Response> {
    let user = load(&scim, &id).await?;
    let step = |etag: String| ChangeUserState {
        tenant_id: scim.tenant_id.clone(),
        user_id: user.user_id,
        etag,
        reason: "SCIM provisioning: deleted in the identity provider".into(),
        transfer_to: None,
    };
    match scim.iam.delete_user(&scim.call, step(if_match(&headers))).await {
        Ok(_) => Ok(axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT)),
        Err(e) if e.reason == Reason::OwnsRecords => {
            let message = e.message.clone();
            set_active(&scim, user, false).await?;
            Err(ScimError::new(
                StatusCode::CONFLICT,
                None,
                format!("the user was deactivated, not deleted: {message}; transfer their records, then delete again"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}
