//! The ownership registry and transfer jobs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::PreconditionViolation;

/// Who owns one record of a sibling service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub module: String,
    pub resource_id: String,
    pub owner_user_id: Uuid,
}

/// Where covered records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleTarget {
    User(Uuid),
    /// Spread over the ACTIVE members of a department.
    RoundRobin(Uuid),
}

/// One rule of a transfer: for a module, or (None) for every module no other rule names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRule {
    pub module: Option<String>,
    pub target: RuleTarget,
}

/// The rule covering a module: the module's own, else the catch-all.
pub fn rule_for<'a>(rules: &'a [TransferRule], module: &str) -> Option<&'a TransferRule> {
    rules.iter().find(|r| r.module.as_deref() == Some(module)).or_else(|| rules.iter().find(|r| r.module.is_none()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum TransferState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TransferState {
    pub const ALL: [TransferState; 5] = [
        TransferState::Pending,
        TransferState::Running,
        TransferState::Succeeded,
        TransferState::Failed,
        TransferState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<TransferState> {
        s.parse().ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TransferState::Succeeded | TransferState::Failed | TransferState::Cancelled)
    }
}

/// Per-module state of a running transfer (stored as JSON with the job, so a resumed job goes on
/// exactly where it stopped, round-robin position included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleProgress {
    pub module: String,
    /// The receiving users, fixed when the module's first batch moves.
    pub targets: Vec<Uuid>,
    /// Round-robin position: records assigned so far.
    pub next: u64,
    pub moved: i64,
    /// The last record id moved: the next batch starts after it (an index seek past the rows
    /// already moved, instead of a walk over their not-yet-vacuumed index entries).
    #[serde(default)]
    pub after: Option<String>,
    /// The module's records were all moved (when last looked at).
    #[serde(default)]
    pub done: bool,
}

/// A transfer job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub transfer_id: Uuid,
    pub tenant_id: String,
    pub from_user_id: Uuid,
    pub rules: Vec<TransferRule>,
    pub state: TransferState,
    pub total: i64,
    pub moved: i64,
    pub progress: Vec<ModuleProgress>,
    pub error: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub version: i64,
}

/// What a transfer would do now.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// (module, target, records)
    pub moves: Vec<(String, Uuid, i64)>,
    pub total: i64,
    /// (module, records) no rule covers.
    pub uncovered: Vec<(String, i64)>,
    pub violations: Vec<PreconditionViolation>,
}

/// Splits `count` records as evenly as possible over `n` targets starting at round-robin
/// position `next` (each target gets ⌊count/n⌋ or one more).
pub fn spread(count: i64, n: usize, next: u64) -> Vec<i64> {
    if n == 0 {
        return Vec::new();
    }
    let base = count / n as i64;
    let extra = (count % n as i64) as usize;
    let start = (next % n as u64) as usize;
    (0..n).map(|i| base + i64::from(((i + n - start) % n) < extra)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_within_one() {
        assert_eq!(spread(10, 3, 0), vec![4, 3, 3]);
        assert_eq!(spread(10, 3, 1), vec![3, 4, 3]);
        assert_eq!(spread(2, 4, 3), vec![1, 0, 0, 1]);
        assert_eq!(spread(0, 2, 0), vec![0, 0]);
        let s = spread(1001, 7, 5);
        assert_eq!(s.iter().sum::<i64>(), 1001);
        assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
    }

    #[test]
    fn module_rules_win_over_the_catch_all() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rules = vec![
            TransferRule { module: None, target: RuleTarget::User(a) },
            TransferRule { module: Some("deals".into()), target: RuleTarget::User(b) },
        ];
        assert_eq!(rule_for(&rules, "deals").unwrap().target, RuleTarget::User(b));
        assert_eq!(rule_for(&rules, "tasks").unwrap().target, RuleTarget::User(a));
        assert!(rule_for(&rules[1..], "tasks").is_none());
    }
}
