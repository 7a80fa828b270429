use prost_types::FieldMask;
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, bad_fields, count, expect_code, invite, pb, reason},
};

both_backends!(department_tree_rules);

fn new_dept(t: &str, name: &str, parent: &str) -> pb::CreateDepartmentRequest {
    pb::CreateDepartmentRequest {
        tenant_id: t.into(),
        department: Some(pb::Department {
            name: name.into(),
            parent_department_id: parent.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

fn move_to(t: &str, id: &str, parent: &str) -> pb::UpdateDepartmentRequest {
    pb::UpdateDepartmentRequest {
        tenant_id: t.into(),
        department: Some(pb::Department {
            department_id: id.into(),
            parent_department_id: parent.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec!["parent_department_id".into()] }),
        ..Default::default()
    }
}

async fn department_tree_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let d = |r: tonic::Response<pb::CreateDepartmentResponse>| r.into_inner().department.unwrap();
    let root = d(c.create_department(new_dept(&t, "Sales", "")).await.unwrap());
    let mid = d(c.create_department(new_dept(&t, "Sales EMEA", &root.department_id)).await.unwrap());
    let leaf = d(c.create_department(new_dept(&t, "Sales DACH", &mid.department_id)).await.unwrap());
    assert_eq!(leaf.parent_department_id, mid.department_id);

    let got = c
        .get_department(pb::GetDepartmentRequest { tenant_id: t.clone(), department_id: mid.department_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .department
        .unwrap();
    assert_eq!(got, mid);

    // Names are unique per tenant, case-insensitively.
    let dup = c.create_department(new_dept(&t, "sales", "")).await;
    assert_eq!(reason(&expect_code(dup, Code::AlreadyExists)), "DEPARTMENT_NAME_TAKEN");
    let bad = c.create_department(new_dept(&t, "", "nope")).await;
    assert_eq!(
        bad_fields(&expect_code(bad, Code::InvalidArgument)),
        ["department.name", "department.parent_department_id"]
    );
    let unknown_parent = c.create_department(new_dept(&t, "X", &uuid::Uuid::now_v7().to_string())).await;
    assert_eq!(bad_fields(&expect_code(unknown_parent, Code::InvalidArgument)), ["department.parent_department_id"]);

    // No cycles: a department can not move under itself or its own subtree.
    for target in [&root.department_id, &leaf.department_id] {
        let st =
            expect_code(c.update_department(move_to(&t, &root.department_id, target)).await, Code::FailedPrecondition);
        assert_eq!(reason(&st), "DEPARTMENT_CYCLE");
    }
    // A legal move: the leaf to the top level, then back.
    let moved =
        c.update_department(move_to(&t, &leaf.department_id, "")).await.unwrap().into_inner().department.unwrap();
    assert!(moved.parent_department_id.is_empty());
    c.update_department(move_to(&t, &leaf.department_id, &mid.department_id)).await.unwrap();

    // The tree is at most 16 levels deep.
    let mut parent = leaf.department_id.clone();
    for level in 4..=16 {
        parent = d(c.create_department(new_dept(&t, &format!("Level {level}"), &parent)).await.unwrap()).department_id;
    }
    let st = expect_code(c.create_department(new_dept(&t, "Level 17", &parent)).await, Code::FailedPrecondition);
    assert_eq!(reason(&st), "DEPARTMENT_CYCLE");

    // Head of department must be a user of the tenant.
    let head = c.create_user(invite(&t, "head@example.com")).await.unwrap().into_inner().user.unwrap();
    let with_head = c
        .update_department(pb::UpdateDepartmentRequest {
            tenant_id: t.clone(),
            department: Some(pb::Department {
                department_id: root.department_id.clone(),
                head_user_id: head.user_id.clone(),
                name: "Global Sales".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["head_user_id".into(), "name".into()] }),
            etag: root.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .department
        .unwrap();
    assert_eq!(with_head.head_user_id, head.user_id);
    assert_eq!(with_head.name, "Global Sales");
    let bad_head = c
        .update_department(pb::UpdateDepartmentRequest {
            tenant_id: t.clone(),
            department: Some(pb::Department {
                department_id: root.department_id.clone(),
                head_user_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["head_user_id".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad_head, Code::InvalidArgument)), ["department.head_user_id"]);
    let stale = c
        .update_department(pb::UpdateDepartmentRequest {
            tenant_id: t.clone(),
            department: Some(pb::Department {
                department_id: root.department_id.clone(),
                name: "Y".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["name".into()] }),
            etag: root.etag.clone(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    // Listing: all, or the children of one department, paginated.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_departments(pb::ListDepartmentsRequest {
                tenant_id: t.clone(),
                page_size: 5,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.departments);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all.len(), 16);
    let children = c
        .list_departments(pb::ListDepartmentsRequest {
            tenant_id: t.clone(),
            parent_department_id: root.department_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(children.departments.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["Sales EMEA"]);

    // Deleting a department with users or sub-departments is refused with the counts.
    let mut member = invite(&t, "member@example.com");
    member.user.as_mut().unwrap().department_id = mid.department_id.clone();
    c.create_user(member).await.unwrap();
    let st = expect_code(
        c.delete_department(pb::DeleteDepartmentRequest {
            tenant_id: t.clone(),
            department_id: mid.department_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "DEPARTMENT_NOT_EMPTY");
    let pf = tonic_types::StatusExt::get_error_details(&st).precondition_failure().cloned().unwrap();
    let kinds: Vec<_> = pf.violations.iter().map(|v| v.r#type.as_str()).collect();
    assert_eq!(kinds, ["DEPARTMENT_USERS", "DEPARTMENT_CHILDREN"]);

    // An empty leaf can be deleted; then it is gone.
    c.delete_department(pb::DeleteDepartmentRequest {
        tenant_id: t.clone(),
        department_id: parent.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let gone = c.get_department(pb::GetDepartmentRequest { tenant_id: t.clone(), department_id: parent }).await;
    assert_eq!(reason(&expect_code(gone, Code::NotFound)), "DEPARTMENT_NOT_FOUND");

    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'department.deleted'").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'department.updated'").await, 3);
    s.stop().await;
}
