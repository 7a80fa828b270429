//! The audit trail: listing, the gap-free stream, retention, crash safety, the sidecar.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use prost_types::{FieldMask, Timestamp};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, Statement};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    both_backends,
    common::{self, Backend, Bearer, TestDb, TestServer, bad_fields, expect_code, invite, pb, reason},
};

both_backends!(
    list_events_filters_and_pages,
    stream_replays_then_follows_live,
    concurrent_writers_and_reconnecting_consumer_see_every_event_once,
    retention_removes_old_events_and_expires_cursors,
    a_crash_loses_no_acknowledged_event,
    a_thousand_streams_on_one_server,
);

fn department(t: &str, name: &str) -> pb::CreateDepartmentRequest {
    pb::CreateDepartmentRequest {
        tenant_id: t.into(),
        department: Some(pb::Department { name: name.into(), ..Default::default() }),
        request_id: String::new(),
    }
}

fn epoch() -> Option<Timestamp> {
    Some(Timestamp { seconds: 0, nanos: 0 })
}

/// All stored events as (event id, seq), in stream order, straight from the database.
async fn stored(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(backend, "SELECT event_id FROM audit_events ORDER BY seq"))
        .await
        .unwrap();
    rows.iter().map(|r| r.try_get_by_index::<uuid::Uuid>(0).unwrap().to_string()).collect()
}

