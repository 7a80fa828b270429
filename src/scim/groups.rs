//! SCIM Groups ↔ crm-iam roles: a group is a role of the tenant (built-in or custom), its members
//! the users holding it, so an IdP's group push gives CRM rights. A group the IdP creates is a
//! custom role without permissions (an administrator gives it rights in RoleAdmin); renaming or
//! deleting applies to custom roles only (built-in ones answer 400 `mutability`). Membership
//! changes are role assignments, each with its own audit event, delegation check and cache
//! invalidation.

use std::collections::BTreeSet;

use axum::{
    body::Bytes,
    extract::{Path, Query},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ListQuery, Scim, ScimError, ScimResult, body_json, etag, filter, if_match, list_response, patch, resource, schema,
    sort,
};
use crate::{
    domain::{
        Reason, Violations,
        role::{NewRole, Role, RolePatch},
        validate,
    },
    service::roles::{Assignment, CreateRole, DeleteRole, UpdateRole},
};

/// The name rule of roles, as RoleAdmin applies it.
const NAME_MAX: usize = 100;

fn to_scim(group: &(Role, Option<String>), members: Option<&[(Uuid, String)]>, base: &str) -> Value {
    let (role, external_id) = group;
    let id = role.role_id.to_string();
    let mut r = json!({
        "schemas": [schema::GROUP],
        "id": id,
        "displayName": role.name,
        "meta": {
            "resourceType": "Group",
            "created": role.create_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastModified": role.update_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("{base}/Groups/{id}"),
            "version": etag(&crate::domain::etag(role.version)),
        },
    });
    if let Some(x) = external_id {
        r["externalId"] = x.as_str().into();
    }
    if let Some(members) = members.filter(|m| !m.is_empty()) {
        r["members"] = members
            .iter()
            .map(|(u, _)| json!({"value": u.to_string(), "$ref": format!("{base}/Users/{u}")}))
            .collect::<Vec<_>>()
            .into();
    }
    r
}

/// Whether the query leaves the members out (IdPs ask so when they only need the group).
fn without_members(q: &ListQuery) -> bool {
    let names = |s: &Option<String>| s.as_deref().unwrap_or_default().to_ascii_lowercase();
    names(&q.excluded_attributes).split(',').any(|a| a.trim() == "members")
        || (!names(&q.attributes).is_empty() && !names(&q.attributes).split(',').any(|a| a.trim() == "members"))
}

type Group = (Role, Option<String>);

async fn load(scim: &Scim, id: &str) -> ScimResult<Group> {
    let role_id = Uuid::parse_str(id).map_err(|_| ScimError::not_found(format!("no group {id:?}")))?;
    Ok(scim.iam.scim_group(&scim.call, &scim.tenant_id, role_id).await?)
}

async fn members(scim: &Scim, role_id: Uuid) -> ScimResult<Vec<(Uuid, String)>> {
    Ok(scim.iam.scim_group_members(&scim.call, &scim.tenant_id, role_id).await?)
}

pub async fn get(scim: Scim, Path(id): Path<String>, Query(q): Query<ListQuery>) -> ScimResult {
    let group = load(&scim, &id).await?;
    let m = if without_members(&q) { None } else { Some(members(&scim, group.0.role_id).await?) };
    Ok(resource(StatusCode::OK, &super::project(to_scim(&group, m.as_deref(), &scim.base), &q)))
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
    let roles = scim.iam.scim_roles(&scim.call, &scim.tenant_id).await?;
    let skip_members = without_members(&q);
    let mut all = Vec::with_capacity(roles.len());
    for group in &roles {
        let m = if skip_members { None } else { Some(members(&scim, group.0.role_id).await?) };
        let r = to_scim(group, m.as_deref(), &scim.base);
        if parsed.as_ref().is_none_or(|f| filter::matches(f, &r)) {
            all.push(r);
        }
    }
    sort(&mut all, &q)?;
    Ok(list_response(all, start, count, &q))
}

/// The display name and member ids a representation asks for.
struct Desired {
    name: String,
    external_id: Option<String>,
    members: Option<BTreeSet<Uuid>>,
}

fn desired(r: &Value) -> ScimResult<Desired> {
    let mut v = Violations::default();
    let external_id = match filter::member(r, "externalId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => v.check("externalId", validate::external_id(s)).flatten(),
        Some(_) => {
            v.add("externalId", "must be a string");
            None
        }
    };
    let name = match filter::member(r, "displayName") {
        Some(Value::String(s)) => v.check("displayName", validate::text(s.trim(), NAME_MAX)),
        _ => {
            v.add("displayName", "is required");
            None
        }
    };
    let members = match filter::member(r, "members") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut ids = BTreeSet::new();
            for (i, m) in items.iter().enumerate() {
                match filter::member(m, "value").and_then(Value::as_str).map(Uuid::parse_str) {
                    Some(Ok(id)) => {
                        ids.insert(id);
                    }
                    _ => v.add(format!("members[{i}].value"), "must be the id of a user of this tenant"),
                }
            }
            Some(ids)
        }
        Some(_) => {
            v.add("members", "must be a list");
            None
        }
    };
    v.finish()?;
    let name = name.unwrap_or_default();
    if name.is_empty() {
        return Err(ScimError::bad("invalidValue", "displayName: is required"));
    }
    Ok(Desired { name, external_id, members })
}

