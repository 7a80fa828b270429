//! Rights: scopes, the permission catalog, the built-in role templates, and the access decision.
//! Pure logic over an in-memory [`Policy`]; loading and caching live in `service::access`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::user::UserState;

/// How far a right reaches. Ordered: a higher scope includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Not granted.
    None,
    /// Records the user owns.
    Own,
    /// Records of the user's department and every department below it (and the user's own).
    Department,
    /// Every record of the tenant.
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One right: an action on a module, to a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    pub module: String,
    pub action: String,
    pub scope: Scope,
}

impl Permission {
    pub fn new(module: &str, action: &str, scope: Scope) -> Permission {
        Permission { module: module.to_owned(), action: action.to_owned(), scope }
    }
}

/// A module of the permission catalog with its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub name: String,
    pub display_name: String,
    pub actions: Vec<String>,
    pub builtin: bool,
    /// 0 for built-in modules.
    pub version: i64,
}

/// The CRM record modules (owned records: OWN and DEPARTMENT scopes apply to them).
pub const CRM_MODULES: [&str; 5] = ["leads", "contacts", "companies", "deals", "tasks"];
/// Every action a module can have.
pub const ACTIONS: [&str; 6] = ["view", "create", "edit", "delete", "export", "assign"];

/// A right one of crm-iam's own operations needs: module × action of the built-in catalog (the
/// scope it needs follows from what the operation targets). Operations name these constants, never
/// strings, so a misspelt right cannot compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Right {
    pub module: &'static str,
    pub action: &'static str,
}

impl Right {
    pub const USERS_VIEW: Right = Right { module: "users", action: "view" };
    pub const USERS_CREATE: Right = Right { module: "users", action: "create" };
    pub const USERS_EDIT: Right = Right { module: "users", action: "edit" };
    pub const USERS_DELETE: Right = Right { module: "users", action: "delete" };
    pub const ROLES_VIEW: Right = Right { module: "roles", action: "view" };
    pub const ROLES_CREATE: Right = Right { module: "roles", action: "create" };
    pub const ROLES_EDIT: Right = Right { module: "roles", action: "edit" };
    pub const ROLES_DELETE: Right = Right { module: "roles", action: "delete" };
    pub const ROLES_ASSIGN: Right = Right { module: "roles", action: "assign" };
    pub const SETTINGS_VIEW: Right = Right { module: "settings", action: "view" };
    pub const SETTINGS_EDIT: Right = Right { module: "settings", action: "edit" };
    /// Every constant above (a unit test checks each against the built-in catalog).
    pub const ALL: [Right; 11] = [
        Right::USERS_VIEW,
        Right::USERS_CREATE,
        Right::USERS_EDIT,
        Right::USERS_DELETE,
        Right::ROLES_VIEW,
        Right::ROLES_CREATE,
        Right::ROLES_EDIT,
        Right::ROLES_DELETE,
        Right::ROLES_ASSIGN,
        Right::SETTINGS_VIEW,
        Right::SETTINGS_EDIT,
    ];
}

/// The built-in modules and their actions.
pub fn builtin_modules() -> Vec<Module> {
    let m = |name: &str, display: &str, actions: &[&str]| Module {
        name: name.into(),
        display_name: display.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        builtin: true,
        version: 0,
    };
    vec![
        m("leads", "Leads", &ACTIONS),
        m("contacts", "Contacts", &ACTIONS),
        m("companies", "Companies", &ACTIONS),
        m("deals", "Deals", &ACTIONS),
        m("tasks", "Tasks", &ACTIONS),
        m("analytics", "Analytics", &["view", "export"]),
        m("users", "Users and departments", &["view", "create", "edit", "delete", "export"]),
        m("roles", "Roles and rights", &["view", "create", "edit", "delete", "assign"]),
        m("settings", "Account settings", &["view", "edit"]),
    ]
}

/// The built-in role templates every tenant has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    Administrator,
    Manager,
    Operator,
    Guest,
}

impl Template {
    pub const ALL: [Template; 4] = [Template::Administrator, Template::Manager, Template::Operator, Template::Guest];

