//! A real OpenID Provider for the single sign-on tests (`tests/oidc/provider.mjs`:
//! node-oidc-provider, OpenID Certified) and a browser driving it over HTTP (cookies, the
//! provider's login form, redirects) exactly as a user's browser would.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use serde_json::{Value, json};

/// A running provider: its issuer, and the accounts file it reads at every sign-in.
pub struct Provider {
    child: Child,
    pub issuer: String,
    accounts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    /// Starts the provider with `clients` (oidc-provider client metadata) and `accounts`
    /// (`{ "<id>": { claims } }`).
    pub fn start(clients: Value, accounts: Value) -> Provider {
        let dir = tempfile::tempdir().unwrap();
        let accounts_file = dir.path().join("accounts.json");
        std::fs::write(&accounts_file, accounts.to_string()).unwrap();
        let config = dir.path().join("config.json");
        let body = json!({ "port": 0, "clients": clients, "accounts_file": accounts_file });
        std::fs::write(&config, body.to_string()).unwrap();
        let script = format!("{}/tests/oidc/provider.mjs", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("node with tests/oidc installed is needed (scripts/test.sh installs it): {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = loop {
            let line = lines.next().expect("the provider says `listening <issuer>`").expect("read");
            if let Some(issuer) = line.strip_prefix("listening ") {
                break issuer.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Provider { child, issuer, accounts: accounts_file, _dir: dir }
    }

    /// Replaces the provider's accounts (groups, e-mail, …): seen by the next sign-in.
    pub fn set_accounts(&self, accounts: Value) {
        let tmp = self.accounts.with_extension("tmp");
        std::fs::write(&tmp, accounts.to_string()).unwrap();
        std::fs::rename(&tmp, &self.accounts).unwrap();
    }

    /// The provider replaces its signing keys (the old ones are gone at once).
    pub async fn rotate_keys(&self) {
        let r = reqwest::Client::new().post(format!("{}/_test/rotate-keys", self.issuer)).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// The provider's current key ids.
    pub async fn key_ids(&self) -> Vec<String> {
        let body = reqwest::get(format!("{}/jwks", self.issuer)).await.unwrap().text().await.unwrap();
        let jwks: Value = serde_json::from_str(&body).unwrap();
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the provider sent the browser back with.
#[derive(Debug, Clone)]
pub struct Returned {
    pub code: String,
    pub state: String,
    pub iss: String,
}

/// A browser: a cookie jar, no automatic redirects.
pub struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    /// The `Set-Cookie` headers of the last response, as sent.
    pub last_set_cookies: Vec<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: HashMap::new(),
            last_set_cookies: Vec::new(),
        }
    }
}

fn query_param(url: &url::Url, name: &str) -> String {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_default()
}

impl Browser {
    fn keep_cookies(&mut self, r: &reqwest::Response) {
        self.last_set_cookies.clear();
        for h in r.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(h) = h.to_str() else { continue };
            self.last_set_cookies.push(h.to_owned());
            let pair = h.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else { continue };
            let lower = h.to_ascii_lowercase();
            let expired = lower.contains("expires=thu, 01 jan 1970") || lower.contains("max-age=0");
            if value.is_empty() || expired {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    /// A cookie the browser holds.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// One request: (status, Location, body).
    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> (u16, String, String) {
        let mut req = self.http.request(method, url).header(reqwest::header::COOKIE, self.cookie_header());
        if let Some(form) = form {
            let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
            req = req.header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(body);
        }
        let r = req.send().await.expect("the provider answers");
        self.keep_cookies(&r);
        let status = r.status().as_u16();
        let location =
            r.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned();
        (status, location, r.text().await.unwrap_or_default())
    }

    /// Visits the authorization URL and signs in at the provider as `account` until the provider
    /// redirects to `redirect_uri`; returns that URL (not visited).
    pub async fn sign_in_until(&mut self, authorization_url: &str, account: &str, redirect_uri: &str) -> url::Url {
        let base = url::Url::parse(authorization_url).unwrap();
        let mut next = authorization_url.to_owned();
        for _ in 0..10 {
            let (status, location, body) = self.send(reqwest::Method::GET, &next, None).await;
            if (300..400).contains(&status) {
                let target = base.join(&location).unwrap();
                if target.as_str().starts_with(redirect_uri) {
                    return target;
                }
                next = target.to_string();
                continue;
            }
            assert_eq!(status, 200, "the provider's page {next}: {body}");
            // The provider's interaction page: its login form, else its consent form.
            let prompt = if body.contains("name=\"login\"") { "login" } else { "consent" };
            let form: &[(&str, &str)] = if prompt == "login" {
                &[("prompt", "login"), ("login", account), ("password", "any password")]
            } else {
                &[("prompt", "consent")]
            };
            let (status, location, body) = self.send(reqwest::Method::POST, &next, Some(form)).await;
            assert!((300..400).contains(&status), "the provider took the {prompt} form: {status} {body}");
            let target = base.join(&location).unwrap();
            if target.as_str().starts_with(redirect_uri) {
                return target;
            }
            next = target.to_string();
        }
        panic!("the provider never redirected to {redirect_uri}");
    }

    /// Signs in and returns the code, state and iss the provider sent back.
    pub async fn sign_in(&mut self, authorization_url: &str, account: &str, redirect_uri: &str) -> Returned {
        let back = self.sign_in_until(authorization_url, account, redirect_uri).await;
        assert!(query_param(&back, "error").is_empty(), "the provider refused: {back}");
        Returned {
            code: query_param(&back, "code"),
            state: query_param(&back, "state"),
            iss: query_param(&back, "iss"),
        }
    }

    /// RP-initiated logout at the provider (its confirmation form): the provider then notifies
    /// every client of the session through back-channel logout.
    pub async fn log_out_at(&mut self, issuer: &str) {
        let (status, _, body) = self.send(reqwest::Method::GET, &format!("{issuer}/session/end"), None).await;
        assert_eq!(status, 200, "the logout page: {body}");
        let xsrf = body
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the logout form's xsrf field")
            .to_owned();
        let form = [("xsrf", xsrf.as_str()), ("logout", "yes")];
        let (status, _, body) =
            self.send(reqwest::Method::POST, &format!("{issuer}/session/end/confirm"), Some(&form)).await;
        assert!((200..400).contains(&status), "the provider took the logout: {status} {body}");
    }
}
