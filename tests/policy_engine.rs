//! The policy engine (`domain::access::Policy`) against a brute-force reference, on random
//! tenants: random catalogs, department forests, roles with random rights at random scopes,
//! users holding random roles, and records with or without an owner and a department.
//!
//! The reference says in the plainest terms what the README promises: a right is module × action ×
//! scope; a user's roles combine by the widest scope; OWN reaches the records the user owns,
//! DEPARTMENT those of the user's department and every department below it (and their own),
//! TENANT everything; only ACTIVE users are allowed anything; a check about the module as a whole
//! (no record) needs the right at any scope.

use std::collections::{BTreeMap, BTreeSet};

use crm_iam::domain::{
    access::{Module, Permission, Policy, ResourceFacts, Scope, UserFacts, builtin_modules},
    user::UserState,
};
use proptest::prelude::*;
use uuid::Uuid;

const SCOPES: [Scope; 4] = [Scope::None, Scope::Own, Scope::Department, Scope::Tenant];

/// A random tenant, as plain data.
#[derive(Debug, Clone)]
struct Tenant {
    catalog: Vec<Module>,
    /// Department i's parent, always an earlier department (a forest).
    parents: Vec<Option<usize>>,
    /// Each role's rights: (module index, action index, scope).
    roles: Vec<Vec<(usize, usize, Scope)>>,
}

#[derive(Debug, Clone)]
struct Case {
    tenant: Tenant,
    state: UserState,
    department: Option<usize>,
    roles: Vec<usize>,
    module: usize,
    action: usize,
    /// None: a check about the module as a whole.
    resource: Option<(Owner, Option<usize>)>,
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Me,
    Someone,
    Unknown,
}

fn tenant() -> impl Strategy<Value = Tenant> {
    let catalog = builtin_modules();
    let modules = catalog.len();
    (
        proptest::collection::vec(proptest::option::weighted(0.7, 0usize..8), 1..8),
        proptest::collection::vec(
            proptest::collection::vec((0..modules, 0usize..8, proptest::sample::select(SCOPES.to_vec())), 0..12),
            0..5,
        ),
    )
        .prop_map(move |(parents, roles)| {
            // Parent indexes point at an earlier department (or none).
            let parents = parents.iter().enumerate().map(|(i, p)| p.filter(|_| i > 0).map(|p| p % i)).collect();
            let roles = roles
                .into_iter()
                .map(|rights| rights.into_iter().map(|(m, a, s)| (m, a % catalog[m].actions.len(), s)).collect())
                .collect();
            Tenant { catalog: catalog.clone(), parents, roles }
        })
}

fn case() -> impl Strategy<Value = Case> {
    tenant().prop_flat_map(|t| {
        let departments = t.parents.len();
        let roles = t.roles.len();
        let modules = t.catalog.len();
        (
            Just(t),
            proptest::sample::select(UserState::ALL.to_vec()),
            proptest::option::weighted(0.8, 0..departments),
            proptest::collection::vec(0..roles.max(1), 0..5),
            0..modules,
            0usize..8,
            // Mostly ask about a right some role of the tenant does grant (else few cases would
            // reach the scope rules at all).
            proptest::option::weighted(0.85, any::<proptest::sample::Index>()),
            proptest::option::of((
                prop_oneof![Just(Owner::Me), Just(Owner::Someone), Just(Owner::Unknown)],
                proptest::option::weighted(0.8, 0..departments),
            )),
        )
            .prop_map(move |(tenant, state, department, held, module, action, granted, resource)| {
                let roles = held.into_iter().filter(|r| *r < roles).collect();
                let rights: Vec<(usize, usize)> = tenant.roles.iter().flatten().map(|(m, a, _)| (*m, *a)).collect();
                let (module, action) = match granted {
                    Some(i) if !rights.is_empty() => rights[i.index(rights.len())],
                    _ => (module, action % tenant.catalog[module].actions.len()),
                };
                Case { tenant, state, department, roles, module, action, resource }
            })
    })
}

/// Department `d` is `root` or below it, by walking up the parent list.
fn below(parents: &[Option<usize>], d: usize, root: usize) -> bool {
    let mut cur = Some(d);
    while let Some(c) = cur {
        if c == root {
            return true;
        }
        cur = parents[c];
    }
    false
}

/// The widest scope the held roles give for (module, action).
fn widest(c: &Case, module: usize, action: usize) -> Scope {
    c.roles
        .iter()
        .flat_map(|r| c.tenant.roles[*r].iter())
        .filter(|(m, a, _)| *m == module && *a == action)
        .map(|(_, _, s)| *s)
        .max()
        .unwrap_or(Scope::None)
}