    pub fn name(self) -> &'static str {
        match self {
            Template::Administrator => "administrator",
            Template::Manager => "manager",
            Template::Operator => "operator",
            Template::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Template> {
        Template::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn description(self) -> &'static str {
        match self {
            Template::Administrator => "Everything in the tenant, including users, roles, settings and custom modules.",
            Template::Manager => {
                "All actions on leads, contacts, companies, deals and tasks of the own department tree; \
                 views its users and analytics."
            }
            Template::Operator => "Views, creates and edits own leads, contacts, companies, deals and tasks.",
            Template::Guest => {
                "Views leads, contacts, companies, deals, tasks and analytics of the own department tree."
            }
        }
    }

    /// The template's rights, given the tenant's catalog (the administrator covers custom modules too).
    pub fn permissions(self, catalog: &[Module]) -> Vec<Permission> {
        let mut out = Vec::new();
        match self {
            Template::Administrator => {
                for m in catalog {
                    for a in &m.actions {
                        out.push(Permission::new(&m.name, a, Scope::Tenant));
                    }
                }
            }
            Template::Manager => {
                for m in CRM_MODULES {
                    for a in ACTIONS {
                        out.push(Permission::new(m, a, Scope::Department));
                    }
                }
                out.push(Permission::new("users", "view", Scope::Department));
                out.push(Permission::new("analytics", "view", Scope::Department));
                out.push(Permission::new("analytics", "export", Scope::Department));
            }
            Template::Operator => {
                for m in CRM_MODULES {
                    for a in ["view", "create", "edit"] {
                        out.push(Permission::new(m, a, Scope::Own));
                    }
                }
            }
            Template::Guest => {
                for m in CRM_MODULES {
                    out.push(Permission::new(m, "view", Scope::Department));
                }
                out.push(Permission::new("analytics", "view", Scope::Department));
            }
        }
        out
    }
}

/// Hash maps of the hot path: foldhash is several times faster than SipHash on short keys; keys
/// are ids and catalog names that only administrators can add, so there is nothing to flood.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Index of a (module, action) pair in a [`Policy`]'s catalog.
pub type PermissionIndex = usize;

/// A role compiled for decisions: the scope it grants per catalog permission.
#[derive(Debug, Clone)]
pub struct CompiledRole {
    pub role_id: Uuid,
    pub name: String,
    /// Indexed by [`PermissionIndex`].
    pub grants: Vec<Scope>,
}

impl CompiledRole {
    pub fn scope(&self, permission: PermissionIndex) -> Scope {
        self.grants.get(permission).copied().unwrap_or(Scope::None)
    }
}

/// What decisions need to know about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub state: UserState,
    pub department_id: Option<Uuid>,
    pub role_ids: Vec<Uuid>,
}

/// A tenant's rules, compiled: the catalog (each module/action numbered), the roles, and the
/// department tree.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// module → action → index
    index: FastMap<String, FastMap<String, PermissionIndex>>,
    /// index → (module, action)
    names: Vec<(String, String)>,
    pub roles: FastMap<Uuid, CompiledRole>,
    /// department → parent
    pub parents: FastMap<Uuid, Option<Uuid>>,
    pub department_names: FastMap<Uuid, String>,
}

/// The strongest grant of a user for one module/action, and the role that gives it.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub scope: Scope,
    pub role: Option<&'a CompiledRole>,
}

/// What the caller told (or the registry knows) about the resource.
#[derive(Debug, Clone, Default)]
pub struct ResourceFacts {
    pub resource_id: Option<String>,
    pub owner_user_id: Option<Uuid>,
    /// The resource's department, or else (when known) its owner's department.
    pub department_id: Option<Uuid>,
}

impl ResourceFacts {
    /// A check about the module as a whole, not one record.
    pub fn is_empty(&self) -> bool {
        self.resource_id.is_none() && self.owner_user_id.is_none() && self.department_id.is_none()
    }
}

/// An access decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The scope that granted access (NONE when denied).
    pub scope: Scope,
    pub reason: String,
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision { allowed: false, scope: Scope::None, reason: reason.into() }
    }
}

impl Policy {
    /// A policy over a catalog, without roles or departments yet.
    pub fn new(catalog: &[Module]) -> Policy {
        let mut p = Policy::default();
        for m in catalog {
            for a in &m.actions {
                let i = p.names.len();
                p.names.push((m.name.clone(), a.clone()));
                p.index.entry(m.name.clone()).or_default().insert(a.clone(), i);
            }
        }
        p
    }