/// Gives and takes the role until its holders are `want`. `since`: the holders the change was
/// computed from (a PATCH): only what it added or removed is applied, so two PATCHes at once
/// (an add and a remove, as Entra ID sends them in parallel) do not undo each other. None (PUT,
/// DELETE): against the holders now.
async fn set_members(
    scim: &Scim,
    role_id: Uuid,
    want: &BTreeSet<Uuid>,
    since: Option<&BTreeSet<Uuid>>,
) -> ScimResult<()> {
    let have: BTreeSet<Uuid> = match since {
        Some(s) => s.clone(),
        None => members(scim, role_id).await?.into_iter().map(|(u, _)| u).collect(),
    };
    let a = |user_id| Assignment { tenant_id: scim.tenant_id.clone(), user_id, role_id };
    for u in want.difference(&have) {
        match scim.iam.assign_role(&scim.call, a(*u)).await {
            Err(e) if e.reason == Reason::UserNotFound => {
                return Err(ScimError::bad("invalidValue", format!("members: {u} is not a user of this tenant")));
            }
            r => {
                r?;
            }
        }
    }
    for u in have.difference(want) {
        match scim.iam.unassign_role(&scim.call, a(*u)).await {
            // Taken away meanwhile (another PATCH, or the user is gone): what was asked holds.
            Err(e) if matches!(e.reason, Reason::RoleNotAssigned | Reason::UserNotFound) => {}
            r => {
                r?;
            }
        }
    }
    Ok(())
}

pub async fn create(scim: Scim, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let Desired { name, external_id, members: want } = desired(&body)?;
    let role = scim
        .iam
        .create_role(
            &scim.call,
            CreateRole {
                tenant_id: scim.tenant_id.clone(),
                role: NewRole {
                    name,
                    description: "Created by SCIM provisioning".into(),
                    permissions: Vec::new(),
                    source_role_id: None,
                },
            },
        )
        .await?;
    if external_id.is_some() {
        scim.iam.scim_set_group_external_id(&scim.call, &scim.tenant_id, role.role_id, external_id).await?;
    }
    if let Some(want) = &want {
        set_members(&scim, role.role_id, want, None).await?;
    }
    let group = load(&scim, &role.role_id.to_string()).await?;
    let m = members(&scim, role.role_id).await?;
    Ok(resource(StatusCode::CREATED, &to_scim(&group, Some(&m), &scim.base)))
}

/// Stores a whole representation over `role` (PUT, and PATCH after applying its operations).
async fn store(scim: &Scim, group: Group, sent: String, r: &Value, since: Option<&BTreeSet<Uuid>>) -> ScimResult {
    let Desired { name, external_id, members: want } = desired(r)?;
    let (role, old_external_id) = group;
    let version = crate::domain::etag(role.version);
    if !sent.is_empty() && sent != version {
        return Err(crate::domain::Error::etag_mismatch("group").into());
    }
    let mut role = role;
    if name != role.name {
        if role.builtin.is_some() {
            return Err(ScimError::bad("mutability", "a built-in role keeps its name"));
        }
        role = scim
            .iam
            .update_role(
                &scim.call,
                UpdateRole {
                    tenant_id: scim.tenant_id.clone(),
                    role_id: role.role_id,
                    patch: RolePatch { name: Some(name), description: None, permissions: None },
                    etag: version,
                },
            )
            .await?;
    }
    if external_id != old_external_id {
        scim.iam.scim_set_group_external_id(&scim.call, &scim.tenant_id, role.role_id, external_id).await?;
    }
    if let Some(want) = &want {
        set_members(scim, role.role_id, want, since).await?;
    }
    let group = load(scim, &role.role_id.to_string()).await?;
    let m = members(scim, role.role_id).await?;
    Ok(resource(StatusCode::OK, &to_scim(&group, Some(&m), &scim.base)))
}

pub async fn replace(scim: Scim, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let group = load(&scim, &id).await?;
    let mut body = body;
    if filter::member(&body, "members").is_none() {
        // PUT replaces: no members listed means none.
        body["members"] = Value::Array(Vec::new());
    }
    store(&scim, group, if_match(&headers), &body, None).await
}

pub async fn patch(scim: Scim, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> ScimResult {
    let body = body_json(&headers, &body)?;
    let group = load(&scim, &id).await?;
    let m = members(&scim, group.0.role_id).await?;
    let before: BTreeSet<Uuid> = m.iter().map(|(u, _)| *u).collect();
    let mut r = to_scim(&group, Some(&m), &scim.base);
    if filter::member(&r, "members").is_none() {
        r["members"] = Value::Array(Vec::new());
    }
    patch::apply(&mut r, &body).map_err(|(t, d)| ScimError::bad(t, d))?;
    if filter::member(&r, "members").is_none() {
        r["members"] = Value::Array(Vec::new()); // removed: none
    }
    let sent = if_match(&headers);
    let resp = store(&scim, group, sent, &r, Some(&before)).await?;
    // RFC 7644 §3.5.2: 204 is allowed when the client did not ask for attributes; IdPs accept 200.
    Ok(resp)
}

/// DELETE: a custom role's holders lose it, then the role goes; built-in roles stay (400).
pub async fn delete(scim: Scim, Path(id): Path<String>, headers: HeaderMap) -> ScimResult<Response> {
    let (role, _) = load(&scim, &id).await?;
    if role.builtin.is_some() {
        return Err(ScimError::bad("mutability", "a built-in role cannot be deleted"));
    }
    let sent = if_match(&headers);
    let version = crate::domain::etag(role.version);
    if !sent.is_empty() && sent != version {
        return Err(crate::domain::Error::etag_mismatch("group").into());
    }
    set_members(&scim, role.role_id, &BTreeSet::new(), None).await?;
    let (role, _) = load(&scim, &id).await?;
    scim.iam
        .delete_role(
            &scim.call,
            DeleteRole {
                tenant_id: scim.tenant_id.clone(),
                role_id: role.role_id,
                etag: crate::domain::etag(role.version),
                replacement: None,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
