//! The identity providers as crm-iam's HTTP peers: one client (no redirects followed, timeouts,
//! bodies of at most 1 MiB: a provider cannot exhaust memory or send crm-iam elsewhere), and
//! their discovery documents with JWKS, cached per issuer and fetched by one caller at a time.
//! A token signed by a key the cached set does not hold makes the set be read again (at most once
//! every [`REFETCH_AFTER`] per issuer), so a provider's key rotation is followed without a restart.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use openidconnect::{HttpRequest, HttpResponse, IssuerUrl, core::CoreProviderMetadata};

/// Largest response body read from a provider.
const MAX_BODY: usize = 1 << 20;

/// How long a discovery document (with its keys) is used before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(600);

/// The least time between two fetches of one issuer's document forced by unknown keys (a
/// stream of tokens naming made-up keys costs the provider one fetch per this interval).
pub const REFETCH_AFTER: Duration = Duration::from_secs(10);

/// Why a provider's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the response is larger than 1 MiB")]
    TooLarge,
    #[error("invalid response: {0}")]
    Http(#[from] http::Error),
    #[error("refused: {0}")]
    Refused(#[from] crate::service::outbound::Refused),
}

/// A discovery document and when it was fetched.
pub struct Discovered {
    pub metadata: CoreProviderMetadata,
    pub fetched: Instant,
}

/// An issuer's cached document, and when an unknown key last forced a fetch.
#[derive(Default)]
struct Cached {
    document: Option<Arc<Discovered>>,
    forced: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Cached>>;

/// Single sign-on state of a process.
pub struct Sso {
    client: reqwest::Client,
    /// Whether `http://` issuers and addresses off the public internet are allowed (configuration
    /// `sso_allow_http_issuers`, for development against a provider on the same machine).
    pub allow_http: bool,
    documents: moka::sync::Cache<String, Slot>,
    /// Sign-ins completing at once (one per core): a burst of sign-ins queues here instead of
    /// taking the cores (its transactions, its provider's token endpoint) from `Access.Check`.
    sign_ins: Arc<tokio::sync::Semaphore>,
}

/// How long a sign-in waits for its turn before it is refused as OVERLOADED.
pub const SIGN_IN_WAIT: Duration = Duration::from_secs(5);

impl Sso {
    pub fn new(allow_http: bool) -> Sso {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent("crm-iam");
        if !allow_http {
            // Every URL a provider's document names (keys, token endpoint) is the tenant's choice
            // too: public https addresses only (SSRF; see `outbound`).
            builder = builder.https_only(true).dns_resolver(Arc::new(crate::service::outbound::PublicResolver));
        }
        let client = builder.build().expect("a TLS backend is compiled in");
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Sso {
            client,
            allow_http,
            documents: moka::sync::Cache::new(10_000),
            sign_ins: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    /// A turn to complete a sign-in: waits at most [`SIGN_IN_WAIT`], then RESOURCE_EXHAUSTED
    /// (`OVERLOADED`, retry after a second).
    pub async fn sign_in_turn(&self) -> crate::domain::Result<tokio::sync::OwnedSemaphorePermit> {
        match tokio::time::timeout(SIGN_IN_WAIT, self.sign_ins.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let mut e = crate::domain::Error::new(
                    crate::domain::Kind::ResourceExhausted,
                    crate::domain::Reason::Overloaded,
                    "too many single sign-ons are completing: retry shortly (with backoff)",
                );
                e.retry_after_ms = 1_000;
                Err(e)
            }
        }
    }

    /// One HTTP exchange with a provider.
    pub async fn exchange(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let started = Instant::now();
        let request = if req.method() == http::Method::POST { "token" } else { "discovery" };
        let answer = self.exchange_unmeasured(req).await;
        metrics::histogram!("crm_iam_idp_request_duration_seconds", "request" => request)
            .record(started.elapsed().as_secs_f64());
        answer
    }

    async fn exchange_unmeasured(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        if !self.allow_http {
            let url = url::Url::parse(&parts.uri.to_string())
                .map_err(|_| crate::service::outbound::Refused::NotHttps(parts.uri.to_string()))?;
            crate::service::outbound::check_url(&url)?;
        }
        let mut resp =
            self.client.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        let mut out = http::Response::builder().status(status).body(buf)?;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// The issuer's discovery document: cached, or fetched (one fetch per issuer at a time; the
    /// others wait for it). `stale_key` asks for a fresh one because a token named a key the
    /// cached set lacks (honoured at most every [`REFETCH_AFTER`]).
    pub async fn discover(&self, issuer: &str, stale_key: bool) -> Result<Arc<Discovered>, String> {
        let slot = self.documents.get_with(issuer.to_owned(), Default::default);
        let mut held = slot.lock().await;
        let may_force = held.forced.is_none_or(|f| f.elapsed() >= REFETCH_AFTER);
        if let Some(d) = held.document.as_ref()
            && d.fetched.elapsed() < DISCOVERY_TTL
            && !(stale_key && may_force)
        {
            return Ok(d.clone());
        }
        if stale_key {
            held.forced = Some(Instant::now());
        }
        let url = IssuerUrl::new(issuer.to_owned()).map_err(|e| format!("the issuer is not a URL: {e}"))?;
        match CoreProviderMetadata::discover_async(url, self).await {
            Ok(metadata) => {
                let d = Arc::new(Discovered { metadata, fetched: Instant::now() });
                held.document = Some(d.clone());
                Ok(d)
            }
            // A provider briefly down: the document it served before still holds its keys.
            Err(e) => match held.document.as_ref() {
                Some(d) if d.fetched.elapsed() < DISCOVERY_TTL * 6 => Ok(d.clone()),
                _ => Err(describe(&e)),
            },
        }
    }

    /// Whether an issuer URL is acceptable: https (or http when allowed), no query or fragment.
    pub fn check_issuer(&self, issuer: &str) -> Result<(), &'static str> {
        let url = url::Url::parse(issuer).map_err(|_| "must be an absolute URL")?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("must be an https URL (http issuers need the server's sso_allow_http_issuers)"),
            _ => return Err("must be an https URL"),
        }
        if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() || !url.username().is_empty() {
            return Err("must be an https URL with a host and no credentials, query or fragment");
        }
        if !self.allow_http && crate::service::outbound::check_url(&url).is_err() {
            return Err("must name a host on the public internet");
        }
        Ok(())
    }
}

/// The HTTP client openidconnect calls.
impl<'c> openidconnect::AsyncHttpClient<'c> for Sso {
    type Error = HttpError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.exchange(request))
    }
}

/// A discovery failure in words safe to show (no secrets: the request carried none).
fn describe<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    use openidconnect::DiscoveryError as D;
    match e {
        D::Request(e) => format!("the provider could not be reached: {}", chain(e)),
        D::Response(status, _, _) => format!("the provider answered HTTP {status}"),
        D::Parse(_) => "the provider's discovery document or key set is not valid JSON of the standard".into(),
        D::Validation(m) => format!("the discovery document is not valid: {m}"),
        D::UrlParse(_) => "the discovery document holds an invalid URL".into(),
        D::Other(m) => m.clone(),
        _ => "the discovery document could not be read".into(),
    }
}

/// An error with its causes (reqwest's own message hides why a request was not sent).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}
