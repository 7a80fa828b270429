//! The ownership registry, transfer plans and jobs, and their tie-in with the user lifecycle.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    both_backends,
    common::{self, Backend, TestDb, TestServer, bad_fields, count, expect_code, invite, pb, reason},
};

both_backends!(
    registry_records_lists_counts_and_forgets,
    access_check_asks_the_registry,
    plan_reports_moves_and_every_problem,
    transfer_runs_to_the_end_and_is_watched,
    cancel_stops_between_batches,
    records_recorded_during_a_transfer_move_too,
    lifecycle_refuses_orphans_and_starts_transfers,
    two_replicas_run_a_job_once,
    a_killed_server_resumes_the_transfer,
    a_stopping_server_hands_its_transfer_over,
    a_target_leaving_mid_transfer_fails_it,
);

fn own(module: &str, id: &str, owner: &str) -> pb::Ownership {
    pb::Ownership { module: module.into(), resource_id: id.into(), owner_user_id: owner.into() }
}

fn to_user(module: &str, user: &str) -> pb::TransferRule {
    pb::TransferRule { module: module.into(), target: Some(pb::transfer_rule::Target::ToUserId(user.into())) }
}

fn round_robin(module: &str, department: &str) -> pb::TransferRule {
    pb::TransferRule {
        module: module.into(),
        target: Some(pb::transfer_rule::Target::RoundRobinDepartmentId(department.into())),
    }
}

