use std::time::{Duration, Instant};

use prost_types::FieldMask;
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::{
    both_backends,
    common::{self, Backend, TestDb, TestServer, bad_fields, expect_code, invite, pb},
};

both_backends!(scope_rules, changes_are_reflected_by_the_next_check, batch_check_and_effective_permissions);

struct Fixture {
    s: TestServer,
    t: String,
    root: String,
    child: String,
    other: String,
    manager: String,
    operator: String,
    admin: String,
}

/// Sales (manager) → Sales East (operator); Support elsewhere; an administrator.
async fn fixture(backend: Backend) -> Fixture {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let root = s.department(&t, "Sales", "").await;
    let child = s.department(&t, "Sales East", &root).await;
    let other = s.department(&t, "Support", "").await;
    let manager = s.active_user(&t, "manager@example.com", &root, &[s.builtin_role(&t, "manager").await]).await;
    let operator = s.active_user(&t, "operator@example.com", &child, &[s.builtin_role(&t, "operator").await]).await;
    let admin = s.active_user(&t, "admin@example.com", &other, &[s.builtin_role(&t, "administrator").await]).await;
    Fixture { s, t, root, child, other, manager, operator, admin }
}

fn check(t: &str, user: &str, module: &str, action: &str, owner: &str, department: &str) -> pb::CheckRequest {
    let resource = (!owner.is_empty() || !department.is_empty()).then(|| pb::Resource {
        resource_id: "deal-1".into(),
        owner_user_id: owner.into(),
        department_id: department.into(),
    });
    pb::CheckRequest {
        tenant_id: t.into(),
        user_id: user.into(),
        module: module.into(),
        action: action.into(),
        resource,
    }
}

async fn decide(s: &TestServer, req: pb::CheckRequest) -> pb::CheckResponse {
    s.access().await.check(req).await.expect("check").into_inner()
}

fn scope(r: &pb::CheckResponse) -> pb::Scope {
    pb::Scope::try_from(r.scope).unwrap()
}