/// The reference decision.
fn reference(c: &Case) -> (bool, Scope) {
    let scope = widest(c, c.module, c.action);
    if c.state != UserState::Active || scope == Scope::None {
        return (false, Scope::None);
    }
    let allowed = match c.resource {
        None => true,
        Some((owner, department)) => {
            scope == Scope::Tenant
                || matches!(owner, Owner::Me)
                || (scope == Scope::Department
                    && matches!((c.department, department), (Some(home), Some(d)) if below(&c.tenant.parents, d, home)))
        }
    };
    (allowed, if allowed { scope } else { Scope::None })
}

struct Built {
    policy: Policy,
    departments: Vec<Uuid>,
    roles: Vec<Uuid>,
}

fn build(t: &Tenant) -> Built {
    let mut policy = Policy::new(&t.catalog);
    let departments: Vec<Uuid> = t.parents.iter().map(|_| Uuid::new_v4()).collect();
    policy.parents = t.parents.iter().enumerate().map(|(i, p)| (departments[i], p.map(|p| departments[p]))).collect();
    let roles: Vec<Uuid> = t.roles.iter().map(|_| Uuid::new_v4()).collect();
    for (i, rights) in t.roles.iter().enumerate() {
        let permissions: Vec<Permission> = rights
            .iter()
            .map(|(m, a, s)| Permission::new(&t.catalog[*m].name, &t.catalog[*m].actions[*a], *s))
            .collect();
        policy.add_role(roles[i], format!("role-{i}"), &permissions);
    }
    Built { policy, departments, roles }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decisions_equal_the_reference(c in case()) {
        let b = build(&c.tenant);
        let me = Uuid::new_v4();
        let user = UserFacts {
            state: c.state,
            department_id: c.department.map(|d| b.departments[d]),
            role_ids: c.roles.iter().map(|r| b.roles[*r]).collect(),
        };
        let resource = match c.resource {
            None => ResourceFacts::default(),
            Some((owner, department)) => ResourceFacts {
                resource_id: Some("record-1".into()),
                owner_user_id: match owner {
                    Owner::Me => Some(me),
                    Owner::Someone => Some(Uuid::new_v4()),
                    Owner::Unknown => None,
                },
                department_id: department.map(|d| b.departments[d]),
            },
        };
        let module = &c.tenant.catalog[c.module].name;
        let action = &c.tenant.catalog[c.module].actions[c.action];
        let d = b.policy.decide(me, Some(&user), module, action, &resource);
        let (allowed, scope) = reference(&c);
        prop_assert_eq!((d.allowed, d.scope), (allowed, scope), "{}", d.reason);
        prop_assert!(!d.reason.is_empty());
    }

    #[test]
    fn effective_rights_equal_the_reference(c in case()) {
        let b = build(&c.tenant);
        let user = UserFacts { state: c.state, department_id: None, role_ids: c.roles.iter().map(|r| b.roles[*r]).collect() };
        let got = b.policy.effective(&user);
        let mut want: BTreeMap<(String, String), (Scope, Vec<Uuid>)> = BTreeMap::new();
        for (m, module) in c.tenant.catalog.iter().enumerate() {
            for (a, action) in module.actions.iter().enumerate() {
                let scope = widest(&c, m, a);
                if scope == Scope::None {
                    continue;
                }
                // Every held role that grants the widest scope (each role once).
                let holders: BTreeSet<Uuid> = c
                    .roles
                    .iter()
                    .filter(|r| c.tenant.roles[**r].iter().filter(|(rm, ra, _)| *rm == m && *ra == a).map(|(_, _, s)| *s).max() == Some(scope))
                    .map(|r| b.roles[*r])
                    .collect();
                want.insert((module.name.clone(), action.clone()), (scope, holders.into_iter().collect()));
            }
        }
        let got: BTreeMap<_, _> = got
            .into_iter()
            .map(|(k, (s, roles))| (k, (s, roles.into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>())))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn subtrees_equal_the_reference(t in tenant(), root in 0usize..8) {
        let b = build(&t);
        let root = root % t.parents.len();
        let got: BTreeSet<Uuid> = b.policy.subtree(b.departments[root]).into_iter().collect();
        let want: BTreeSet<Uuid> =
            (0..t.parents.len()).filter(|d| below(&t.parents, *d, root)).map(|d| b.departments[d]).collect();
        prop_assert_eq!(got, want);
        for d in 0..t.parents.len() {
            prop_assert_eq!(b.policy.in_subtree(b.departments[d], b.departments[root]), below(&t.parents, d, root));
        }
    }
}