fn violations(s: &tonic::Status) -> Vec<(String, String)> {
    s.get_error_details()
        .precondition_failure()
        .map(|p| p.violations.iter().map(|v| (v.r#type.clone(), v.subject.clone())).collect())
        .unwrap_or_default()
}

/// Records `n` records `prefix-000001…` of a module for a user, in calls of up to 10,000.
async fn record_many(s: &TestServer, t: &str, module: &str, prefix: &str, owner: &str, n: usize) {
    let mut client = s.ownership().await;
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:06}")).collect();
    for chunk in ids.chunks(10_000) {
        let recorded = client
            .record_ownership(pb::RecordOwnershipRequest {
                tenant_id: t.into(),
                ownerships: chunk.iter().map(|id| own(module, id, owner)).collect(),
                request_id: String::new(),
            })
            .await
            .expect("record ownership")
            .into_inner()
            .recorded;
        assert_eq!(recorded as usize, chunk.len());
    }
}

async fn counts(s: &TestServer, t: &str, user: &str) -> (BTreeMap<String, i64>, i64) {
    let r = s
        .ownership()
        .await
        .count_owned_resources(pb::CountOwnedResourcesRequest { tenant_id: t.into(), user_id: user.into() })
        .await
        .expect("count")
        .into_inner();
    (r.counts.into_iter().map(|c| (c.module, c.count)).collect(), r.total)
}

type Client = pb::ownership_transfer_client::OwnershipTransferClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, common::Bearer>,
>;

async fn client_at(addr: SocketAddr) -> Client {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::ownership_transfer_client::OwnershipTransferClient::with_interceptor(ch, common::Bearer::admin())
}

/// StartTransfer without an idempotency key; the created job.
async fn start_at(addr: SocketAddr, t: &str, from: &str, rules: Vec<pb::TransferRule>) -> pb::Transfer {
    client_at(addr)
        .await
        .start_transfer(pb::StartTransferRequest {
            tenant_id: t.into(),
            from_user_id: from.into(),
            rules,
            request_id: String::new(),
        })
        .await
        .expect("start transfer")
        .into_inner()
        .transfer
        .unwrap()
}

async fn get_transfer(s: &TestServer, t: &str, id: &str) -> pb::Transfer {
    get_transfer_at(s.addr, t, id).await
}

/// GetTransfer, retrying UNAVAILABLE as any client should (a server starting up or starved of CPU
/// by a busy test machine may briefly not get a database connection).
async fn get_transfer_at(addr: SocketAddr, t: &str, id: &str) -> pb::Transfer {
    let mut client = client_at(addr).await;
    let mut attempts = 0;
    loop {
        match client.get_transfer(pb::GetTransferRequest { tenant_id: t.into(), transfer_id: id.into() }).await {
            Ok(r) => return r.into_inner().transfer.unwrap(),
            Err(e) if e.code() == Code::Unavailable && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("get transfer: {e:?}"),
        }
    }
}

fn state(t: &pb::Transfer) -> pb::TransferState {
    pb::TransferState::try_from(t.state).unwrap()
}

fn ended(t: &pb::Transfer) -> bool {
    matches!(state(t), pb::TransferState::Succeeded | pb::TransferState::Failed | pb::TransferState::Cancelled)
}

/// Waits (up to `limit`) until the transfer ends and returns it.
async fn wait_end(s: &TestServer, t: &str, id: &str, limit: Duration) -> pb::Transfer {
    common::wait_for(&format!("transfer {id} to end"), limit, || async {
        Some(get_transfer(s, t, id).await).filter(ended)
    })
    .await
}

fn json_of(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind.as_ref() {
        Some(Kind::StringValue(s)) => serde_json::json!(s),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::BoolValue(b)) => serde_json::json!(b),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(json_of).collect()),
        Some(Kind::StructValue(s)) => {
            serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
        _ => serde_json::Value::Null,
    }
}

/// Every `ownership.transferred` event of a tenant, oldest first, as (module, new owner, record id),
/// and the workers (replicas) that wrote them.
pub async fn transferred(s: &TestServer, t: &str) -> (Vec<(String, String, String)>, HashSet<String>) {
    transferred_at(s.addr, t).await
}

pub async fn transferred_at(addr: SocketAddr, t: &str) -> (Vec<(String, String, String)>, HashSet<String>) {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut audit = pb::audit_events_client::AuditEventsClient::with_interceptor(ch, common::Bearer::admin());
    let mut workers = HashSet::new();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_events(pb::ListEventsRequest {
                tenant_id: t.into(),
                action_prefixes: vec!["ownership.transferred".into()],
                order: pb::EventOrder::OldestFirst as i32,
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner();
        for e in page.events {
            let d = serde_json::Value::Object(
                e.details.unwrap().fields.iter().map(|(k, v)| (k.clone(), json_of(v))).collect(),
            );
            let module = d["module"].as_str().unwrap().to_owned();
            workers.insert(d["worker"].as_str().unwrap().to_owned());
            for m in d["moves"].as_array().unwrap() {
                let to = m["to_user_id"].as_str().unwrap().to_owned();
                for id in m["resource_ids"].as_array().unwrap() {
                    out.push((module.clone(), to.clone(), id.as_str().unwrap().to_owned()));
                }
            }
        }
        if page.next_page_token.is_empty() {
            return (out, workers);
        }
        token = page.next_page_token;
    }
}

struct Team {
    t: String,
    sales: String,
    from: String,
    target: String,
    members: Vec<String>,
}

/// A tenant with a departing operator, a target operator, and a "Sales" department of three
/// more operators.
async fn team(s: &TestServer) -> Team {
    let t = s.tenant("acme", 0).await;
    let operator = s.builtin_role(&t, "operator").await;
    let home = s.department(&t, "Home", "").await;
    let sales = s.department(&t, "Sales", "").await;
    let from = s.active_user(&t, "leaving@example.com", &home, std::slice::from_ref(&operator)).await;
    let target = s.active_user(&t, "taker@example.com", &home, std::slice::from_ref(&operator)).await;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(s.active_user(&t, &format!("m{i}@example.com"), &sales, std::slice::from_ref(&operator)).await);
    }
    members.sort();
    Team { t, sales, from, target, members }
}

async fn registry_records_lists_counts_and_forgets(backend: Backend) {
    let s = TestServer::start(backend).await;
    let tm = team(&s).await;
    let t = &tm.t;
    let mut c = s.ownership().await;
    let invited = s.users().await.create_user(invite(t, "new@example.com")).await.unwrap().into_inner().user.unwrap();
    let gone = s.active_user(t, "gone@example.com", "", &[]).await;
    s.users()
        .await
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: gone.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut rows: Vec<pb::Ownership> = (0..5).map(|i| own("deals", &format!("d{i}"), &tm.from)).collect();
    rows.extend((0..3).map(|i| own("tasks", &format!("t{i}"), &tm.from)));
    rows.push(own("deals", "d-invited", &invited.user_id));
    let r = c
        .record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: rows,
            request_id: "rec-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().recorded, 9, "INVITED users may own records too");

    // A deactivated owner, or one of another tenant: FAILED_PRECONDITION naming the rows, nothing written.
    let err = expect_code(
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: vec![own("deals", "x1", &tm.target), own("deals", "x2", &gone), own("deals", "x3", &uuid())],
            request_id: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "OWNER_NOT_ACTIVE");
    let subjects: Vec<String> = violations(&err).into_iter().map(|(_, s)| s).collect();
    assert_eq!(subjects, ["ownerships[1]", "ownerships[2]"]);
    assert_eq!(counts(&s, t, &tm.target).await.1, 0, "no row of a refused batch is written");

    // Bad shapes are field violations; nothing written either.
    let err = expect_code(
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: vec![
                own("deals", "y1", &tm.target),
                own("deals", "", &tm.target),
                own("deals", "y1", &tm.target),
                own("deals", "y3", "nope"),
                own("deals", &"z".repeat(201), &tm.target),
            ],
            request_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        bad_fields(&err),
        ["ownerships[1].resource_id", "ownerships[2]", "ownerships[3].owner_user_id", "ownerships[4].resource_id"]
    );
    let err = expect_code(
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: vec![own("spaceships", "s1", &tm.target)],
            request_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&err), ["ownerships[0].module"]);
    let err = expect_code(
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: vec![],
            request_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&err), ["ownerships"]);
    assert_eq!(counts(&s, t, &tm.target).await.1, 0);

    let (per_module, total) = counts(&s, t, &tm.from).await;
    assert_eq!(per_module, BTreeMap::from([("deals".into(), 5), ("tasks".into(), 3)]));
    assert_eq!(total, 8);

    // Pages in (module, record id) order, stable tokens.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_owned_resources(pb::ListOwnedResourcesRequest {
                tenant_id: t.clone(),
                user_id: tm.from.clone(),
                module: String::new(),
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.ownerships.len() <= 3);
        seen.extend(page.ownerships.into_iter().map(|o| format!("{}/{}", o.module, o.resource_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["deals/d0", "deals/d1", "deals/d2", "deals/d3", "deals/d4", "tasks/t0", "tasks/t1", "tasks/t2"]);
    let only_tasks = c
        .list_owned_resources(pb::ListOwnedResourcesRequest {
            tenant_id: t.clone(),
            user_id: tm.from.clone(),
            module: "tasks".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_tasks.ownerships.len(), 3);

    // Re-recording moves a record; forgetting removes it (unknown records are not counted).
    c.record_ownership(pb::RecordOwnershipRequest {
        tenant_id: t.clone(),
        ownerships: vec![own("deals", "d0", &tm.target)],
        request_id: String::new(),
    })
    .await
    .unwrap();
    let forgotten = c
        .forget_ownership(pb::ForgetOwnershipRequest {
            tenant_id: t.clone(),
            resources: vec![
                pb::ResourceRef { module: "deals".into(), resource_id: "d1".into() },
                pb::ResourceRef { module: "tasks".into(), resource_id: "t0".into() },
                pb::ResourceRef { module: "tasks".into(), resource_id: "never-recorded".into() },
            ],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 2);
    assert_eq!(counts(&s, t, &tm.from).await.0, BTreeMap::from([("deals".into(), 3), ("tasks".into(), 2)]));
    assert_eq!(counts(&s, t, &tm.target).await.0, BTreeMap::from([("deals".into(), 1)]));

    // Unknown user: NOT_FOUND.
    let err = expect_code(
        c.count_owned_resources(pb::CountOwnedResourcesRequest { tenant_id: t.clone(), user_id: uuid() }).await,
        Code::NotFound,
    );
    assert_eq!(reason(&err), "USER_NOT_FOUND");

    // Every change is audited (counts only).
    let events = s
        .audit()
        .await
        .list_events(pb::ListEventsRequest {
            tenant_id: t.clone(),
            action_prefixes: vec!["ownership.".into()],
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["ownership.recorded", "ownership.recorded", "ownership.forgotten"], "oldest first");
    let s = s.stop().await;
    drop(s);
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn access_check_asks_the_registry(backend: Backend) {
    let s = TestServer::start(backend).await;
    let tm = team(&s).await;
    let t = &tm.t;
    let manager = s.active_user(t, "boss@example.com", &tm.sales, &[s.builtin_role(t, "manager").await]).await;
    let check = |user: &str, id: &str| pb::CheckRequest {
        tenant_id: t.clone(),
        user_id: user.into(),
        module: "deals".into(),
        action: "edit".into(),
        resource: Some(pb::Resource { resource_id: id.into(), ..Default::default() }),
    };
    let mut access = s.access().await;
    let r = access.check(check(&tm.from, "deal-1")).await.unwrap().into_inner();
    assert!(!r.allowed && r.reason.contains("unknown"), "an unregistered record is denied: {r:?}");

    record_many(&s, t, "deals", "deal", &tm.from, 1).await; // deal-000000
    let r = access.check(check(&tm.from, "deal-000000")).await.unwrap().into_inner();
    assert!(r.allowed, "the owner may edit: {r:?}");
    assert_eq!(r.scope, pb::Scope::Own as i32);
    let r = access.check(check(&tm.target, "deal-000000")).await.unwrap().into_inner();
    assert!(!r.allowed, "another operator may not");
    let r = access.check(check(&manager, "deal-000000")).await.unwrap().into_inner();
    assert!(!r.allowed, "the owner is not in the manager's department tree");

    // Re-recorded to a Sales member: the cached answer changes at once.
    s.ownership()
        .await
        .record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: vec![own("deals", "deal-000000", &tm.members[0])],
            request_id: String::new(),
        })
        .await
        .unwrap();
    let r = access.check(check(&tm.from, "deal-000000")).await.unwrap().into_inner();
    assert!(!r.allowed, "the previous owner lost it: {r:?}");
    let r = access.check(check(&manager, "deal-000000")).await.unwrap().into_inner();
    assert!(r.allowed, "the manager's department tree now holds the owner: {r:?}");
    assert_eq!(r.scope, pb::Scope::Department as i32);
}

async fn plan_reports_moves_and_every_problem(backend: Backend) {
    let s = TestServer::start(backend).await;
    let tm = team(&s).await;
    let t = &tm.t;
    record_many(&s, t, "deals", "deal", &tm.from, 10).await;
    record_many(&s, t, "tasks", "task", &tm.from, 4).await;
    record_many(&s, t, "leads", "lead", &tm.from, 3).await;
    let guest = s.active_user(t, "guest@example.com", "", &[s.builtin_role(t, "guest").await]).await;
    let invited = s.users().await.create_user(invite(t, "inv@example.com")).await.unwrap().into_inner().user.unwrap();
    let empty = s.department(t, "Empty", "").await;
    let mut c = s.ownership().await;
    let plan = |rules: Vec<pb::TransferRule>| pb::PlanTransferRequest {
        tenant_id: t.clone(),
        from_user_id: tm.from.clone(),
        rules,
    };

    // Deals spread over Sales, the rest (tasks, leads) to one colleague.
    let p = c
        .plan_transfer(plan(vec![round_robin("deals", &tm.sales), to_user("", &tm.target)]))
        .await
        .unwrap()
        .into_inner();
    assert!(p.violations.is_empty(), "{:?}", p.violations);
    assert_eq!(p.total, 17);
    assert!(p.uncovered.is_empty());
    let mut deals: Vec<(String, i64)> =
        p.moves.iter().filter(|m| m.module == "deals").map(|m| (m.to_user_id.clone(), m.count)).collect();
    deals.sort();
    let deal_counts: Vec<i64> = deals.iter().map(|(_, n)| *n).collect();
    assert_eq!(deals.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(), tm.members);
    assert_eq!(deal_counts.iter().sum::<i64>(), 10);
    assert!(deal_counts.iter().max().unwrap() - deal_counts.iter().min().unwrap() <= 1, "{deal_counts:?}");
    let rest: HashSet<(String, String, i64)> = p
        .moves
        .iter()
        .filter(|m| m.module != "deals")
        .map(|m| (m.module.clone(), m.to_user_id.clone(), m.count))
        .collect();
    assert_eq!(rest, HashSet::from([("leads".into(), tm.target.clone(), 3), ("tasks".into(), tm.target.clone(), 4)]));

    // Only deals covered: the rest is reported as staying.
    let p = c.plan_transfer(plan(vec![to_user("deals", &tm.target)])).await.unwrap().into_inner();
    assert_eq!(p.total, 10);
    let uncovered: Vec<(String, i64)> = p.uncovered.iter().map(|u| (u.module.clone(), u.count)).collect();
    assert_eq!(uncovered, [("leads".into(), 3), ("tasks".into(), 4)]);

    // Every problem at once.
    let p = c
        .plan_transfer(plan(vec![
            to_user("deals", &guest),
            to_user("tasks", &invited.user_id),
            to_user("leads", &tm.from),
            to_user("spaceships", &tm.target),
            round_robin("contacts", &empty),
            to_user("deals", &tm.target),
        ]))
        .await
        .unwrap()
        .into_inner();
    let kinds: HashSet<String> = p.violations.iter().map(|v| v.r#type.clone()).collect();
    assert_eq!(
        kinds,
        [
            "TARGET_LACKS_RIGHTS",
            "TARGET_NOT_ACTIVE",
            "SAME_USER",
            "UNKNOWN_MODULE",
            "EMPTY_DEPARTMENT",
            "DUPLICATE_RULE"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    let p = c.plan_transfer(plan(vec![])).await.unwrap().into_inner();
    assert_eq!(p.violations.iter().map(|v| v.r#type.as_str()).collect::<Vec<_>>(), ["NO_RULES"]);
    let err = expect_code(
        c.plan_transfer(pb::PlanTransferRequest {
            tenant_id: t.clone(),
            from_user_id: "x".into(),
            rules: vec![pb::TransferRule { module: String::new(), target: None }],
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&err), ["from_user_id", "rules[0].target"]);

    // A plan with problems cannot start; nothing is created or moved.
    let err = expect_code(
        c.start_transfer(pb::StartTransferRequest {
            tenant_id: t.clone(),
            from_user_id: tm.from.clone(),
            rules: vec![to_user("", &guest)],
            request_id: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "TRANSFER_INVALID");
    assert!(violations(&err).iter().all(|(k, _)| k == "TARGET_LACKS_RIGHTS"), "{:?}", violations(&err));
    let listed = c
        .list_transfers(pb::ListTransfersRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.transfers.is_empty());
    assert_eq!(counts(&s, t, &tm.from).await.1, 17, "planning changes nothing");
}

async fn transfer_runs_to_the_end_and_is_watched(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.transfer_batch_size = 7).await;
    let tm = team(&s).await;
    let t = &tm.t;
    record_many(&s, t, "deals", "deal", &tm.from, 50).await;
    record_many(&s, t, "tasks", "task", &tm.from, 20).await;
    let mut c = s.ownership().await;
    let start = pb::StartTransferRequest {
        tenant_id: t.clone(),
        from_user_id: tm.from.clone(),
        rules: vec![round_robin("deals", &tm.sales), to_user("", &tm.target)],
        request_id: "leaving-1".into(),
    };
    let first = c.start_transfer(start.clone()).await.unwrap().into_inner().transfer.unwrap();
    assert_eq!(first.total, 70);
    let mut watch = c
        .watch_transfer(pb::WatchTransferRequest { tenant_id: t.clone(), transfer_id: first.transfer_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let again = c.start_transfer(start).await.unwrap().into_inner().transfer.unwrap();
    assert_eq!(again.transfer_id, first.transfer_id, "a retried StartTransfer returns the same job");

    let mut reports = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(30), watch.message()).await.expect("a report").unwrap()
    {
        reports.push(r.transfer.unwrap());
    }
    let last = reports.last().expect("reports").clone();
    assert_eq!(state(&last), pb::TransferState::Succeeded, "the stream ends with the final state: {last:?}");
    assert!(reports.iter().rev().skip(1).all(|r| !ended(r)), "only the last report is final");
    assert!(reports.windows(2).all(|w| w[0].moved <= w[1].moved), "progress never goes back");
    assert_eq!((last.moved, last.total), (70, 70));
    assert!(last.start_time.is_some() && last.end_time.is_some());
    let progress: HashMap<String, (i64, usize)> =
        last.progress.iter().map(|p| (p.module.clone(), (p.moved, p.to_user_ids.len()))).collect();
    assert_eq!(progress, HashMap::from([("deals".into(), (50, 3)), ("tasks".into(), (20, 1))]));

    // Everything moved: the departing user owns nothing, deals are spread within one.
    assert_eq!(counts(&s, t, &tm.from).await.1, 0);
    assert_eq!(counts(&s, t, &tm.target).await.0, BTreeMap::from([("tasks".into(), 20)]));
    let mut spread = Vec::new();
    for m in &tm.members {
        spread.push(counts(&s, t, m).await.0.get("deals").copied().unwrap_or(0));
    }
    assert_eq!(spread.iter().sum::<i64>(), 50);
    assert!(spread.iter().max().unwrap() - spread.iter().min().unwrap() <= 1, "round-robin within one: {spread:?}");

    // The audit events name every moved record exactly once, with its new owner.
    let (moved, _) = transferred(&s, t).await;
    assert_eq!(moved.len(), 70);
    let unique: HashSet<&(String, String, String)> = moved.iter().collect();
    assert_eq!(unique.len(), 70);
    for (module, to, id) in &moved {
        let owner = s
            .ownership()
            .await
            .list_owned_resources(pb::ListOwnedResourcesRequest {
                tenant_id: t.clone(),
                user_id: to.clone(),
                module: module.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(owner.ownerships.iter().any(|o| &o.resource_id == id), "{module}/{id} is with {to}");
    }
    let listed = c
        .list_transfers(pb::ListTransfersRequest {
            tenant_id: t.clone(),
            states: vec![pb::TransferState::Succeeded as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.transfers.len(), 1);
    let err = expect_code(
        c.cancel_transfer(pb::CancelTransferRequest {
            tenant_id: t.clone(),
            transfer_id: first.transfer_id.clone(),
            request_id: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "TRANSFER_ENDED");
    let err = expect_code(
        c.get_transfer(pb::GetTransferRequest { tenant_id: t.clone(), transfer_id: uuid() }).await,
        Code::NotFound,
    );
    assert_eq!(reason(&err), "TRANSFER_NOT_FOUND");
}

async fn cancel_stops_between_batches(backend: Backend) {
    // One record per batch, each commit slowed down: plenty of batches to cancel between.
    let s = TestServer::start_with(backend, |c| {
        c.transfer_batch_size = 1;
        c.debug_commit_delay = Duration::from_millis(40);
    })
    .await;
    let tm = team(&s).await;
    let t = &tm.t;
    record_many(&s, t, "deals", "deal", &tm.from, 200).await;
    let mut c = s.ownership().await;
    let tr = c
        .start_transfer(pb::StartTransferRequest {
            tenant_id: t.clone(),
            from_user_id: tm.from.clone(),
            rules: vec![to_user("", &tm.target)],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    common::eventually("the transfer moves", || {
        let s = &s;
        let id = tr.transfer_id.clone();
        async move { get_transfer(s, t, &id).await.moved > 0 }
    })
    .await;
    let cancelled = c
        .cancel_transfer(pb::CancelTransferRequest {
            tenant_id: t.clone(),
            transfer_id: tr.transfer_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    assert_eq!(state(&cancelled), pb::TransferState::Running, "a running job stops after its batch");
    let end = wait_end(&s, t, &tr.transfer_id, Duration::from_secs(20)).await;
    assert_eq!(state(&end), pb::TransferState::Cancelled);
    assert!(end.moved > 0 && end.moved < 200, "{end:?}");
    // What moved stays moved, the rest stays; nothing is lost.
    let (_, left) = counts(&s, t, &tm.from).await;
    let (_, taken) = counts(&s, t, &tm.target).await;
    assert_eq!(taken, end.moved);
    assert_eq!(left + taken, 200);
    // The replica's worker runs one job at a time: once a later job has run to its end, the
    // cancelled one can no longer be moving anything.
    record_many(&s, t, "tasks", "task", &tm.members[0], 1).await;
    let later = c
        .start_transfer(pb::StartTransferRequest {
            tenant_id: t.clone(),
            from_user_id: tm.members[0].clone(),
            rules: vec![to_user("", &tm.members[1])],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    let later = wait_end(&s, t, &later.transfer_id, Duration::from_secs(20)).await;
    assert_eq!(state(&later), pb::TransferState::Succeeded);
    assert_eq!(counts(&s, t, &tm.target).await.1, taken, "nothing moves after the cancellation");
    assert_eq!(counts(&s, t, &tm.from).await.1, left);
}

async fn records_recorded_during_a_transfer_move_too(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.transfer_batch_size = 5;
        c.debug_commit_delay = Duration::from_millis(20);
    })
    .await;
    let tm = team(&s).await;
    let t = &tm.t;
    record_many(&s, t, "deals", "deal", &tm.from, 100).await;
    let mut c = s.ownership().await;
    let tr = c
        .start_transfer(pb::StartTransferRequest {
            tenant_id: t.clone(),
            from_user_id: tm.from.clone(),
            rules: vec![to_user("", &tm.target)],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    // While it runs, the sibling service keeps creating records for the departing user.
    let mut recorded_while_running = 0;
    for i in 0..10 {
        let rows: Vec<pb::Ownership> = (0..5).map(|j| own("tasks", &format!("late-{i}-{j}"), &tm.from)).collect();
        c.record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.clone(),
            ownerships: rows,
            request_id: String::new(),
        })
        .await
        .unwrap();
        if !ended(&get_transfer(&s, t, &tr.transfer_id).await) {
            recorded_while_running += 1;
        }
    }
    assert!(recorded_while_running > 0, "the transfer was still running while records arrived");
    let end = wait_end(&s, t, &tr.transfer_id, Duration::from_secs(60)).await;
    assert_eq!(state(&end), pb::TransferState::Succeeded);
    assert_eq!((end.moved, end.total), (150, 150));
    assert_eq!(counts(&s, t, &tm.from).await.1, 0, "the job ends only when the user owns nothing");
    assert_eq!(counts(&s, t, &tm.target).await.0, BTreeMap::from([("deals".into(), 100), ("tasks".into(), 50)]));
}

async fn lifecycle_refuses_orphans_and_starts_transfers(backend: Backend) {
    let s = TestServer::start(backend).await;
    let tm = team(&s).await;
    let t = &tm.t;
    record_many(&s, t, "deals", "deal", &tm.from, 3).await;
    record_many(&s, t, "tasks", "task", &tm.from, 2).await;
    let mut users = s.users().await;
    let mut c = s.ownership().await;

    // Deleting someone who still owns records, naming no target: refused with the counts.
    let err = expect_code(
        users
            .delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: tm.from.clone(), ..Default::default() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "OWNS_RECORDS");
    let details = err.get_error_details();
    let v: Vec<(String, String)> = details
        .precondition_failure()
        .unwrap()
        .violations
        .iter()
        .map(|v| (v.subject.clone(), v.description.clone()))
        .collect();
    assert_eq!(v[0].0, "modules/deals");
    assert!(v[0].1.contains('3'), "{v:?}");
    assert_eq!(v[1].0, "modules/tasks");
    let reader = users.clone();
    let user = |id: &str| {
        let mut users = reader.clone();
        let id = id.to_owned();
        let t = t.clone();
        async move {
            users.get_user(pb::GetUserRequest { tenant_id: t, user_id: id }).await.unwrap().into_inner().user.unwrap()
        }
    };
    assert_eq!(user(&tm.from).await.state, pb::UserState::Active as i32, "nothing changed");

    // Deactivating without a target is allowed; the user then shows up as an orphaned owner.
    users
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: tm.from.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let orphans = c
        .list_orphaned_owners(pb::ListOrphanedOwnersRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(orphans.len(), 1);
    assert_eq!((orphans[0].user_id.as_str(), orphans[0].total), (tm.from.as_str(), 5));
    assert_eq!(orphans[0].state, pb::UserState::Deactivated as i32);

    // A transfer to someone who cannot take the records: the delete is refused as a whole.
    let invited = users.create_user(invite(t, "inv@example.com")).await.unwrap().into_inner().user.unwrap();
    let err = expect_code(
        users
            .delete_user(pb::DeleteUserRequest {
                tenant_id: t.clone(),
                user_id: tm.from.clone(),
                transfer_to_user_id: invited.user_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "TRANSFER_INVALID");
    assert_eq!(user(&tm.from).await.state, pb::UserState::Deactivated as i32);

    // Deleting with a target starts the transfer in the same step.
    let deleted = users
        .delete_user(pb::DeleteUserRequest {
            tenant_id: t.clone(),
            user_id: tm.from.clone(),
            transfer_to_user_id: tm.target.clone(),
            reason: "left the company".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.user.unwrap().state, pb::UserState::Deleted as i32);
    let tr = deleted.transfer.expect("the delete started a transfer");
    assert_eq!((tr.from_user_id.as_str(), tr.total), (tm.from.as_str(), 5));
    let end = wait_end(&s, t, &tr.transfer_id, Duration::from_secs(20)).await;
    assert_eq!(state(&end), pb::TransferState::Succeeded);
    assert_eq!(counts(&s, t, &tm.target).await.1, 5);
    let orphans = c
        .list_orphaned_owners(pb::ListOrphanedOwnersRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert!(orphans.is_empty());
    users
        .purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: tm.from.clone(), ..Default::default() })
        .await
        .expect("owning nothing, the user can be purged");

    // Deactivating with a target starts a transfer too; purging someone who still owns records is refused.
    record_many(&s, t, "leads", "lead", &tm.members[0], 4).await;
    let r = users
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: tm.members[0].clone(),
            transfer_to_user_id: tm.members[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let end = wait_end(&s, t, &r.transfer.unwrap().transfer_id, Duration::from_secs(20)).await;
    assert_eq!(state(&end), pb::TransferState::Succeeded);
    assert_eq!(counts(&s, t, &tm.members[1]).await.1, 4);
    record_many(&s, t, "leads", "other", &tm.members[2], 1).await;
    users
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: tm.members[2].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = expect_code(
        users
            .delete_user(pb::DeleteUserRequest {
                tenant_id: t.clone(),
                user_id: tm.members[2].clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&err), "OWNS_RECORDS");
}

async fn two_replicas_run_a_job_once(backend: Backend) {
    let a = TestServer::start_with(backend, |c| c.transfer_batch_size = 50).await;
    let db_b = TestDb::attach(&a.db);
    let mut config = common::test_config(&db_b);
    config.transfer_batch_size = 50;
    let b = TestServer::start_on(db_b, config).await;
    let tm = team(&a).await;
    let t = &tm.t;
    record_many(&a, t, "deals", "deal", &tm.from, 3000).await;
    let tr = start_at(b.addr, t, &tm.from, vec![round_robin("", &tm.sales)]).await;
    let end = wait_end(&a, t, &tr.transfer_id, Duration::from_secs(60)).await;
    assert_eq!(state(&end), pb::TransferState::Succeeded);
    assert_eq!(end.moved, 3000, "each record moved once, by whichever replica held the job");
    let (moved, workers) = transferred(&a, t).await;
    assert_eq!(workers.len(), 1, "one replica ran every batch: {workers:?}");
    assert_eq!(moved.len(), 3000);
    assert_eq!(moved.iter().map(|(_, _, id)| id).collect::<HashSet<_>>().len(), 3000);
    let conn = a.db.connect().await;
    let owners = count(&conn, "SELECT COUNT(DISTINCT owner_user_id) FROM ownerships").await;
    assert_eq!(owners, 3);
    b.stop().await;
    a.stop().await;
}

/// SIGKILL in the middle of a 200,000-record transfer; the restarted server finishes it.
async fn a_killed_server_resumes_the_transfer(backend: Backend) {
    const N: usize = 200_000;
    let setup = TestServer::start(backend).await;
    let tm = team(&setup).await;
    let t = tm.t.clone();
    record_many(&setup, &t, "deals", "deal", &tm.from, N).await;
    let db = setup.stop().await;
    let env = [("CRM_IAM_ADMIN_TOKEN", common::ADMIN_TOKEN), ("CRM_IAM_TRANSFER_LEASE", "2s")];
    let args = ["--listen", "127.0.0.1:0", "--database-url", db.url.as_str()];

    let (mut first, addr) = crate::server::spawn_server(&args, &env);
    let tr = start_at(addr, &t, &tm.from, vec![to_user("", &tm.target)]).await;
    let at_kill = common::wait_for("the transfer to start moving", Duration::from_secs(60), || async {
        Some(get_transfer_at(addr, &t, &tr.transfer_id).await).filter(|now| now.moved > 0)
    })
    .await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    assert!(!ended(&at_kill) && (at_kill.moved as usize) < N, "killed mid-transfer: {at_kill:?}");

    let (_second, addr) = crate::server::spawn_server(&args, &env);
    let end = common::wait_for("the transfer to finish after the restart", Duration::from_secs(240), || async {
        Some(get_transfer_at(addr, &t, &tr.transfer_id).await).filter(ended)
    })
    .await;
    assert_eq!(state(&end), pb::TransferState::Succeeded, "{end:?}");
    assert_eq!(end.moved as usize, N);

    let owned = |u: String| {
        let t = t.clone();
        async move {
            client_at(addr)
                .await
                .count_owned_resources(pb::CountOwnedResourcesRequest { tenant_id: t, user_id: u })
                .await
                .unwrap()
                .into_inner()
                .total
        }
    };
    assert_eq!(owned(tm.target.clone()).await as usize, N, "every record is with the target");
    assert_eq!(owned(tm.from.clone()).await, 0);
    let conn = db.connect().await;
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM ownerships").await as usize, N, "none lost or duplicated");
    let (moved, workers) = transferred_at(addr, &t).await;
    assert_eq!(workers.len(), 2, "the job moved on two servers");
    assert_eq!(moved.len(), N, "the audit events list every moved record…");
    assert_eq!(moved.iter().map(|(_, _, id)| id).collect::<HashSet<_>>().len(), N, "…exactly once");
    assert!(moved.iter().all(|(_, to, _)| to == &tm.target));
}

/// A graceful stop releases the job's lease: another replica continues at once, long before the
/// lease (30 s here) would have run out.
async fn a_stopping_server_hands_its_transfer_over(backend: Backend) {
    let a = TestServer::start_with(backend, |c| {
        c.transfer_batch_size = 10;
        c.debug_commit_delay = Duration::from_millis(20);
    })
    .await;
    let tm = team(&a).await;
    let t = tm.t.clone();
    record_many(&a, &t, "deals", "deal", &tm.from, 2000).await;
    let tr = start_at(a.addr, &t, &tm.from, vec![to_user("", &tm.target)]).await;
    common::eventually("replica A moves records", || {
        let (addr, t, id) = (a.addr, t.clone(), tr.transfer_id.clone());
        async move { get_transfer_at(addr, &t, &id).await.moved > 0 }
    })
    .await;
    // B starts only now: had it been polling when the job was queued, it could have claimed the
    // job before A's worker woke, and there would be nothing to hand over.
    let db_b = TestDb::attach(&a.db);
    let mut config = common::test_config(&db_b);
    config.transfer_batch_size = 10;
    let b = TestServer::start_on(db_b, config).await;
    let moved_before_b = get_transfer(&b, &t, &tr.transfer_id).await.moved;
    assert!(moved_before_b < 2000, "A finished before it could be stopped: {moved_before_b}");
    let stopped_at = tokio::time::Instant::now();
    let _db = a.stop().await;
    let end = wait_end(&b, &t, &tr.transfer_id, Duration::from_secs(25)).await;
    assert!(stopped_at.elapsed() < Duration::from_secs(25), "taken over before the 30 s lease ran out");
    assert_eq!(state(&end), pb::TransferState::Succeeded);
    assert_eq!(end.moved, 2000);
    let (moved, workers) = transferred(&b, &t).await;
    assert_eq!(workers.len(), 2, "both replicas moved batches");
    assert_eq!(moved.iter().map(|(_, _, id)| id).collect::<HashSet<_>>().len(), 2000);
    b.stop().await;
}

/// The receiving user is deactivated while the job runs: the job fails at its next batch, saying
/// why; what moved stays moved, the rest stays with the departing user; both show as orphaned
/// owners if they are inactive.
async fn a_target_leaving_mid_transfer_fails_it(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.transfer_batch_size = 2;
        c.debug_commit_delay = Duration::from_millis(30);
    })
    .await;
    let tm = team(&s).await;
    let t = tm.t.clone();
    record_many(&s, &t, "deals", "deal", &tm.from, 400).await;
    let tr = start_at(s.addr, &t, &tm.from, vec![to_user("", &tm.target)]).await;
    common::eventually("records move", || {
        let (s, t, id) = (&s, t.clone(), tr.transfer_id.clone());
        async move { get_transfer(s, &t, &id).await.moved > 0 }
    })
    .await;
    s.users()
        .await
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: tm.target.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = wait_end(&s, &t, &tr.transfer_id, Duration::from_secs(20)).await;
    assert_eq!(state(&end), pb::TransferState::Failed, "{end:?}");
    assert!(end.error.contains(&tm.target) && end.error.contains("no longer ACTIVE"), "{}", end.error);
    assert!(end.moved > 0 && end.moved < 400);
    assert_eq!(counts(&s, &t, &tm.target).await.1, end.moved, "what moved stays moved");
    assert_eq!(counts(&s, &t, &tm.from).await.1, 400 - end.moved, "the rest stays");
    let orphans = s
        .ownership()
        .await
        .list_orphaned_owners(pb::ListOrphanedOwnersRequest { tenant_id: t.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(orphans.iter().map(|o| o.user_id.as_str()).collect::<Vec<_>>(), [tm.target.as_str()]);
    let events = s
        .audit()
        .await
        .list_events(pb::ListEventsRequest {
            tenant_id: t.clone(),
            action_prefixes: vec!["transfer.".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["transfer.created", "transfer.failed"]);
}
