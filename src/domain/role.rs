//! Roles.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::{Permission, Template};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub role_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    /// The template of a built-in role.
    #[serde(with = "template_name")]
    pub builtin: Option<Template>,
    pub permissions: Vec<Permission>,
    /// Users holding the role.
    pub user_count: u64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub version: i64,
}

mod template_name {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Template;

    pub fn serialize<S: Serializer>(t: &Option<Template>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| t.name()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Template>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.as_deref().and_then(Template::parse))
    }
}

/// A validated role to create.
#[derive(Debug, Clone)]
pub struct NewRole {
    pub name: String,
    pub description: String,
    pub permissions: Vec<Permission>,
    /// Copy the permissions of this role (built-in or custom) instead.
    pub source_role_id: Option<Uuid>,
}

/// Validated changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RolePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<Vec<Permission>>,
}

/// A validated tenant-defined module.
#[derive(Debug, Clone)]
pub struct NewModule {
    pub name: String,
    pub display_name: String,
    pub actions: Vec<String>,
}
