//! Single sign-on: `CompleteSso` throughput against a local OpenID Provider (node-oidc-provider,
//! `tests/oidc/provider.mjs`) and the share of its time spent waiting on the provider (crm-iam's
//! `crm_iam_idp_request_duration_seconds`), for a first sign-in (the user created just in time)
//! and a returning one (by the stored link); then Access.Check p99 during a burst of sign-ins
//! against idle.
//!
//! Each sign-in is prepared before it is measured: BeginSso, then the provider's login in a
//! "browser" (its login form, the redirect with the code), so what is measured is crm-iam's part:
//! the state check, the code exchange, the ID-token validation and the session's transaction.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crm_iam::proto::v1::{self as pb, auth_client::AuthClient};
use serde_json::json;

use crate::{
    Database, access,
    harness::{self, Load, Row, Server, Stats, fmt_stats},
};

const TENANT: &str = "sso";
const SECRET: &str = "benchmark-client-secret-0123456789";
const REDIRECT: &str = "https://app.crm.example/sso/return";
/// Sign-ins prepared for each measured round (each a different provider user).
const ROUND: usize = 600;

/// The provider process and its issuer.
struct Provider {
    child: Child,
    issuer: String,
    _dir: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(users: usize) -> anyhow::Result<Provider> {
    let dir = tempfile::tempdir()?;
    let accounts: serde_json::Map<String, serde_json::Value> = (0..users)
        .map(|i| {
            let claims = json!({ "email": format!("sso{i}@bench.example"), "email_verified": true,
                "given_name": format!("Sso{i}"), "family_name": "Bench", "groups": ["sales"] });
            (format!("u{i}"), claims)
        })
        .collect();
    let accounts_file = dir.path().join("accounts.json");
    std::fs::write(&accounts_file, serde_json::Value::Object(accounts).to_string())?;
    let config = dir.path().join("config.json");
    let clients = json!([{ "client_id": "crm", "client_secret": SECRET, "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code"], "response_types": ["code"] }]);
    std::fs::write(&config, json!({ "port": 0, "clients": clients, "accounts_file": accounts_file }).to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/oidc/provider.mjs");
    // The provider stands in for a remote service (Entra ID, Okta, ...): at the lowest CPU
    // priority, so its RS256 signing takes only what crm-iam and its database leave of the
    // two cores, as it would on its own machine (`nice` execs node: the pid stays the same).
    let mut child = Command::new("nice")
        .args(["-n", "19", "node"])
        .arg(script)
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let issuer = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the provider did not start (npm ci --prefix tests/oidc)"))??;
        if let Some(i) = line.strip_prefix("listening ") {
            break i.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Ok(Provider { child, issuer, _dir: dir })
}

/// A prepared sign-in: the state and code CompleteSso takes.
struct Prepared {
    state: String,
    code: String,
    iss: String,
    browser_binding: String,
}

fn param(url: &reqwest::Url, name: &str) -> String {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// BeginSso, then the provider's login as `account` in a fresh cookie jar, up to the redirect.
async fn prepare(ch: tonic::transport::Channel, http: reqwest::Client, account: String) -> anyhow::Result<Prepared> {
    let start = AuthClient::new(ch)
        .begin_sso(pb::BeginSsoRequest {
            tenant_id: TENANT.into(),
            connection: "company".into(),
            redirect_uri: REDIRECT.into(),
        })
        .await?
        .into_inner();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut url = reqwest::Url::parse(&start.authorization_url)?;
    let mut form: Option<Vec<(&str, String)>> = None;
    for _ in 0..8 {
        let jar = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let req = match form.take() {
            Some(f) => http.post(url.clone()).form(&f),
            None => http.get(url.clone()),
        };
        let r = req.header(reqwest::header::COOKIE, jar).send().await?;
        for h in r.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some((k, v)) = h.to_str().unwrap_or_default().split(';').next().and_then(|p| p.split_once('=')) {
                cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        if r.status().is_redirection() {
            let location = r.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default();
            url = url.join(location)?;
            if url.as_str().starts_with(REDIRECT) {
                return Ok(Prepared {
                    state: param(&url, "state"),
                    code: param(&url, "code"),
                    iss: param(&url, "iss"),
                    browser_binding: start.browser_binding.clone(),
                });
            }
        } else {
            let body = r.text().await?;
            anyhow::ensure!(body.contains("name=\"login\""), "unexpected provider page");
            form = Some(vec![("prompt", "login".into()), ("login", account.clone()), ("password", "x".into())]);
        }
    }
    anyhow::bail!("the provider did not redirect back")
}

async fn prepare_many(server: &Server, accounts: std::ops::Range<usize>) -> anyhow::Result<Vec<Prepared>> {
    let channels = server.channels(2).await?;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let jobs = accounts.map(|i| prepare(channels[i % 2].clone(), http.clone(), format!("u{i}")));
    harness::bounded(8, jobs).await.into_iter().collect()
}

/// The sum of crm-iam's time waiting on the provider's token endpoint so far, seconds.
async fn provider_seconds(metrics: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{metrics}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("crm_iam_idp_request_duration_seconds_sum") && l.contains("request=\"token\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// CompleteSso over the prepared sign-ins by `concurrency` callers: stats, and the seconds spent
/// in the calls (summed over callers).
async fn complete_all(server: &Server, prepared: Vec<Prepared>, concurrency: usize) -> anyhow::Result<(Stats, f64)> {
    let queue = Arc::new(Mutex::new(prepared));
    let channels = server.channels(2).await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (queue, ch) = (queue.clone(), channels[i % 2].clone());
            tokio::spawn(async move {
                let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let (mut busy, mut errors) = (0f64, 0u64);
                loop {
                    let Some(p) = queue.lock().expect("queue").pop() else { break };
                    let t0 = Instant::now();
                    let req = pb::CompleteSsoRequest {
                        state: p.state,
                        code: p.code,
                        iss: p.iss,
                        browser_binding: p.browser_binding,
                    };
                    if AuthClient::new(ch.clone()).complete_sso(req).await.is_err() {
                        errors += 1;
                    }
                    hist.saturating_record(t0.elapsed().as_micros() as u64);
                    busy += t0.elapsed().as_secs_f64();
                }
                (hist, busy, errors)
            })
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut busy, mut errors) = (0f64, 0u64);
    for t in tasks {
        let (h, b, e) = t.await?;
        all.add(&h)?;
        busy += b;
        errors += e;
    }
    let stats = Stats {
        rate: all.len() as f64 / started.elapsed().as_secs_f64(),
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    };
    Ok((stats, busy))
}

async fn connect(server: &Server, issuer: &str) -> anyhow::Result<()> {
    let ch = server.channel().await?;
    let mut tenants = pb::tenant_admin_client::TenantAdminClient::new(ch.clone());
    let tenant = pb::Tenant { tenant_id: TENANT.into(), display_name: "SSO benchmark".into(), ..Default::default() };
    tenants.create_tenant(pb::CreateTenantRequest { tenant: Some(tenant), request_id: String::new() }).await?;
    let roles = pb::role_admin_client::RoleAdminClient::new(ch)
        .list_roles(pb::ListRolesRequest { tenant_id: TENANT.into(), page_size: 100, page_token: String::new() })
        .await?
        .into_inner()
        .roles;
    let manager = roles.into_iter().find(|r| r.builtin && r.name == "manager").expect("manager role").role_id;
    let provider = pb::IdentityProvider {
        name: "company".into(),
        issuer: issuer.into(),
        client_id: "crm".into(),
        client_secret: SECRET.into(),
        scopes: vec!["email".into(), "profile".into(), "groups".into()],
        allowed_email_domains: vec!["bench.example".into()],
        redirect_uris: vec![REDIRECT.into()],
        jit_provisioning: true,
        group_role_mappings: vec![pb::GroupRoleMapping { group: "sales".into(), role_id: manager }],
        ..Default::default()
    };
    let req = pb::CreateIdentityProviderRequest { tenant_id: TENANT.into(), identity_provider: Some(provider) };
    tenants.create_identity_provider(req).await?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = [
        ("CRM_IAM_LOGIN_FAILURES_PER_ADDRESS", "0"),
        ("CRM_IAM_SSO_ALLOW_HTTP_ISSUERS", "true"),
        ("CRM_IAM_METRICS_LISTEN", metrics.as_str()),
    ];
    let server = Server::start(&db.url, &env)?;
    let idp = start_provider(ROUND * 2)?;
    connect(&server, &idp.issuer).await?;
    let concurrency = load.concurrency.min(8);
    let mut rows = Vec::new();
    // A first sign-in of each user (created just in time), then each again (linked).
    for (name, accounts) in [("first sign-in, user created", 0..ROUND), ("returning user", 0..ROUND)] {
        let t = Instant::now();
        let prepared = prepare_many(&server, accounts).await?;
        eprintln!(
            "[{}] prepared {} sign-ins at the provider in {:.1} s",
            db.label,
            prepared.len(),
            t.elapsed().as_secs_f64()
        );
        let before = provider_seconds(&metrics).await?;
        let (stats, busy) = complete_all(&server, prepared, concurrency).await?;
        let waiting = provider_seconds(&metrics).await? - before;
        let mut r = Row::new(&format!("CompleteSso throughput ({name})"), db.label);
        r.value = fmt_stats(&stats);
        r.baseline = format!("{concurrency} callers, local node-oidc-provider");
        r.ratio =
            format!("{:.0}% of the time waiting on the provider's token endpoint", 100.0 * waiting / busy.max(1e-9));
        r.target = "report".into();
        r.met = (stats.errors > 0).then_some(false);
        rows.push(r);
    }

    // Access.Check idle, then during a burst of sign-ins (prepared beforehand).
    let seed = access::seed(&server).await?;
    let pool = Arc::new(access::checks(&seed, 20_000));
    let idle = access::check(&server, load, pool.clone()).await?;
    let burst = prepare_many(&server, ROUND..ROUND * 2).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let checks = {
        let (channels, stop, pool) = (server.channels(load.connections).await?, stop.clone(), pool.clone());
        let load = Load { warmup: Duration::from_millis(200), duration: Duration::from_secs(120), ..load };
        tokio::spawn(async move {
            harness::run_until(&channels, load, stop, move |ch, i| {
                let pool = pool.clone();
                async move {
                    let mut c = pb::access_client::AccessClient::new(
                        tonic::service::interceptor::InterceptedService::new(ch, harness::Bearer),
                    );
                    c.check(pool[i as usize % pool.len()].clone()).await.map(|_| ())
                }
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sso, _) = complete_all(&server, burst, concurrency).await?;
    stop.store(true, Ordering::Relaxed);
    let busy = checks.await?;
    server.stop();
    let mut r = Row::new("Access.Check p99 during a burst of SSO sign-ins", db.label);
    r.value = format!("{:.2} ms ({:.0}/s; CompleteSso {:.0}/s)", busy.p99_ms, busy.rate, sso.rate);
    r.baseline = format!("idle p99 {:.2} ms ({:.0}/s)", idle.p99_ms, idle.rate);
    let ratio = busy.p99_ms / idle.p99_ms;
    r.ratio = format!("{ratio:.2}× idle");
    r.target = "≤ 1.5× idle p99".into();
    r.met = Some(ratio <= 1.5 && busy.errors == 0 && sso.errors == 0);
    rows.push(r);
    Ok(rows)
}
