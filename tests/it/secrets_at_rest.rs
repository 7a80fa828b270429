//! The master key that seals secrets at rest: a wrong key stops the server at start with a clear
//! message, a rotation keeps logins and tokens working, SQLite makes its own key, PostgreSQL
//! needs one configured. (That the rows hold no secret in clear: `login_attacks`.)

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, MASTER_KEY, TestDb, TestServer, expect_code, pb, reason, test_config},
};

const PASSWORD: &str = "velvet staircase under morning rain";
/// Other master keys (base64 of 32 bytes).
const SECOND_KEY: &str = "c2Vjb25kLW1hc3Rlci1rZXktMDEyMzQ1Njc4OWFiY2Q=";
const WRONG_KEY: &str = "d3JvbmctbWFzdGVyLWtleS0wMTIzNDU2Nzg5YWJjZGU=";

both_backends!(a_wrong_master_key_stops_the_start, a_master_key_rotation_keeps_logins_and_tokens);

async fn start_with_key(db: &TestDb, ring: &str) -> TestServer {
    let mut config = test_config(db);
    config.master_key = Some(ring.to_owned().into());
    TestServer::start_on(TestDb::attach(db), config).await
}

async fn a_wrong_master_key_stops_the_start(backend: Backend) {
    let server = TestServer::start(backend).await;
    let db = server.stop().await;
    let mut config = test_config(&db);
    config.master_key = Some(WRONG_KEY.to_owned().into());
    let err = match crm_iam::app::Application::build(config).await {
        Ok(_) => panic!("a server with the wrong master key started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("master key") && err.contains("not in the configured key ring"), "{err}");
    assert!(!err.contains(WRONG_KEY) && !err.contains(MASTER_KEY), "never the key itself: {err}");
    // The right key still works.
    start_with_key(&db, MASTER_KEY).await.stop().await;
}

async fn a_master_key_rotation_keeps_logins_and_tokens(backend: Backend) {
    // Sealed under the first key: a TOTP secret and the signing key.
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let first = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut auth = server.auth_as(&first.access_token).await;
    let enrolled =
        auth.enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() }).await.unwrap().into_inner();
    let totp = totp_rs::Totp::from_url(&enrolled.otpauth_uri).unwrap();
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    auth.confirm_totp(pb::ConfirmTotpRequest { code: totp.generate(t0).to_string() }).await.unwrap();
    let db = server.stop().await;

    // Step 1: every replica learns the new key first in the ring; what the old one sealed opens.
    let both = format!("{SECOND_KEY},{MASTER_KEY}");
    let server = start_with_key(&db, &both).await;
    let with_code = server.try_login("acme", "ann@example.com", PASSWORD, &totp.generate(t0 + 30).to_string()).await;
    let before = with_code.expect("a TOTP secret sealed under the old key opens with the ring");
    assert!(server.token_active(&first.access_token).await);
    server.stop().await;

    // Step 2: seal everything again under the new key.
    let mut config = test_config(&db);
    config.master_key = Some(both.clone().into());
    let done = crm_iam::cli::keys::rotate_master(&config).await.expect("rotate");
    assert!(done.totp_secrets >= 1 && done.signing_keys >= 1, "{done:?}");
    assert_eq!(crm_iam::cli::keys::rotate_master(&config).await.unwrap(), Default::default(), "nothing left");

    // Step 3: the old key is gone; logins (with the TOTP secret opened) and tokens still work.
    let server = start_with_key(&db, SECOND_KEY).await;
    assert!(server.token_active(&before.access_token).await, "a token signed before the rotation verifies");
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "000000").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS", "the TOTP secret opened (a wrong code, not an internal error)");
    // Signing works with the resealed key, and new keys are sealed under the new master key.
    server.password_user("acme", "bob@example.com", PASSWORD, &[]).await;
    let bob = server.login("acme", "bob@example.com", PASSWORD).await;
    assert!(server.token_active(&bob.access_token).await);
    server
        .auth_as(crate::common::ADMIN_TOKEN)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest::default())
        .await
        .unwrap();
    server.stop().await;

    // And the old key alone no longer starts a server: it opens nothing any more.
    let mut config = test_config(&db);
    config.master_key = Some(MASTER_KEY.to_owned().into());
    assert!(crm_iam::app::Application::build(config).await.is_err());
}

/// With SQLite and no key configured, `serve` makes one into a private file beside the database
/// (logging its path, never the key) and uses it on the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_makes_its_own_master_key() {
    let db = TestDb::new(Backend::Sqlite).await;
    let args = ["--listen", "127.0.0.1:0", "--database-url", &db.url];
    let env = [("CRM_IAM_ADMIN_TOKEN", crate::common::ADMIN_TOKEN), ("CRM_IAM_MASTER_KEY", "")];
    let (proc, _) = crate::server::spawn_server(&args, &env);
    let file = db.dir().join("crm-iam.master-key");
    let key = std::fs::read_to_string(&file).expect("key file").trim().to_owned();
    assert_eq!(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &key).unwrap().len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let log = proc.log();
    assert!(log.contains("crm-iam.master-key") && !log.contains(&key), "{log}");
    drop(proc);
    let (proc, _) = crate::server::spawn_server(&args, &env);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key, "the same key on the next start");
    drop(proc);
}

/// PostgreSQL replicas must share one key: without one configured the server does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_needs_a_configured_master_key() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = test_config(&db);
    config.master_key = None;
    let err = match crm_iam::app::Application::build(config).await {
        Ok(_) => panic!("started without a master key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("CRM_IAM_MASTER_KEY"), "{err}");
}