async fn scope_rules(backend: Backend) {
    let f = fixture(backend).await;
    let (s, t) = (&f.s, f.t.as_str());

    // OWN: the operator's own records only.
    let r = decide(s, check(t, &f.operator, "deals", "edit", &f.operator, "")).await;
    assert!(r.allowed && scope(&r) == pb::Scope::Own, "{r:?}");
    assert!(r.reason.contains("operator"), "names the deciding role: {}", r.reason);
    let r = decide(s, check(t, &f.operator, "deals", "edit", &f.manager, "")).await;
    assert!(!r.allowed && scope(&r) == pb::Scope::None, "{r:?}");
    let r = decide(s, check(t, &f.operator, "deals", "edit", "", "")).await;
    assert!(r.allowed && scope(&r) == pb::Scope::Own, "no resource: may edit deals at all, within OWN: {r:?}");
    let mut unknown_owner = check(t, &f.operator, "deals", "edit", "", "");
    unknown_owner.resource = Some(pb::Resource { resource_id: "deal-9".into(), ..Default::default() });
    let r = decide(s, unknown_owner).await;
    assert!(!r.allowed && r.reason.contains("is unknown") && r.reason.contains("ownership registry"), "{r:?}");
    let r = decide(s, check(t, &f.operator, "deals", "delete", &f.operator, "")).await;
    assert!(!r.allowed && r.reason.contains("no role"), "operators do not delete: {r:?}");

    // DEPARTMENT: the manager's department and everything below it.
    let r = decide(s, check(t, &f.manager, "deals", "delete", "", &f.child)).await;
    assert!(r.allowed && scope(&r) == pb::Scope::Department, "{r:?}");
    let r = decide(s, check(t, &f.manager, "deals", "delete", "", &f.other)).await;
    assert!(!r.allowed && r.reason.contains("outside"), "{r:?}");
    // Only the owner known: the owner's department decides.
    let r = decide(s, check(t, &f.manager, "deals", "edit", &f.operator, "")).await;
    assert!(r.allowed, "the operator works in a sub-department: {r:?}");
    let r = decide(s, check(t, &f.manager, "deals", "edit", &f.admin, "")).await;
    assert!(!r.allowed, "the admin works in Support: {r:?}");
    // The operator (in the child department) does not reach the parent's records through a role
    // that grants DEPARTMENT scope either.
    let guest = s.builtin_role(t, "guest").await;
    s.roles()
        .await
        .assign_role(pb::AssignRoleRequest {
            tenant_id: t.into(),
            user_id: f.operator.clone(),
            role_id: guest,
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert!(!decide(s, check(t, &f.operator, "deals", "view", "", &f.root)).await.allowed);
    assert!(
        decide(s, check(t, &f.operator, "deals", "view", "", &f.child)).await.allowed,
        "union: guest's DEPARTMENT view"
    );
    assert!(!decide(s, check(t, &f.manager, "settings", "view", "", "")).await.allowed);
    assert!(decide(s, check(t, &f.manager, "users", "view", "", &f.child)).await.allowed);

    // TENANT: anything in the tenant.
    let r = decide(s, check(t, &f.admin, "deals", "delete", &f.operator, &f.root)).await;
    assert!(r.allowed && scope(&r) == pb::Scope::Tenant, "{r:?}");
    assert!(decide(s, check(t, &f.admin, "settings", "edit", "", "")).await.allowed);

    // Users who are not ACTIVE, users of other tenants and unknown users are denied.
    let mut u = s.users().await;
    let invited = u.create_user(invite(t, "new@example.com")).await.unwrap().into_inner().user.unwrap();
    s.roles()
        .await
        .assign_role(pb::AssignRoleRequest {
            tenant_id: t.into(),
            user_id: invited.user_id.clone(),
            role_id: s.builtin_role(t, "administrator").await,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let r = decide(s, check(t, &invited.user_id, "deals", "view", "", "")).await;
    assert!(!r.allowed && r.reason.contains("INVITED"), "{r:?}");
    let other = s.tenant("globex", 0).await;
    let stranger = s.active_user(&other, "x@example.com", "", &[s.builtin_role(&other, "administrator").await]).await;
    let r = decide(s, check(t, &stranger, "deals", "view", "", "")).await;
    assert!(!r.allowed && r.reason.contains("does not exist in this tenant"), "{r:?}");
    let r = decide(s, check(t, &uuid::Uuid::now_v7().to_string(), "deals", "view", "", "")).await;
    assert!(!r.allowed);

    // Bad requests are refused field by field.
    let bad = s.access().await.check(check(t, "not-a-uuid", "", "", "nope", "")).await;
    assert_eq!(
        bad_fields(&expect_code(bad, Code::InvalidArgument)),
        ["action", "module", "resource.owner_user_id", "user_id"]
    );
    let bad = s.access().await.check(check(t, &f.admin, "spaceships", "view", "", "")).await;
    assert_eq!(bad_fields(&expect_code(bad, Code::InvalidArgument)), ["module"]);
    let bad = s.access().await.check(check(t, &f.admin, "analytics", "delete", "", "")).await;
    assert_eq!(bad_fields(&expect_code(bad, Code::InvalidArgument)), ["action"]);
    let missing = s.access().await.check(check("no-such-tenant", &f.admin, "deals", "view", "", "")).await;
    expect_code(missing, Code::NotFound);
    f.s.stop().await;
}

async fn changes_are_reflected_by_the_next_check(backend: Backend) {
    let f = fixture(backend).await;
    let (s, t) = (&f.s, f.t.as_str());
    let mut roles = s.roles().await;
    let mut users = s.users().await;
    let edit_in_other = || check(t, &f.manager, "deals", "edit", "", &f.other);
    assert!(!decide(s, edit_in_other()).await.allowed);

    // A new role with TENANT scope, assigned: the very next check allows.
    let wide = roles
        .create_role(pb::CreateRoleRequest {
            tenant_id: t.into(),
            role: Some(pb::Role {
                name: "Wide".into(),
                permissions: vec![pb::Permission {
                    module: "deals".into(),
                    action: "edit".into(),
                    scope: pb::Scope::Tenant as i32,
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    roles
        .assign_role(pb::AssignRoleRequest {
            tenant_id: t.into(),
            user_id: f.manager.clone(),
            role_id: wide.role_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert!(decide(s, edit_in_other()).await.allowed, "assignment");

    // Narrowing the role's scope: reflected at once.
    roles
        .update_role(pb::UpdateRoleRequest {
            tenant_id: t.into(),
            role: Some(pb::Role {
                role_id: wide.role_id.clone(),
                permissions: vec![pb::Permission {
                    module: "deals".into(),
                    action: "edit".into(),
                    scope: pb::Scope::Own as i32,
                }],
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["permissions".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!decide(s, edit_in_other()).await.allowed, "role edit");

    // Moving the Support department under Sales brings it into the manager's tree.
    users
        .update_department(pb::UpdateDepartmentRequest {
            tenant_id: t.into(),
            department: Some(pb::Department {
                department_id: f.other.clone(),
                parent_department_id: f.child.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["parent_department_id".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(decide(s, edit_in_other()).await.allowed, "department move");

    // Moving the manager out of Sales takes it away again.
    users
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.into(),
            user: Some(pb::User { user_id: f.manager.clone(), department_id: f.child.clone(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["department_id".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!decide(s, check(t, &f.manager, "deals", "edit", "", &f.root)).await.allowed, "user moved");

    // Deactivation: denied at once; reactivation: allowed again.
    users
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.into(),
            user_id: f.manager.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = decide(s, check(t, &f.manager, "deals", "view", "", "")).await;
    assert!(!r.allowed && r.reason.contains("DEACTIVATED"), "{r:?}");
    users
        .reactivate_user(pb::ReactivateUserRequest {
            tenant_id: t.into(),
            user_id: f.manager.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(decide(s, check(t, &f.manager, "deals", "view", "", "")).await.allowed);

    // Unassigning the built-in role.
    roles
        .unassign_role(pb::UnassignRoleRequest {
            tenant_id: t.into(),
            user_id: f.manager.clone(),
            role_id: s.builtin_role(t, "manager").await,
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert!(!decide(s, check(t, &f.manager, "deals", "view", "", "")).await.allowed, "unassignment");
    let _ = (&f.admin, &f.operator);
    f.s.stop().await;
}

async fn batch_check_and_effective_permissions(backend: Backend) {
    let f = fixture(backend).await;
    let (s, t) = (&f.s, f.t.as_str());
    let item = |user: &str, module: &str, action: &str, dept: &str| pb::BatchCheckItem {
        user_id: user.into(),
        module: module.into(),
        action: action.into(),
        resource: (!dept.is_empty()).then(|| pb::Resource { department_id: dept.into(), ..Default::default() }),
    };
    let mut a = s.access().await;
    let out = a
        .batch_check(pb::BatchCheckRequest {
            tenant_id: t.into(),
            checks: vec![
                item(&f.manager, "deals", "edit", &f.child),
                item(&f.operator, "deals", "delete", ""),
                item(&f.admin, "settings", "edit", ""),
                item(&f.manager, "deals", "edit", &f.other),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results.iter().map(|r| r.allowed).collect::<Vec<_>>(), [true, false, true, false]);
    // Each single check agrees with its batch result.
    let single = decide(s, check(t, &f.manager, "deals", "edit", "", &f.child)).await;
    assert_eq!(
        (single.allowed, single.scope, single.reason.clone()),
        (out.results[0].allowed, out.results[0].scope, out.results[0].reason.clone())
    );

    let bad = a
        .batch_check(pb::BatchCheckRequest {
            tenant_id: t.into(),
            checks: vec![
                item(&f.manager, "deals", "edit", ""),
                item(&f.manager, "nope", "edit", ""),
                item("x", "deals", "fly", ""),
            ],
        })
        .await;
    assert_eq!(
        bad_fields(&expect_code(bad, Code::InvalidArgument)),
        ["checks[1].module", "checks[2].action", "checks[2].user_id"]
    );
    let too_many = a
        .batch_check(pb::BatchCheckRequest {
            tenant_id: t.into(),
            checks: vec![item(&f.manager, "deals", "view", ""); 1001],
        })
        .await;
    assert_eq!(bad_fields(&expect_code(too_many, Code::InvalidArgument)), ["checks"]);
    let full = a
        .batch_check(pb::BatchCheckRequest {
            tenant_id: t.into(),
            checks: vec![item(&f.manager, "deals", "view", &f.child); 1000],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(full.results.len() == 1000 && full.results.iter().all(|r| r.allowed));

    let e = s
        .roles()
        .await
        .get_effective_permissions(pb::GetEffectivePermissionsRequest {
            tenant_id: t.into(),
            user_id: f.manager.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(e.active);
    assert_eq!(e.user_id, f.manager);
    let mut depts = e.department_ids.clone();
    depts.sort();
    let mut want = vec![f.root.clone(), f.child.clone()];
    want.sort();
    assert_eq!(depts, want, "the manager's department tree");
    let deals_edit = e.permissions.iter().find(|p| p.module == "deals" && p.action == "edit").unwrap();
    assert_eq!(deals_edit.scope, pb::Scope::Department as i32);
    assert_eq!(deals_edit.role_ids, [s.builtin_role(t, "manager").await]);
    assert!(!e.permissions.iter().any(|p| p.module == "settings"));
    f.s.stop().await;
}

/// Two servers on one PostgreSQL: a change made through one is reflected by Check on the other
/// within the stated bound (LISTEN/NOTIFY, with the policy-version poll as the safety net).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_follow_each_other() {
    let a = TestServer::start(Backend::Postgres).await;
    let b_db = TestDb::attach(&a.db);
    let mut config = common::test_config(&b_db);
    config.policy_poll_interval = Duration::from_millis(500);
    let b = TestServer::start_on(b_db, config).await;
    let t = a.tenant("acme", 0).await;
    let admin_role = a.builtin_role(&t, "administrator").await;
    let user = a.active_user(&t, "ann@example.com", "", &[]).await;
    let req = || check(&t, &user, "settings", "edit", "", "");
    // B caches the user without the role.
    assert!(!decide(&b, req()).await.allowed);
    let started = Instant::now();
    a.roles()
        .await
        .assign_role(pb::AssignRoleRequest {
            tenant_id: t.clone(),
            user_id: user.clone(),
            role_id: admin_role.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    common::eventually("replica B sees the assignment", || async { decide(&b, req()).await.allowed }).await;
    let notified = started.elapsed();
    assert!(notified < Duration::from_secs(1), "took {notified:?}; the README promises well under a second");

    // A change that is never announced (written straight to the database, no NOTIFY) is still
    // picked up by the version poll.
    let db = a.db.connect().await;
    let uid = format!("'{user}'");
    db.execute_unprepared(&format!("DELETE FROM user_roles WHERE user_id = {uid}")).await.unwrap();
    db.execute_unprepared(&format!("UPDATE tenants SET policy_version = policy_version + 1 WHERE tenant_id = '{t}'"))
        .await
        .unwrap();
    let started = Instant::now();
    common::eventually("replica B polls the version", || async { !decide(&b, req()).await.allowed }).await;
    assert!(started.elapsed() < Duration::from_secs(2), "poll interval is 500 ms, took {:?}", started.elapsed());
    b.stop().await;
    a.stop().await;
}

/// Two servers on one PostgreSQL: a replica that cached a user's profile (GetUser) shows a change
/// made through the other one: a login's time (a profile-only change, which leaves the policy
/// version alone) as well as a role assignment. Normally within milliseconds; the bound here is
/// 2 s for a loaded test machine (without the notification the login never shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_follow_across_replicas() {
    const PASSWORD: &str = "velvet staircase under morning rain";
    let a = TestServer::start(Backend::Postgres).await;
    let b_db = TestDb::attach(&a.db);
    let config = common::test_config(&b_db);
    let b = TestServer::start_on(b_db, config).await;
    let t = a.tenant("acme", 0).await;
    let user = a.password_user(&t, "ann@example.com", PASSWORD, &[]).await;
    let get_on_b = || async {
        let req = pb::GetUserRequest { tenant_id: t.clone(), user_id: user.clone() };
        b.users().await.get_user(req).await.expect("get user on B").into_inner().user.unwrap()
    };
    let cached = get_on_b().await;
    assert!(cached.last_login_time.is_none() && cached.role_ids.is_empty(), "{cached:?}");

    // The first login shows on B once B listens (its listener may connect late; connecting flushes
    // the cache, so then B reloads)…
    a.login(&t, "ann@example.com", PASSWORD).await;
    common::eventually("replica B shows the login", || async { get_on_b().await.last_login_time.is_some() }).await;
    // …the second one can reach B's cached profile only through the notification (a login leaves
    // the policy version alone, so the version poll never flushes it).
    let seen = get_on_b().await.last_login_time;
    a.login(&t, "ann@example.com", PASSWORD).await;
    let started = Instant::now();
    common::eventually("replica B shows the second login", || async { get_on_b().await.last_login_time != seen }).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    let manager = a.builtin_role(&t, "manager").await;
    let assign = pb::AssignRoleRequest {
        tenant_id: t.clone(),
        user_id: user.clone(),
        role_id: manager.clone(),
        request_id: String::new(),
    };
    a.roles().await.assign_role(assign).await.unwrap();
    let started = Instant::now();
    common::eventually("replica B shows the role", || async { get_on_b().await.role_ids == [manager.clone()] }).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    b.stop().await;
    a.stop().await;
}
