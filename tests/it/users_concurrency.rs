//! Races: concurrent callers never corrupt state.

use std::collections::HashSet;

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, count, invite, pb, reason},
};

both_backends!(
    seat_race_has_one_winner,
    unique_email_race_has_one_winner,
    pagination_is_stable_under_concurrent_inserts
);

async fn seat_race_has_one_winner(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 3).await;
    let mut c = s.users().await;
    c.create_user(invite(&t, "a@example.com")).await.unwrap();
    c.create_user(invite(&t, "b@example.com")).await.unwrap();
    // Eight concurrent creates for the last seat: exactly one wins.
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut c = s.users().await;
        let req = invite(&t, &format!("racer{i}@example.com"));
        handles.push(tokio::spawn(async move { c.create_user(req).await }));
    }
    let (mut won, mut exhausted) = (0, 0);
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert_eq!(reason(&e), "SEAT_LIMIT_REACHED");
                exhausted += 1;
            }
        }
    }
    assert_eq!((won, exhausted), (1, 7));
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 3);
    s.stop().await;
}

async fn unique_email_race_has_one_winner(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut c = s.users().await;
        // Same address in different letter cases.
        let email = if i % 2 == 0 { "Same@Example.com" } else { "same@example.COM" };
        let req = invite(&t, email);
        handles.push(tokio::spawn(async move { c.create_user(req).await }));
    }
    let mut won = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
                assert_eq!(reason(&e), "EMAIL_TAKEN");
            }
        }
    }
    assert_eq!(won, 1);
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'user.created'").await, 1);
    s.stop().await;
}

async fn pagination_is_stable_under_concurrent_inserts(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let mut existing = HashSet::new();
    for i in 0..60 {
        let u = c.create_user(invite(&t, &format!("u{i}@example.com"))).await.unwrap().into_inner().user.unwrap();
        existing.insert(u.user_id);
    }
    // Writers keep inserting while the reader pages through.
    let writer = {
        let mut c = s.users().await;
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                c.create_user(invite(&t, &format!("late{i}@example.com"))).await.unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_users(pb::ListUsersRequest {
                tenant_id: t.clone(),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        tokio::task::yield_now().await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    writer.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no user appears twice");
    assert!(existing.is_subset(&unique), "every user that existed before is listed");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages follow one stable order");
    s.stop().await;
}
