use prost_types::FieldMask;
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, bad_fields, count, expect_code, invite, pb, reason},
};

both_backends!(
    catalog_and_custom_modules,
    builtin_roles_are_protected_and_copyable,
    role_validation_update_and_delete,
    assignment_and_the_last_administrator,
);

fn perm(module: &str, action: &str, scope: pb::Scope) -> pb::Permission {
    pb::Permission { module: module.into(), action: action.into(), scope: scope as i32 }
}

fn new_role(t: &str, name: &str, permissions: Vec<pb::Permission>) -> pb::CreateRoleRequest {
    pb::CreateRoleRequest {
        tenant_id: t.into(),
        role: Some(pb::Role { name: name.into(), permissions, ..Default::default() }),
        ..Default::default()
    }
}

async fn catalog_and_custom_modules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut r = s.roles().await;
    let catalog =
        r.get_permission_catalog(pb::GetPermissionCatalogRequest { tenant_id: t.clone() }).await.unwrap().into_inner();
    let names: Vec<_> = catalog.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["leads", "contacts", "companies", "deals", "tasks", "analytics", "users", "roles", "settings"]);
    let deals = &catalog.modules[3];
    assert_eq!(deals.actions, ["view", "create", "edit", "delete", "export", "assign"]);
    assert!(deals.builtin);
    assert_eq!(catalog.scopes.len(), 4);

    // A custom entity with its own actions.
    let module = r
        .create_module(pb::CreateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module {
                name: "invoices".into(),
                display_name: "Invoices".into(),
                actions: vec!["view".into(), "approve".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert!(!module.builtin);
    let bad = r
        .create_module(pb::CreateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module {
                name: "Bad Name".into(),
                actions: vec!["ok".into(), "ok".into(), "Nope!".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        bad_fields(&expect_code(bad, Code::InvalidArgument)),
        ["module.actions[1]", "module.actions[2]", "module.display_name", "module.name"]
    );
    let builtin_name = r
        .create_module(pb::CreateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module {
                name: "deals".into(),
                display_name: "D".into(),
                actions: vec!["x".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(bad_fields(&expect_code(builtin_name, Code::InvalidArgument)), ["module.name"]);
    let dup = r
        .create_module(pb::CreateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module {
                name: "invoices".into(),
                display_name: "I".into(),
                actions: vec!["x".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(dup, Code::AlreadyExists)), "MODULE_ALREADY_EXISTS");

    // Roles can grant it; the administrator has it automatically.
    let approver = r
        .create_role(new_role(&t, "Approver", vec![perm("invoices", "approve", pb::Scope::Tenant)]))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    let admin_id = s.builtin_role(&t, "administrator").await;
    let admin = r
        .get_role(pb::GetRoleRequest { tenant_id: t.clone(), role_id: admin_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert!(admin.permissions.contains(&perm("invoices", "approve", pb::Scope::Tenant)));
    let boss = s.active_user(&t, "boss@example.com", "", &[admin_id]).await;
    let mut a = s.access().await;
    let check = |user: &str, action: &str| pb::CheckRequest {
        tenant_id: t.clone(),
        user_id: user.into(),
        module: "invoices".into(),
        action: action.into(),
        resource: None,
    };
    assert!(a.check(check(&boss, "approve")).await.unwrap().into_inner().allowed);

    // Removing an action a role grants, or the module, is refused while roles use it.
    let st = expect_code(
        r.update_module(pb::UpdateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module { name: "invoices".into(), actions: vec!["view".into()], ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["actions".into()] }),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "MODULE_IN_USE");
    let st = expect_code(
        r.delete_module(pb::DeleteModuleRequest {
            tenant_id: t.clone(),
            name: "invoices".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "MODULE_IN_USE");
    // Adding an action is fine and reaches Check at once.
    let m2 = r
        .update_module(pb::UpdateModuleRequest {
            tenant_id: t.clone(),
            module: Some(pb::Module {
                name: "invoices".into(),
                actions: vec!["view".into(), "approve".into(), "void".into()],
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["actions".into()] }),
            etag: module.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert_eq!(m2.actions.len(), 3);
    assert!(a.check(check(&boss, "void")).await.unwrap().into_inner().allowed);
    r.delete_role(pb::DeleteRoleRequest { tenant_id: t.clone(), role_id: approver.role_id, ..Default::default() })
        .await
        .unwrap();
    r.delete_module(pb::DeleteModuleRequest {
        tenant_id: t.clone(),
        name: "invoices".into(),
        etag: m2.etag.clone(),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let gone = a.check(check(&boss, "approve")).await;
    assert_eq!(bad_fields(&expect_code(gone, Code::InvalidArgument)), ["module"]);
    s.stop().await;
}

async fn builtin_roles_are_protected_and_copyable(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut r = s.roles().await;
    let roles = r
        .list_roles(pb::ListRolesRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .roles;
    let mut names: Vec<_> = roles.iter().filter(|r| r.builtin).map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["administrator", "guest", "manager", "operator"]);
    let manager = roles.iter().find(|r| r.name == "manager").unwrap().clone();
    assert!(manager.permissions.contains(&perm("deals", "delete", pb::Scope::Department)));
    assert!(manager.permissions.contains(&perm("users", "view", pb::Scope::Department)));
    assert!(!manager.permissions.iter().any(|p| p.module == "settings"));
    let operator = roles.iter().find(|r| r.name == "operator").unwrap();
    assert!(operator.permissions.contains(&perm("leads", "edit", pb::Scope::Own)));
    assert!(!operator.permissions.iter().any(|p| ["delete", "export", "assign"].contains(&p.action.as_str())));
    let guest = roles.iter().find(|r| r.name == "guest").unwrap();
    assert!(guest.permissions.iter().all(|p| p.action == "view"));

    let st = expect_code(
        r.update_role(pb::UpdateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role { role_id: manager.role_id.clone(), name: "boss".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["name".into()] }),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "BUILTIN_ROLE");
    let st = expect_code(
        r.delete_role(pb::DeleteRoleRequest {
            tenant_id: t.clone(),
            role_id: manager.role_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "BUILTIN_ROLE");

    let copy = r
        .create_role(pb::CreateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role { name: "Senior manager".into(), ..Default::default() }),
            source_role_id: manager.role_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert!(!copy.builtin);
    assert_eq!(copy.permissions.len(), manager.permissions.len());
    // The copy can then be edited.
    let mut perms = copy.permissions.clone();
    perms.push(perm("settings", "view", pb::Scope::Tenant));
    let edited = r
        .update_role(pb::UpdateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role { role_id: copy.role_id.clone(), permissions: perms, ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["permissions".into()] }),
            etag: copy.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert!(edited.permissions.contains(&perm("settings", "view", pb::Scope::Tenant)));
    let both = r
        .create_role(pb::CreateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role {
                name: "X".into(),
                permissions: vec![perm("deals", "view", pb::Scope::Own)],
                ..Default::default()
            }),
            source_role_id: manager.role_id.clone(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(bad_fields(&expect_code(both, Code::InvalidArgument)), ["role.permissions"]);
    s.stop().await;
}

async fn role_validation_update_and_delete(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut r = s.roles().await;
    let bad = r
        .create_role(new_role(
            &t,
            "",
            vec![
                perm("nope", "view", pb::Scope::Own),
                perm("deals", "fly", pb::Scope::Own),
                pb::Permission { module: "deals".into(), action: "view".into(), scope: 0 },
                perm("deals", "edit", pb::Scope::Own),
                perm("deals", "edit", pb::Scope::Tenant),
            ],
        ))
        .await;
    assert_eq!(
        bad_fields(&expect_code(bad, Code::InvalidArgument)),
        ["role.name", "role.permissions[2].scope", "role.permissions[4]"]
    );
    let unknown = r
        .create_role(new_role(
            &t,
            "R",
            vec![perm("nope", "view", pb::Scope::Own), perm("deals", "fly", pb::Scope::Own)],
        ))
        .await;
    assert_eq!(
        bad_fields(&expect_code(unknown, Code::InvalidArgument)),
        ["role.permissions[0].module", "role.permissions[1].action"]
    );
    // Names are unique per tenant, case-insensitively, built-in names included.
    let taken = r.create_role(new_role(&t, "Manager", vec![])).await;
    assert_eq!(reason(&expect_code(taken, Code::AlreadyExists)), "ROLE_NAME_TAKEN");

    let sales = r
        .create_role(new_role(&t, "Sales", vec![perm("deals", "view", pb::Scope::Tenant)]))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    let support = r
        .create_role(new_role(&t, "Support", vec![perm("tasks", "view", pb::Scope::Own)]))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    let renamed = r
        .update_role(pb::UpdateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role {
                role_id: sales.role_id.clone(),
                name: "Sales team".into(),
                description: "x".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["name".into()] }),
            etag: sales.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!(renamed.name, "Sales team");
    assert_eq!(renamed.description, "", "outside the mask");
    let stale = r
        .update_role(pb::UpdateRoleRequest {
            tenant_id: t.clone(),
            role: Some(pb::Role { role_id: sales.role_id.clone(), name: "Y".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["name".into()] }),
            etag: sales.etag.clone(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    // A role still held needs a replacement, which the holders get in the same transaction.
    let mut u = s.users().await;
    let mut req = invite(&t, "ann@example.com");
    req.role_ids = vec![sales.role_id.clone()];
    let ann = u.create_user(req).await.unwrap().into_inner().user.unwrap();
    assert_eq!(ann.role_ids, std::slice::from_ref(&sales.role_id));
    let st = expect_code(
        r.delete_role(pb::DeleteRoleRequest {
            tenant_id: t.clone(),
            role_id: sales.role_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "ROLE_IN_USE");
    let listed = r.get_role(pb::GetRoleRequest { tenant_id: t.clone(), role_id: sales.role_id.clone() }).await.unwrap();
    assert_eq!(listed.into_inner().role.unwrap().user_count, 1);
    r.delete_role(pb::DeleteRoleRequest {
        tenant_id: t.clone(),
        role_id: sales.role_id.clone(),
        replacement_role_id: support.role_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ann = u
        .get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: ann.user_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(ann.role_ids, std::slice::from_ref(&support.role_id));
    let gone = r.get_role(pb::GetRoleRequest { tenant_id: t.clone(), role_id: sales.role_id.clone() }).await;
    assert_eq!(reason(&expect_code(gone, Code::NotFound)), "ROLE_NOT_FOUND");

    let db = s.db.connect().await;
    for (action, n) in [("role.created", 2), ("role.updated", 1), ("role.deleted", 1)] {
        assert_eq!(
            count(&db, &format!("SELECT COUNT(*) FROM audit_events WHERE action = '{action}'")).await,
            n,
            "{action}"
        );
    }
    s.stop().await;
}

async fn assignment_and_the_last_administrator(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let admin = s.builtin_role(&t, "administrator").await;
    let guest = s.builtin_role(&t, "guest").await;
    let a = s.active_user(&t, "a@example.com", "", std::slice::from_ref(&admin)).await;
    let b = s.active_user(&t, "b@example.com", "", &[]).await;
    let mut r = s.roles().await;
    let mut u = s.users().await;
    let assign = |user: &str, role: &str| pb::AssignRoleRequest {
        tenant_id: t.clone(),
        user_id: user.into(),
        role_id: role.into(),
        request_id: String::new(),
    };
    let unassign = |user: &str, role: &str| pb::UnassignRoleRequest {
        tenant_id: t.clone(),
        user_id: user.into(),
        role_id: role.into(),
        request_id: String::new(),
    };

    // The last ACTIVE administrator can be neither demoted, deactivated nor deleted.
    let st = expect_code(r.unassign_role(unassign(&a, &admin)).await, Code::FailedPrecondition);
    assert_eq!(reason(&st), "LAST_ADMINISTRATOR");
    let st = expect_code(
        u.deactivate_user(pb::DeactivateUserRequest { tenant_id: t.clone(), user_id: a.clone(), ..Default::default() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "LAST_ADMINISTRATOR");
    let st = expect_code(
        u.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: a.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "LAST_ADMINISTRATOR");

    // With a second administrator it works.
    let user_b = r.assign_role(assign(&b, &admin)).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user_b.role_ids, std::slice::from_ref(&admin));
    let again = r.assign_role(assign(&b, &admin)).await.unwrap().into_inner().user.unwrap();
    assert_eq!(again.role_ids, std::slice::from_ref(&admin), "assigning twice changes nothing");
    r.unassign_role(unassign(&a, &admin)).await.unwrap();
    let st = expect_code(r.unassign_role(unassign(&a, &admin)).await, Code::NotFound);
    assert_eq!(reason(&st), "ROLE_NOT_ASSIGNED");
    // Now b is the last one.
    expect_code(
        u.deactivate_user(pb::DeactivateUserRequest { tenant_id: t.clone(), user_id: b.clone(), ..Default::default() })
            .await,
        Code::FailedPrecondition,
    );
    // A deactivated administrator does not count.
    r.assign_role(assign(&a, &admin)).await.unwrap();
    u.deactivate_user(pb::DeactivateUserRequest { tenant_id: t.clone(), user_id: a.clone(), ..Default::default() })
        .await
        .unwrap();
    expect_code(r.unassign_role(unassign(&b, &admin)).await, Code::FailedPrecondition);

    // Roles go to users that are not deleted; unknown roles and users are refused.
    let c = u.create_user(invite(&t, "c@example.com")).await.unwrap().into_inner().user.unwrap();
    u.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: c.user_id.clone(), ..Default::default() })
        .await
        .unwrap();
    let st = expect_code(r.assign_role(assign(&c.user_id, &guest)).await, Code::FailedPrecondition);
    assert_eq!(reason(&st), "INVALID_USER_STATE");
    let st = expect_code(r.assign_role(assign(&b, &uuid::Uuid::now_v7().to_string())).await, Code::NotFound);
    assert_eq!(reason(&st), "ROLE_NOT_FOUND");
    let st = expect_code(r.assign_role(assign(&uuid::Uuid::now_v7().to_string(), &guest)).await, Code::NotFound);
    assert_eq!(reason(&st), "USER_NOT_FOUND");
    let mut bad = invite(&t, "d@example.com");
    bad.role_ids = vec![uuid::Uuid::now_v7().to_string()];
    assert_eq!(bad_fields(&expect_code(u.create_user(bad).await, Code::InvalidArgument)), ["role_ids[0]"]);

    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'role.assigned'").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'role.unassigned'").await, 1);
    s.stop().await;
}
