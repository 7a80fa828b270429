//! Delegated administration: whoever administers others may hand out, define or act on only what
//! lies within their own rights. A right is covered when the caller holds the same module and
//! action at the same scope or a wider one (OWN < DEPARTMENT < TENANT). The built-in administrator
//! holds every right of the catalog at TENANT scope, so only administrators (or whoever holds
//! every right) assign the administrator role.

use std::collections::BTreeMap;

use super::access::Scope;

/// The rights someone holds: the strongest scope per (module, action).
pub type Rights = BTreeMap<(String, String), Scope>;

/// A right that is wanted but not held at its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub module: String,
    pub action: String,
    pub needed: Scope,
    pub held: Scope,
}

impl Missing {
    /// `users.edit`.
    pub fn right(&self) -> String {
        format!("{}.{}", self.module, self.action)
    }

    pub fn describe(&self) -> String {
        match self.held {
            Scope::None => {
                format!("needs {} at {} scope, which the caller does not hold", self.right(), self.needed.as_str())
            }
            held => format!(
                "needs {} at {} scope; the caller holds it at {} scope only",
                self.right(),
                self.needed.as_str(),
                held.as_str()
            ),
        }
    }
}

/// The rights of `wanted` that `held` does not cover, in order.
pub fn missing<'a>(held: &Rights, wanted: impl IntoIterator<Item = (&'a str, &'a str, Scope)>) -> Vec<Missing> {
    let mut out = Vec::new();
    for (module, action, needed) in wanted {
        if needed == Scope::None {
            continue;
        }
        let have = held.get(&(module.to_owned(), action.to_owned())).copied().unwrap_or(Scope::None);
        if have < needed && !out.iter().any(|m: &Missing| m.module == module && m.action == action) {
            out.push(Missing { module: module.into(), action: action.into(), needed, held: have });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rights(list: &[(&str, &str, Scope)]) -> Rights {
        list.iter().map(|(m, a, s)| ((m.to_string(), a.to_string()), *s)).collect()
    }

    #[test]
    fn a_right_is_covered_by_the_same_scope_or_a_wider_one() {
        let held = rights(&[("users", "edit", Scope::Department), ("deals", "view", Scope::Tenant)]);
        assert!(missing(&held, [("users", "edit", Scope::Own), ("users", "edit", Scope::Department)]).is_empty());
        assert!(missing(&held, [("deals", "view", Scope::Department)]).is_empty());
        let m = missing(&held, [("users", "edit", Scope::Tenant), ("roles", "assign", Scope::Own)]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].right(), m[0].needed, m[0].held), ("users.edit".into(), Scope::Tenant, Scope::Department));
        assert!(m[0].describe().contains("DEPARTMENT scope only"), "{}", m[0].describe());
        assert_eq!(m[1].held, Scope::None);
    }

    #[test]
    fn nothing_is_missing_for_nothing_wanted_and_each_right_is_named_once() {
        assert!(missing(&Rights::new(), [("users", "edit", Scope::None)]).is_empty());
        let m = missing(&Rights::new(), [("users", "edit", Scope::Own), ("users", "edit", Scope::Tenant)]);
        assert_eq!(m.len(), 1);
    }
}