    /// Compiles a role; permissions outside the catalog are ignored.
    pub fn add_role(&mut self, role_id: Uuid, name: String, permissions: &[Permission]) {
        let mut grants = vec![Scope::None; self.names.len()];
        for p in permissions {
            if let Some(i) = self.permission(&p.module, &p.action) {
                grants[i] = grants[i].max(p.scope);
            }
        }
        self.roles.insert(role_id, CompiledRole { role_id, name, grants });
    }

    /// The index of a module/action of the catalog.
    pub fn permission(&self, module: &str, action: &str) -> Option<PermissionIndex> {
        self.index.get(module)?.get(action).copied()
    }

    pub fn has_module(&self, module: &str) -> bool {
        self.index.contains_key(module)
    }

    pub fn has_action(&self, module: &str, action: &str) -> bool {
        self.permission(module, action).is_some()
    }

    /// Union of the user's roles: the highest scope wins (ties: the role named first).
    pub fn grant(&self, user: &UserFacts, permission: PermissionIndex) -> Grant<'_> {
        let mut best = Grant { scope: Scope::None, role: None };
        for r in user.role_ids.iter().filter_map(|id| self.roles.get(id)) {
            let s = r.scope(permission);
            let better =
                s > best.scope || (s == best.scope && s > Scope::None && best.role.is_some_and(|b| r.name < b.name));
            if better {
                best = Grant { scope: s, role: Some(r) };
            }
        }
        best
    }

    /// Whether `department` is `root` or lies below it.
    pub fn in_subtree(&self, department: Uuid, root: Uuid) -> bool {
        let mut cur = Some(department);
        for _ in 0..=self.parents.len() {
            match cur {
                Some(d) if d == root => return true,
                Some(d) => cur = self.parents.get(&d).copied().flatten(),
                None => return false,
            }
        }
        false
    }

    /// `root` and every department below it.
    pub fn subtree(&self, root: Uuid) -> Vec<Uuid> {
        let mut children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (&c, p) in &self.parents {
            if let Some(p) = p {
                children.entry(*p).or_default().push(c);
            }
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(k) = children.get(&out[i]) {
                let mut k = k.clone();
                k.sort();
                out.extend(k);
            }
            i += 1;
        }
        out
    }

    fn department_label(&self, id: Uuid) -> String {
        match self.department_names.get(&id) {
            Some(name) => format!("\"{name}\""),
            None => id.to_string(),
        }
    }

    /// Decides `action` on `module` for `user` (already known ACTIVE or not) and a resource.
    pub fn decide(
        &self,
        user_id: Uuid,
        user: Option<&UserFacts>,
        module: &str,
        action: &str,
        resource: &ResourceFacts,
    ) -> Decision {
        let Some(user) = user else {
            return Decision::deny("the user does not exist in this tenant");
        };
        if user.state != UserState::Active {
            return Decision::deny(format!("the user is {}, not ACTIVE", user.state.as_str()));
        }
        let Some(permission) = self.permission(module, action) else {
            return Decision::deny(format!("{module}.{action} is not in the tenant's permission catalog"));
        };
        let grant = self.grant(user, permission);
        let Some(role) = grant.role.filter(|_| grant.scope > Scope::None) else {
            return Decision::deny(format!("no role of the user grants {module}.{action}"));
        };
        let granted = |why: String| Decision {
            allowed: true,
            scope: grant.scope,
            reason: format!("role \"{}\" grants {module}.{action} at {} scope{why}", role.name, grant.scope.as_str()),
        };
        if resource.is_empty() || grant.scope == Scope::Tenant {
            return granted(String::new());
        }
        let owned = resource.owner_user_id == Some(user_id);
        if owned {
            return granted(": the user owns the resource".into());
        }
        match grant.scope {
            Scope::Own => match resource.owner_user_id {
                Some(_) => Decision::deny(format!(
                    "role \"{}\" grants {module}.{action} only on own records, and the resource belongs to another user",
                    role.name
                )),
                None => Decision::deny(format!(
                    "role \"{}\" grants {module}.{action} only on own records, and the resource's owner is unknown",
                    role.name
                )),
            },
            Scope::Department => {
                let Some(home) = user.department_id else {
                    return Decision::deny(format!(
                        "role \"{}\" grants {module}.{action} in the user's department tree, but the user has no department",
                        role.name
                    ));
                };
                match resource.department_id {
                    Some(d) if self.in_subtree(d, home) => granted(format!(
                        ": the resource's department {} is in the user's department tree under {}",
                        self.department_label(d),
                        self.department_label(home)
                    )),
                    Some(d) => Decision::deny(format!(
                        "role \"{}\" grants {module}.{action} in the department tree under {}, and the resource's department {} is outside it",
                        role.name,
                        self.department_label(home),
                        self.department_label(d)
                    )),
                    None => Decision::deny(format!(
                        "role \"{}\" grants {module}.{action} in the user's department tree, and the resource's department and owner are unknown",
                        role.name
                    )),
                }
            }
            Scope::Tenant | Scope::None => unreachable!("handled above"),
        }
    }

    /// Every module/action the user may do, with the strongest scope and the roles granting it.
    pub fn effective(&self, user: &UserFacts) -> BTreeMap<(String, String), (Scope, Vec<Uuid>)> {
        let mut best: Vec<(Scope, Vec<Uuid>)> = vec![(Scope::None, Vec::new()); self.names.len()];
        for r in user.role_ids.iter().filter_map(|id| self.roles.get(id)) {
            for (i, s) in r.grants.iter().enumerate() {
                let e = &mut best[i];
                if *s > e.0 {
                    *e = (*s, vec![r.role_id]);
                } else if *s == e.0 && *s > Scope::None {
                    e.1.push(r.role_id);
                }
            }
        }
        let mut out = BTreeMap::new();
        for (i, (scope, mut roles)) in best.into_iter().enumerate() {
            if scope > Scope::None {
                roles.sort();
                out.insert(self.names[i].clone(), (scope, roles));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_right_an_operation_needs_is_in_the_builtin_catalog() {
        let catalog = builtin_modules();
        for r in Right::ALL {
            let m = catalog.iter().find(|m| m.name == r.module).unwrap_or_else(|| panic!("{r:?}: no such module"));
            assert!(m.actions.iter().any(|a| a == r.action), "{r:?}: no such action");
        }
    }

    fn policy() -> (Policy, Uuid, Uuid, Uuid, Uuid) {
        let (root, child, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let catalog = builtin_modules();
        let manager = Uuid::now_v7();
        let mut p = Policy::new(&catalog);
        p.add_role(manager, "manager".into(), &Template::Manager.permissions(&catalog));
        p.parents = [(root, None), (child, Some(root)), (other, None)].into_iter().collect();
        (p, root, child, other, manager)
    }

    #[test]
    fn department_scope_reaches_the_subtree_only() {
        let (p, root, child, other, manager) = policy();
        let me = Uuid::now_v7();
        let user = UserFacts { state: UserState::Active, department_id: Some(root), role_ids: vec![manager] };
        let at = |d| ResourceFacts { resource_id: Some("r".into()), owner_user_id: None, department_id: Some(d) };
        assert!(p.decide(me, Some(&user), "deals", "edit", &at(child)).allowed);
        assert!(p.decide(me, Some(&user), "deals", "edit", &at(root)).allowed);
        let d = p.decide(me, Some(&user), "deals", "edit", &at(other));
        assert!(!d.allowed && d.reason.contains("outside"), "{d:?}");
        // A user in the child department does not reach the parent.
        let low = UserFacts { department_id: Some(child), ..user.clone() };
        assert!(!p.decide(me, Some(&low), "deals", "edit", &at(root)).allowed);
        // Settings are not granted to managers at all.
        assert!(!p.decide(me, Some(&user), "settings", "edit", &ResourceFacts::default()).allowed);
    }

    #[test]
    fn union_of_roles_takes_the_highest_scope() {
        let (mut p, _, _, _, manager) = policy();
        let op = Uuid::now_v7();
        p.add_role(op, "wide".into(), &[Permission::new("deals", "edit", Scope::Tenant)]);
        let user = UserFacts { state: UserState::Active, department_id: None, role_ids: vec![manager, op] };
        let g = p.grant(&user, p.permission("deals", "edit").unwrap());
        assert_eq!((g.scope, g.role.unwrap().name.as_str()), (Scope::Tenant, "wide"));
        assert_eq!(p.grant(&user, p.permission("deals", "delete").unwrap()).scope, Scope::Department);
    }
}