async fn list_events_filters_and_pages(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.tenant("acme", 0).await;
    let b = s.tenant("globex", 0).await;
    let mut u = s.users().await;
    let user = u.create_user(invite(&a, "ann@example.com")).await.unwrap().into_inner().user.unwrap();
    u.create_department(department(&a, "Sales")).await.unwrap();
    u.create_department(department(&b, "Ops")).await.unwrap();
    u.update_user(pb::UpdateUserRequest {
        tenant_id: a.clone(),
        user: Some(pb::User { user_id: user.user_id.clone(), position: "Lead".into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["position".into()] }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut audit = s.audit().await;
    let list = |req: pb::ListEventsRequest| {
        let mut audit = audit.clone();
        async move { audit.list_events(req).await.unwrap().into_inner() }
    };
    let actions = |r: &pb::ListEventsResponse| r.events.iter().map(|e| e.action.clone()).collect::<Vec<_>>();

    let acme = list(pb::ListEventsRequest { tenant_id: a.clone(), ..Default::default() }).await;
    assert_eq!(actions(&acme), ["tenant.created", "user.created", "department.created", "user.updated"]);
    assert!(acme.events.iter().all(|e| e.tenant_id == a));
    let cursors: Vec<_> = acme.events.iter().map(|e| e.cursor.clone()).collect();
    let mut sorted = cursors.clone();
    sorted.sort();
    assert_eq!(cursors, sorted, "cursors increase in stream order");
    // The update records what changed.
    let upd = acme.events.last().unwrap();
    assert_eq!(upd.target.as_ref().unwrap().id, user.user_id);
    assert!(upd.changes.contains_key("position"), "{:?}", upd.changes);
    assert!(!upd.trace_id.is_empty());
    assert_eq!(upd.actor.as_ref().unwrap().kind, pb::ActorKind::Service as i32);

    // Everything (platform token): both tenants.
    let all = list(pb::ListEventsRequest::default()).await;
    assert_eq!(all.events.len(), 6);
    // Filters.
    let users_only = list(pb::ListEventsRequest {
        tenant_id: a.clone(),
        action_prefixes: vec!["user.".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(actions(&users_only), ["user.created", "user.updated"]);
    let by_target = list(pb::ListEventsRequest { target_kind: "department".into(), ..Default::default() }).await;
    assert_eq!(by_target.events.len(), 2);
    let by_id = list(pb::ListEventsRequest { target_id: user.user_id.clone(), ..Default::default() }).await;
    assert_eq!(by_id.events.len(), 2);
    let by_actor = list(pb::ListEventsRequest { actor_kind: pb::ActorKind::System as i32, ..Default::default() }).await;
    assert!(by_actor.events.is_empty());
    let future = list(pb::ListEventsRequest {
        start_time: Some(Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 }),
        ..Default::default()
    })
    .await;
    assert!(future.events.is_empty());
    let newest = list(pb::ListEventsRequest {
        tenant_id: a.clone(),
        order: pb::EventOrder::NewestFirst as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(actions(&newest), ["user.updated", "department.created", "user.created", "tenant.created"]);

    // Pages, both directions.
    for order in [pb::EventOrder::OldestFirst, pb::EventOrder::NewestFirst] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list(pb::ListEventsRequest {
                page_size: 4,
                page_token: token,
                order: order as i32,
                ..Default::default()
            })
            .await;
            seen.extend(page.events.into_iter().map(|e| e.event_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 6);
    }
    let bad = audit.list_events(pb::ListEventsRequest { page_token: "junk".into(), ..Default::default() }).await;
    assert_eq!(reason(&expect_code(bad, Code::InvalidArgument)), "INVALID_PAGE_TOKEN");
    let missing = audit.list_events(pb::ListEventsRequest { tenant_id: "nope".into(), ..Default::default() }).await;
    expect_code(missing, Code::NotFound);
    s.stop().await;
}

async fn stream_replays_then_follows_live(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut u = s.users().await;
    u.create_department(department(&t, "Sales")).await.unwrap();
    let mut audit = s.audit().await;

    // Replay from the start, then live.
    let mut stream = audit
        .stream_events(pb::StreamEventsRequest {
            tenant_id: t.clone(),
            since_time: epoch(),
            heartbeat_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_event = async || loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("message in time")
            .unwrap()
            .unwrap();
        match m.message.unwrap() {
            pb::stream_events_response::Message::Event(e) => return Some(e),
            pb::stream_events_response::Message::Heartbeat(_) => continue,
        }
    };
    assert_eq!(next_event().await.unwrap().action, "tenant.created");
    assert_eq!(next_event().await.unwrap().action, "department.created");
    let started = Instant::now();
    u.create_department(department(&t, "Support")).await.unwrap();
    let live = next_event().await.unwrap();
    assert_eq!(live.action, "department.created");
    assert!(started.elapsed() < Duration::from_secs(2), "live delivery took {:?}", started.elapsed());

    // A filter that matches nothing still gets heartbeats whose cursor moves with the stream.
    let mut quiet = audit
        .stream_events(pb::StreamEventsRequest {
            tenant_id: t.clone(),
            since_time: epoch(),
            action_prefixes: vec!["nothing.".into()],
            heartbeat_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hb = tokio::time::timeout(Duration::from_secs(5), quiet.next()).await.unwrap().unwrap().unwrap();
    let Some(pb::stream_events_response::Message::Heartbeat(h)) = hb.message else {
        panic!("expected a heartbeat: {hb:?}")
    };
    assert_eq!(h.cursor, live.cursor, "the heartbeat covers everything scanned");

    // Resuming after that cursor yields only later events.
    u.create_department(department(&t, "Legal")).await.unwrap();
    let mut resumed = audit
        .stream_events(pb::StreamEventsRequest {
            tenant_id: t.clone(),
            after_cursor: h.cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = tokio::time::timeout(Duration::from_secs(5), resumed.next()).await.unwrap().unwrap().unwrap();
    let Some(pb::stream_events_response::Message::Event(e)) = m.message else { panic!("{m:?}") };
    assert_eq!(
        e.changes["name"].after.as_ref().unwrap().kind,
        Some(prost_types::value::Kind::StringValue("Legal".into()))
    );

    // Bad starts.
    let both = audit
        .stream_events(pb::StreamEventsRequest {
            after_cursor: h.cursor.clone(),
            since_time: epoch(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(both, Code::InvalidArgument)), ["since_time"]);
    let junk = audit.stream_events(pb::StreamEventsRequest { after_cursor: "nope".into(), ..Default::default() }).await;
    assert_eq!(bad_fields(&expect_code(junk, Code::InvalidArgument)), ["after_cursor"]);
    let ahead = audit
        .stream_events(pb::StreamEventsRequest { after_cursor: "00000000ffffffff".into(), ..Default::default() })
        .await;
    assert_eq!(reason(&expect_code(ahead, Code::OutOfRange)), "CURSOR_EXPIRED");

    // Shutdown ends open streams cleanly.
    s.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(end.is_none(), "the stream ends without an error: {end:?}");
}

/// Eight writers on eight tenants (so nothing but the audit append orders them) with random
/// delays between appending and committing; a consumer streaming everything, disconnecting at
/// random and resuming from its last cursor, gets every committed event exactly once, in order.
async fn concurrent_writers_and_reconnecting_consumer_see_every_event_once(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.debug_commit_delay = Duration::from_millis(15)).await;
    let tenants: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..8 {
            v.push(s.tenant(&format!("stress-{i}"), 0).await);
        }
        v
    };
    let per_writer = 30;
    let mut writers = Vec::new();
    for (w, t) in tenants.iter().enumerate() {
        let mut u = s.users().await;
        let t = t.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                u.create_department(department(&t, &format!("w{w}-d{i}"))).await.unwrap();
            }
        }));
    }
    let mut rng = StdRng::seed_from_u64(5);
    let mut received: Vec<pb::AuditEvent> = Vec::new();
    let mut cursor: Option<String> = None;
    let expected_total = 8 + 8 * per_writer; // tenant.created + departments
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < expected_total && Instant::now() < deadline {
        let mut audit = s.audit().await;
        let req = pb::StreamEventsRequest {
            after_cursor: cursor.clone().unwrap_or_default(),
            since_time: if cursor.is_none() { epoch() } else { None },
            heartbeat_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let mut stream = audit.stream_events(req).await.unwrap().into_inner();
        let take = rng.random_range(1..25);
        let mut got = 0;
        while got < take && received.len() < expected_total && Instant::now() < deadline {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await else { break };
            match m.unwrap().message.unwrap() {
                pb::stream_events_response::Message::Event(e) => {
                    cursor = Some(e.cursor.clone());
                    received.push(e);
                    got += 1;
                }
                pb::stream_events_response::Message::Heartbeat(h) => cursor = Some(h.cursor),
            }
        }
        drop(stream); // disconnect at a random point
    }
    for w in writers {
        w.await.unwrap();
    }
    let ids: Vec<String> = received.iter().map(|e| e.event_id.clone()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event repeated");
    let cursors: Vec<&String> = received.iter().map(|e| &e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors strictly increase");
    let db = s.db.connect().await;
    let committed = stored(&db).await;
    let missing: Vec<_> = committed.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "{} committed events never delivered: {missing:?}", missing.len());
    assert_eq!(ids, committed, "exactly the committed events, in stream order");
    s.stop().await;
}

async fn retention_removes_old_events_and_expires_cursors(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.audit_retention_interval = Duration::from_millis(200)).await;
    let t = s.tenant("acme", 0).await;
    let mut u = s.users().await;
    for i in 0..5 {
        u.create_department(department(&t, &format!("d{i}"))).await.unwrap();
    }
    let mut audit = s.audit().await;
    let events = audit
        .list_events(pb::ListEventsRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 6);
    let first_cursor = events[0].cursor.clone();
    // Age the first three events past the default 400 days.
    let db = s.db.connect().await;
    let old = match backend {
        Backend::Sqlite => "'2020-01-01T00:00:00+00:00'",
        Backend::Postgres => "'2020-01-01T00:00:00Z'",
    };
    let ids: Vec<String> = events[..3].iter().map(|e| e.event_id.clone()).collect();
    for id in &ids {
        let lit = match backend {
            Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
            Backend::Postgres => format!("'{id}'"),
        };
        db.execute_unprepared(&format!("UPDATE audit_events SET occur_time = {old} WHERE event_id = {lit}"))
            .await
            .unwrap();
    }
    common::eventually("retention deletes the old events", || {
        let mut audit = audit.clone();
        let t = t.clone();
        async move {
            audit
                .list_events(pb::ListEventsRequest { tenant_id: t, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .events
                .len()
                == 3
        }
    })
    .await;
    // Streams can not resume from before what is kept; from what is kept they can.
    let expired = audit
        .stream_events(pb::StreamEventsRequest {
            tenant_id: t.clone(),
            after_cursor: first_cursor,
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(expired, Code::OutOfRange)), "CURSOR_EXPIRED");
    let kept = events[2].cursor.clone();
    let mut ok = audit
        .stream_events(pb::StreamEventsRequest { tenant_id: t.clone(), after_cursor: kept, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let m = tokio::time::timeout(Duration::from_secs(5), ok.next()).await.unwrap().unwrap().unwrap();
    let Some(pb::stream_events_response::Message::Event(e)) = m.message else { panic!("{m:?}") };
    assert_eq!(e.event_id, events[3].event_id);
    s.stop().await;
}

async fn a_crash_loses_no_acknowledged_event(backend: Backend) {
    let db = TestDb::new(backend).await;
    let spawn = || {
        crate::server::spawn_server(
            &["--listen", "127.0.0.1:0", "--database-url", &db.url],
            &[("CRM_IAM_ADMIN_TOKEN", common::ADMIN_TOKEN)],
        )
    };
    let (mut proc, addr) = spawn();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut tenants = pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel.clone(), Bearer::admin());
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), display_name: "Acme".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..6 {
        let mut u = pb::user_admin_client::UserAdminClient::with_interceptor(channel.clone(), Bearer::admin());
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                match u.create_department(department("acme", &format!("w{w}-{i}"))).await {
                    Ok(r) => acked.lock().unwrap().push(r.into_inner().department.unwrap().department_id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once the load has run a while (writes acknowledged), with the writers still going.
    crate::common::eventually("writes acknowledged", || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().len() > 30 }
    })
    .await;
    proc.child.kill().unwrap(); // SIGKILL, mid-write
    proc.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "the load ran ({} acknowledged)", acked.len());

    let (_proc, addr) = spawn();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut audit = pb::audit_events_client::AuditEventsClient::with_interceptor(channel, Bearer::admin());
    let mut created = HashSet::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_events(pb::ListEventsRequest {
                tenant_id: "acme".into(),
                action_prefixes: vec!["department.created".into()],
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        created.extend(page.events.into_iter().map(|e| e.target.unwrap().id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let missing: Vec<_> = acked.iter().filter(|id| !created.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but without audit event: {missing:?}");
    // And no audit event without its change.
    let conn = db.connect().await;
    let departments = common::count(&conn, "SELECT COUNT(*) FROM departments").await as usize;
    assert_eq!(departments, created.len(), "every stored change has its event and vice versa");
}

/// 1,000 concurrent streams on one server all receive a new event.
async fn a_thousand_streams_on_one_server(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(s.channel().await);
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut audit =
            pb::audit_events_client::AuditEventsClient::with_interceptor(channels[i % 10].clone(), Bearer::admin());
        let stream = audit
            .stream_events(pb::StreamEventsRequest { tenant_id: t.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    s.users().await.create_department(department(&t, "Everyone sees this")).await.unwrap();
    let mut waits = Vec::new();
    for mut stream in streams {
        waits.push(tokio::spawn(async move {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.ok()??.ok()?;
                if let Some(pb::stream_events_response::Message::Event(e)) = m.message {
                    return Some(e.action);
                }
            }
        }));
    }
    let mut got: HashMap<Option<String>, usize> = HashMap::new();
    for w in waits {
        *got.entry(w.await.unwrap()).or_default() += 1;
    }
    assert_eq!(got, HashMap::from([(Some("department.created".to_string()), 1000)]));
    s.stop().await;
}

/// Two replicas on one PostgreSQL: an event written through A reaches a stream on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_written_on_one_replica_reaches_streams_on_another() {
    let a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::start_on(TestDb::attach(&a.db), common::test_config(&a.db)).await;
    let t = a.tenant("acme", 0).await;
    let mut stream = b
        .audit()
        .await
        .stream_events(pb::StreamEventsRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    a.users().await.create_department(department(&t, "From A")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let Some(pb::stream_events_response::Message::Event(e)) = m.message else { panic!("{m:?}") };
    assert_eq!(e.action, "department.created");
    assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
    b.stop().await;
    a.stop().await;
}

/// The reference sidecar follows the stream, survives its own crash and a server restart, and
/// delivers every event (at most the one in flight at its crash twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_resumes_after_its_crash_and_a_server_restart() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::new(Backend::Sqlite).await;
    let env = [("CRM_IAM_ADMIN_TOKEN", common::ADMIN_TOKEN)];
    let (server, addr) = crate::server::spawn_server(&["--listen", "127.0.0.1:0", "--database-url", &db.url], &env);
    let connect = || async move {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        (
            pb::tenant_admin_client::TenantAdminClient::with_interceptor(ch.clone(), Bearer::admin()),
            pb::user_admin_client::UserAdminClient::with_interceptor(ch, Bearer::admin()),
        )
    };
    let (mut tenants, mut users) = connect().await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), display_name: "Acme".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    for i in 0..5 {
        users.create_department(department("acme", &format!("first-{i}"))).await.unwrap();
    }
    let cursor_file = db.dir().join("cursor");
    let tail = |from_beginning: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_crm-iam"));
        cmd.args(["audit", "tail", "--server", &format!("http://{addr}"), "--heartbeat-seconds", "1"])
            .arg("--cursor-file")
            .arg(&cursor_file)
            .env("CRM_IAM_ADMIN_TOKEN", common::ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if from_beginning {
            cmd.arg("--from-beginning");
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("one JSON object per line"));
            }
        });
        (child, rx)
    };
    let take = |rx: &std::sync::mpsc::Receiver<serde_json::Value>, n: usize| -> Vec<serde_json::Value> {
        (0..n).map(|_| rx.recv_timeout(Duration::from_secs(20)).expect("a line from the sidecar")).collect()
    };
    // The sidecar prints an event, then stores its cursor: wait until the file has caught up with
    // the last printed line (a kill in between is the documented at-least-once window).
    let stored_reaches = |cursor: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored = std::fs::read_to_string(&cursor_file).unwrap_or_default();
            if stored.as_str() >= cursor {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Run 1: from the beginning.
    let (mut child, rx) = tail(true);
    let mut lines = take(&rx, 6);
    assert_eq!(lines[0]["action"], "tenant.created");
    assert_eq!(lines[1]["changes"]["name"]["after"], "first-0");
    assert!(stored_reaches(lines[5]["cursor"].as_str().unwrap()), "the cursor file keeps up");
    child.kill().unwrap(); // crash
    child.wait().unwrap();

    // Changes while it is down, then run 2 resumes from the stored cursor.
    for i in 0..3 {
        users.create_department(department("acme", &format!("second-{i}"))).await.unwrap();
    }
    let (mut child, rx) = tail(false);
    lines.extend(take(&rx, 3));

    // The server restarts on the same address; the sidecar reconnects and resumes.
    let pid = server.child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    drop(server);
    let (_server, _) = crate::server::spawn_server(&["--listen", &addr.to_string(), "--database-url", &db.url], &env);
    let (_, mut users) = connect().await;
    for i in 0..2 {
        users.create_department(department("acme", &format!("third-{i}"))).await.unwrap();
    }
    lines.extend(take(&rx, 2));
    assert!(stored_reaches(lines.last().unwrap()["cursor"].as_str().unwrap()), "the cursor file keeps up");
    child.kill().unwrap();
    child.wait().unwrap();

    let names: Vec<String> =
        lines.iter().skip(1).map(|l| l["changes"]["name"]["after"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        names,
        [
            "first-0", "first-1", "first-2", "first-3", "first-4", "second-0", "second-1", "second-2", "third-0",
            "third-1"
        ],
        "every event once, in order, across the sidecar's crash and the server's restart"
    );
    let cursors: Vec<&str> = lines.iter().map(|l| l["cursor"].as_str().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
}
