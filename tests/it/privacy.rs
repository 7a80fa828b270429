//! Personal data in the audit trail: a purge erases it everywhere the trail keeps it (stored
//! events, the stream's in-memory ring), and failed logins never store a typed address.

use std::{collections::BTreeMap, time::Duration};

use sea_orm::{ConnectionTrait, Statement};
use tokio_stream::StreamExt;

use crate::{
    both_backends,
    common::{Backend, TestServer, pb},
};

const PASSWORD: &str = "velvet staircase under morning rain";

both_backends!(a_purge_leaves_no_personal_data_in_the_trail);

/// Every text column of every stored audit event, one string per row.
async fn stored_trail(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT action, target_id, details, changes FROM audit_events ORDER BY seq",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (0..4)
                .map(|i| r.try_get_by_index::<Option<String>>(i).unwrap().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

/// Ann's profile is written, changed, typed at logins (known and, before she existed, unknown)
/// and erased: afterwards no stored event and no event the stream replays from memory holds any
/// of her values, while the events themselves (what happened, to which id) remain.
async fn a_purge_leaves_no_personal_data_in_the_trail(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut audit = s.audit().await;
    // A stream opened now follows the tenant from its first event; its cursor later lets a second
    // stream replay what the server holds in memory.
    let mut first = audit
        .stream_events(pb::StreamEventsRequest {
            tenant_id: t.clone(),
            since_time: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let start = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap().unwrap().unwrap();
        if let Some(pb::stream_events_response::Message::Event(e)) = m.message {
            break e.cursor;
        }
    };
    drop(first);

    // Before Ann exists, someone types her address (an unknown e-mail) and another one.
    for typed in ["ann.lee@example.com", "nobody.here@example.com"] {
        assert!(s.try_login(&t, typed, "a wrong password guessed", "").await.is_err());
    }
    let mut users = s.users().await;
    let ann = users
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                email: "ann.lee@example.com".into(),
                given_name: "Annabelle".into(),
                family_name: "Quixotic".into(),
                phone: "+14155552671".into(),
                position: "Zeppelin wrangler".into(),
                employee_number: "EMP-734521".into(),
                hire_date: "2019-07-14".into(),
                attributes: BTreeMap::from([("badge".into(), "MAGENTA-77".into())]),
                ..Default::default()
            }),
            initial_password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    // Her profile changes (events with before and after values), she logs in, fails once.
    let updated = users
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                user_id: ann.user_id.clone(),
                family_name: "Quintessa".into(),
                phone: "+14155552672".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["family_name".into(), "phone".into()] }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    s.login(&t, "ann.lee@example.com", PASSWORD).await;
    assert!(s.try_login(&t, "Ann.Lee@example.com", "not her password at all", "").await.is_err());
    users
        .delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: ann.user_id.clone(), ..Default::default() })
        .await
        .unwrap();

    let personal = [
        "ann.lee",
        "Annabelle",
        "Quixotic",
        "Quintessa",
        "4155552671",
        "4155552672",
        "Zeppelin",
        "EMP-734521",
        "2019-07-14",
        "MAGENTA-77",
    ];
    let db = s.db.connect().await;
    // Before the purge the trail does hold her data: the scan below can see it.
    let before = stored_trail(&db).await.join("\n");
    for value in personal {
        assert!(before.contains(value), "{value} is in the trail before the purge");
    }
    assert!(!before.contains("nobody.here"), "failed logins keep a keyed hash of the typed address, not the address");
    let typed_hashes = |trail: &[String]| {
        trail
            .iter()
            .filter(|r| r.starts_with("auth.login_failed") && r.contains("unknown_email"))
            .map(|r| {
                let details = r.split(" | ").nth(2).unwrap();
                let v: serde_json::Value = serde_json::from_str(details).unwrap();
                v["email_hash"].as_str().unwrap().to_owned()
            })
            .collect::<Vec<_>>()
    };
    let hashes = typed_hashes(&stored_trail(&db).await);
    assert_eq!(hashes.len(), 2);
    assert!(hashes.iter().all(|h| h != "[redacted]") && hashes[0] != hashes[1], "{hashes:?}");

    users
        .purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: ann.user_id.clone(), ..Default::default() })
        .await
        .unwrap();

    let after = stored_trail(&db).await;
    for row in &after {
        for value in personal {
            assert!(!row.contains(value), "{value} is still in a stored event: {row}");
        }
    }
    let actions: Vec<&str> = after.iter().map(|r| r.split(" | ").next().unwrap()).collect();
    for action in
        ["user.created", "user.updated", "auth.login_succeeded", "auth.login_failed", "user.deleted", "user.purged"]
    {
        assert!(actions.contains(&action), "{action} remains in the trail: {actions:?}");
    }
    // The address typed before she existed is hers: its hash is erased; the other one stays.
    let hashes_after = typed_hashes(&after);
    assert_eq!(hashes_after, ["[redacted]".to_owned(), hashes[1].clone()]);
    let purged = after.iter().find(|r| r.starts_with("user.purged")).unwrap();
    assert!(purged.contains(&ann.user_id), "the purge names the id: {purged}");
    assert_eq!(updated.family_name, "Quintessa");

    // The stream replays the same events from memory (after the first event's cursor), erased too.
    let mut replay = audit
        .stream_events(pb::StreamEventsRequest { tenant_id: t.clone(), after_cursor: start, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), replay.next()).await.unwrap().unwrap().unwrap();
        let Some(pb::stream_events_response::Message::Event(e)) = m.message else { continue };
        let text = format!("{e:?}");
        for value in personal {
            assert!(!text.contains(value), "{value} is still in a streamed event: {text}");
        }
        seen.push(e.action.clone());
        if e.action == "user.purged" {
            break;
        }
    }
    assert!(seen.contains(&"user.updated".to_owned()), "{seen:?}");
    s.stop().await;
}
