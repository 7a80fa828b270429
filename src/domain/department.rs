//! Departments: a tree per tenant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Deepest allowed tree (a top-level department is depth 1).
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Department {
    pub department_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub parent_department_id: Option<Uuid>,
    pub head_user_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub version: i64,
}

/// A validated department to create.
#[derive(Debug, Clone)]
pub struct NewDepartment {
    pub name: String,
    pub parent_department_id: Option<Uuid>,
    pub head_user_id: Option<Uuid>,
}

/// Validated changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DepartmentPatch {
    pub name: Option<String>,
    pub parent_department_id: Option<Option<Uuid>>,
    pub head_user_id: Option<Option<Uuid>>,
}
