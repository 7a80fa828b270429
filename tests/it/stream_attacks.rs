//! Attacks through streams: a stream outliving the access it was opened with, and callers holding
//! streams without bound.

use std::time::Duration;

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, Bearer, TestServer, pb, reason},
};

const PASSWORD: &str = "velvet staircase under morning rain";

fn stream_request() -> pb::StreamEventsRequest {
    pb::StreamEventsRequest { tenant_id: "acme".into(), ..Default::default() }
}

both_backends!(a_deactivated_administrators_stream_ends, streams_are_capped_per_caller, streams_are_capped_per_tenant);

/// An administrator follows the tenant's audit stream; the administrator is deactivated (their
/// sessions end): the stream ends within seconds, and a removed role ends a stream the same way.
async fn a_deactivated_administrators_stream_ends(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    let watcher =
        server.password_user("acme", "watcher@example.com", PASSWORD, std::slice::from_ref(&admin_role)).await;
    server.password_user("acme", "other@example.com", PASSWORD, std::slice::from_ref(&admin_role)).await;
    let token = server.login("acme", "watcher@example.com", PASSWORD).await.access_token;
    let mut audit =
        pb::audit_events_client::AuditEventsClient::with_interceptor(server.channel().await, Bearer::token(&token));
    let mut stream = audit.stream_events(stream_request()).await.expect("open").into_inner();
    server
        .users()
        .await
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: "acme".into(),
            user_id: watcher.clone(),
            ..Default::default()
        })
        .await
        .expect("deactivate");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue, // events of the deactivation itself, heartbeats
                Ok(None) => return Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .expect("the stream of a deactivated administrator ends within 5 s");
    assert!(matches!(ended, Code::Unauthenticated | Code::PermissionDenied), "{ended:?}");

    // The same for a role taken away while the session stays open.
    let viewer = server.password_user("acme", "viewer@example.com", PASSWORD, std::slice::from_ref(&admin_role)).await;
    let token = server.login("acme", "viewer@example.com", PASSWORD).await.access_token;
    let mut audit =
        pb::audit_events_client::AuditEventsClient::with_interceptor(server.channel().await, Bearer::token(&token));
    let mut stream = audit.stream_events(stream_request()).await.expect("open").into_inner();
    server
        .roles()
        .await
        .unassign_role(pb::UnassignRoleRequest {
            tenant_id: "acme".into(),
            user_id: viewer,
            role_id: admin_role,
            ..Default::default()
        })
        .await
        .expect("take the role away");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .expect("the stream of a user who lost the right ends within 5 s");
    assert_eq!(ended, Code::PermissionDenied);
    server.stop().await;
}

/// One caller holds at most `max_streams_per_caller` streams; closing one frees its place.
async fn streams_are_capped_per_caller(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.max_streams_per_caller = 2).await;
    server.tenant("acme", 0).await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    server.password_user("acme", "siem@example.com", PASSWORD, &[admin_role]).await;
    let token = server.login("acme", "siem@example.com", PASSWORD).await.access_token;
    let mut audit =
        pb::audit_events_client::AuditEventsClient::with_interceptor(server.channel().await, Bearer::token(&token));
    let first = audit.stream_events(stream_request()).await.expect("first");
    let _second = audit.stream_events(stream_request()).await.expect("second");
    let s = audit.stream_events(stream_request()).await.expect_err("a third is refused");
    assert_eq!((s.code(), reason(&s).as_str()), (Code::ResourceExhausted, "TOO_MANY_STREAMS"));
    drop(first);
    crate::common::eventually("the closed stream's place is free again", || {
        let mut audit = audit.clone();
        async move { audit.stream_events(stream_request()).await.is_ok() }
    })
    .await;
    server.stop().await;
}

/// The users of one tenant hold at most `max_streams_per_tenant` streams together (however many
/// users they are); another tenant's users are not affected.
async fn streams_are_capped_per_tenant(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.max_streams_per_tenant = 3).await;
    let mut held = Vec::new();
    let mut clients = Vec::new();
    for tenant in ["acme", "beta"] {
        server.tenant(tenant, 0).await;
        let admin_role = server.builtin_role(tenant, "administrator").await;
        for who in ["one", "two"] {
            let email = format!("{who}@{tenant}.example");
            server.password_user(tenant, &email, PASSWORD, std::slice::from_ref(&admin_role)).await;
            let token = server.login(tenant, &email, PASSWORD).await.access_token;
            clients.push((
                tenant,
                pb::audit_events_client::AuditEventsClient::with_interceptor(
                    server.channel().await,
                    Bearer::token(&token),
                ),
            ));
        }
    }
    let request = |tenant: &str| pb::StreamEventsRequest { tenant_id: tenant.into(), ..Default::default() };
    // acme's two users open three streams between them; a fourth, by either, is refused.
    for i in [0, 1, 0] {
        let (tenant, client) = &mut clients[i];
        held.push(client.stream_events(request(tenant)).await.expect("within the tenant's cap"));
    }
    for i in [0, 1] {
        let (tenant, client) = &mut clients[i];
        let s = client.stream_events(request(tenant)).await.expect_err("over the tenant's cap");
        assert_eq!((s.code(), reason(&s).as_str()), (Code::ResourceExhausted, "TOO_MANY_STREAMS"));
    }
    // beta has its own.
    let (tenant, client) = &mut clients[2];
    held.push(client.stream_events(request(tenant)).await.expect("another tenant's cap"));
    server.stop().await;
}
