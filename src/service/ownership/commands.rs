//! What the ownership and transfer operations are asked to do: requests already converted and
//! validated field by field at the edge (`api::ownership_transfer`).

use uuid::Uuid;

use crate::domain::ownership::{Ownership, TransferRule, TransferState};

/// Owners to record (or replace) for a batch of records.
pub struct RecordOwnership {
    pub tenant_id: String,
    pub rows: Vec<Ownership>,
}

/// Records (module, resource id) to drop from the registry.
pub struct ForgetOwnership {
    pub tenant_id: String,
    pub records: Vec<(String, String)>,
}

/// A user, as an owner of records.
pub struct OwnerRef {
    pub tenant_id: String,
    pub user_id: Uuid,
}

/// A page of the records a user owns (of one module, or all).
pub struct ListOwnedResources {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub module: Option<String>,
    /// The (module, resource id) of the previous page's last record.
    pub after: Option<(String, String)>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// A page of the users who own records but can no longer act on them.
pub struct ListOrphanedOwners {
    pub tenant_id: String,
    pub after: Option<Uuid>,
    pub limit: u64,
}

/// Where a departing user's records go: planned (PlanTransfer) or started as a job.
pub struct TransferRules {
    pub tenant_id: String,
    pub from_user_id: Uuid,
    pub rules: Vec<TransferRule>,
}

/// One transfer job.
pub struct TransferRef {
    pub tenant_id: String,
    pub transfer_id: Uuid,
}

/// A page of a tenant's transfer jobs, newest first.
pub struct ListTransfers {
    pub tenant_id: String,
    pub from_user_id: Option<Uuid>,
    pub states: Vec<TransferState>,
    pub before: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}
