//! What the SCIM endpoint tells clients about itself (RFC 7643 §5–7): the service provider
//! configuration, the resource types, and the schemas, listing exactly the attributes crm-iam
//! stores (an attribute it would drop is not advertised).

use serde_json::{Value, json};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const SPC: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// The most resources one page holds (`count` above it is lowered to it).
pub const MAX_PAGE: usize = 200;

pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": [SPC],
        "documentationUri": "https://github.com/crm-platform/crm-iam#scim-provisioning",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_PAGE},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "SCIM bearer token",
            "description": "A tenant's SCIM token (TenantAdmin.CreateScimToken) in Authorization: Bearer",
            "primary": true
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")}
    })
}

pub fn resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": [RESOURCE_TYPE], "id": "User", "name": "User", "endpoint": "/Users",
            "description": "An employee of the tenant", "schema": USER,
            "schemaExtensions": [{"schema": ENTERPRISE_USER, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")}
        }),
        json!({
            "schemas": [RESOURCE_TYPE], "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "A role of the tenant: membership is the role's assignment", "schema": GROUP,
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")}
        }),
    ]
}

fn attr(name: &str, kind: &str, description: &str) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "description": description, "required": false,
        "caseExact": false, "mutability": "readWrite", "returned": "default", "uniqueness": "none"
    })
}

fn read_only(a: Value) -> Value {
    with(a, json!({"mutability": "readOnly"}))
}

fn with(mut a: Value, changes: Value) -> Value {
    if let (Some(a), Some(c)) = (a.as_object_mut(), changes.as_object()) {
        for (k, v) in c {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

fn schema(id: &str, name: &str, description: &str, attributes: Vec<Value>, base: &str) -> Value {
    json!({
        "schemas": [SCHEMA], "id": id, "name": name, "description": description, "attributes": attributes,
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")}
    })
}

pub fn schemas(base: &str) -> Vec<Value> {
    let user_ref =
        |desc: &str| with(attr("$ref", "reference", desc), json!({"referenceTypes": ["User"], "caseExact": true}));
    let user = vec![
        with(
            attr("userName", "string", "Unique per tenant: the e-mail address, or a login name"),
            json!({"required": true, "uniqueness": "server"}),
        ),
        with(
            attr("name", "complex", "The user's name"),
            json!({"subAttributes": [
                attr("givenName", "string", "Given name"),
                attr("familyName", "string", "Family name"),
            ]}),
        ),
        attr("displayName", "string", "Shown name (given and family name when empty)"),
        attr("title", "string", "Position"),
        // Required: a user is always active or not (removing it would mean nothing).
        with(
            attr("active", "boolean", "false: deactivated (login blocked, data kept, seat freed); true when not sent"),
            json!({"required": true}),
        ),
        with(
            attr("emails", "complex", "The user's e-mail address (one)"),
            json!({"multiValued": true, "required": true, "subAttributes": [
                with(attr("value", "string", "The address"), json!({"required": true})),
            ]}),
        ),
        with(
            attr("groups", "complex", "The roles the user holds"),
            json!({"multiValued": true, "mutability": "readOnly", "subAttributes": [
                read_only(attr("value", "string", "Role id")),
                read_only(attr("display", "string", "Role name")),
                with(attr("$ref", "reference", "The group's resource"), json!({"mutability": "readOnly", "referenceTypes": ["Group"], "caseExact": true})),
            ]}),
        ),
    ];
    let enterprise = vec![
        attr("employeeNumber", "string", "Employee number (unique per tenant)"),
        attr("department", "string", "Department, by name"),
        with(
            attr("manager", "complex", "The user's manager"),
            json!({"subAttributes": [
                attr("value", "string", "The manager's user id"),
                user_ref("The manager's resource"),
            ]}),
        ),
    ];
    let group = vec![
        with(attr("displayName", "string", "Role name"), json!({"required": true, "uniqueness": "server"})),
        with(
            attr("members", "complex", "Users holding the role"),
            json!({"multiValued": true, "subAttributes": [
                with(attr("value", "string", "User id"), json!({"mutability": "immutable"})),
                with(user_ref("The user's resource"), json!({"mutability": "immutable"})),
            ]}),
        ),
    ];
    vec![
        schema(USER, "User", "An employee of the tenant", user, base),
        schema(ENTERPRISE_USER, "EnterpriseUser", "Employment data", enterprise, base),
        schema(GROUP, "Group", "A role of the tenant", group, base),
    ]
}
