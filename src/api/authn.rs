//! Who is calling: bearer tokens → [`Caller`] (a tower layer in front of every service).
//!
//! Three kinds of token: the platform admin token, named service credentials (each allowed a
//! list of methods), and user access tokens (JWTs from `Auth.Authenticate`, checked for
//! signature, expiry and an open session). Health, reflection and the login methods need none.
//! What a caller may do inside a method (tenant, rights) is decided by the handlers.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{
    Status,
    metadata::MetadataMap,
    transport::{
        CertificateDer,
        server::{TcpConnectInfo, TlsConnectInfo},
    },
};
use uuid::Uuid;

pub use crate::domain::caller::{Caller, ServiceCredential, UserCaller};
use crate::{
    domain::{Error, Kind, Reason},
    proto::methods::{self, auth},
    service::Iam,
};

/// Methods that need no token (a token sent with them is ignored).
pub const PUBLIC_METHODS: &[&str] = &[
    auth::AUTHENTICATE,
    auth::REFRESH,
    auth::ACCEPT_INVITATION,
    auth::COMPLETE_PASSWORD_RESET,
    auth::REQUEST_PASSWORD_RESET,
    auth::GET_JWKS,
    auth::BEGIN_SSO,
    auth::COMPLETE_SSO,
];

/// Methods a restricted (must change password) token may call.
const RESTRICTED_METHODS: &[&str] = &[auth::CHANGE_PASSWORD, auth::LOGOUT];

struct Service {
    name: Arc<str>,
    digest: [u8; 32],
    client_subject: Option<String>,
    tenants: Option<Arc<[String]>>,
    /// `/crm.iam.v1.Access/Check` or `/crm.iam.v1.Access/` (whole service).
    methods: Vec<String>,
}

/// Every gRPC method crm-iam serves, as `/package.Service/Method`.
pub fn all_methods() -> Vec<String> {
    methods::ALL.iter().map(|m| m.to_string()).collect()
}

/// Turns a configured method name into its path form (`/crm.iam.v1.Access/Check`, or
/// `/crm.iam.v1.Access/` for `Access.*`), checking that it exists.
fn method_path(name: &str, known: &[String]) -> anyhow::Result<String> {
    let n = name.trim().trim_start_matches('/').trim_start_matches("crm.iam.v1.");
    let (service, method) = n.split_once('/').or_else(|| n.split_once('.')).ok_or_else(|| {
        anyhow::anyhow!("service credential method {name:?}: write Service.Method, e.g. Access.Check")
    })?;
    let path =
        if method == "*" { format!("/crm.iam.v1.{service}/") } else { format!("/crm.iam.v1.{service}/{method}") };
    anyhow::ensure!(
        known.iter().any(|k| if method == "*" { k.starts_with(&path) } else { *k == path }),
        "service credential method {name:?} does not exist"
    );
    Ok(path)
}

/// Turns bearer tokens into callers. Shared by every connection.
pub struct Authenticator {
    iam: Iam,
    admin_token_sha256: [u8; 32],
    services: Vec<Service>,
}

impl Authenticator {
    pub fn new(iam: Iam, admin_token: &str, credentials: &[ServiceCredential]) -> anyhow::Result<Authenticator> {
        let known = all_methods();
        let mut services = Vec::new();
        for c in credentials {
            anyhow::ensure!(!c.name.trim().is_empty(), "a service credential needs a name");
            let digest =
                hex::decode(c.token_sha256.trim()).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()).ok_or_else(
                    || anyhow::anyhow!("service credential {:?}: token_sha256 must be 64 hex digits", c.name),
                )?;
            let methods = c.methods.iter().map(|m| method_path(m, &known)).collect::<anyhow::Result<Vec<_>>>()?;
            let client_subject =
                c.client_subject.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
            let tenants = c.tenants.as_ref().map(|t| t.iter().map(|t| t.trim().to_owned()).collect::<Arc<[String]>>());
            anyhow::ensure!(
                tenants.as_ref().is_none_or(|t| !t.is_empty()),
                "service credential {:?}: tenants, when given, must name at least one tenant",
                c.name
            );
            services.push(Service { name: c.name.as_str().into(), digest, client_subject, tenants, methods });
        }
        Ok(Authenticator { iam, admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(), services })
    }

    /// The caller of a request to `path` (None for methods that need no token). `client_certs`:
    /// the certificate chain the client presented on a mutual-TLS connection.
    pub async fn authenticate(
        &self,
        path: &str,
        metadata: &MetadataMap,
        client_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<Caller>, Status> {
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") || PUBLIC_METHODS.contains(&path)
        {
            return Ok(None);
        }
        // Envoy's ext_authz: a credential is optional (Istio's CUSTOM provider sends none); without
        // one, the decision rests on the request's own access token alone (`service::envoy`).
        if path == methods::ENVOY_CHECK && metadata.get("authorization").is_none() {
            return Ok(None);
        }
        let token = bearer(metadata)?;
        // Static tokens first (a service's token may be any text, dots included): compare digests
        // in constant time, against every credential, so timing reveals nothing.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&Service> = None;
        let admin = bool::from(digest[..].ct_eq(&self.admin_token_sha256[..]));
        for s in &self.services {
            if bool::from(digest[..].ct_eq(&s.digest[..])) {
                found = Some(s);
            }
        }
        if admin {
            return Ok(Some(Caller::PlatformAdmin));
        }
        if let Some(s) = found
            && let Some(subject) = &s.client_subject
            && !client_certs.is_some_and(|chain| certificate_names(chain).iter().any(|n| n == subject))
        {
            return Err(unauthenticated(
                "this service credential is bound to a client certificate: connect with mutual TLS using that certificate",
            ));
        }
        // Envoy's ext_authz asks what Access.Check answers: the same permission.
        let allowed_as = if path == methods::ENVOY_CHECK { methods::access::CHECK } else { path };
        match found {
            Some(s)
                if s.methods
                    .iter()
                    .any(|m| if m.ends_with('/') { allowed_as.starts_with(m) } else { m == allowed_as }) =>
            {
                Ok(Some(Caller::Service { name: s.name.clone(), tenants: s.tenants.clone() }))
            }
            Some(s) => Err(status(Error::permission_denied(format!(
                "service credential {:?} may not call {path}: add the method to its configured methods",
                s.name
            )))),
            // Not a static token: a user's access token (a JWT), or nothing valid.
            None if token.split('.').count() == 3 => self.user(path, token, digest).await.map(Some),
            None => Err(unauthenticated("the bearer token is not valid")),
        }
    }

    async fn user(&self, path: &str, token: &str, digest: [u8; 32]) -> Result<Caller, Status> {
        let Some(v) = self.iam.auth.keys.verify_hashed(token, digest).await else {
            return Err(unauthenticated("the access token is not valid or has expired: refresh it or log in again"));
        };
        let active = self.iam.session_active(&v.claims).await.map_err(status)?;
        if !active {
            return Err(unauthenticated("the session of this access token has ended: log in again"));
        }
        let c = &v.claims;
        let (Ok(user_id), Ok(session_id)) = (Uuid::parse_str(&c.sub), Uuid::parse_str(&c.sid)) else {
            return Err(unauthenticated("the access token is not valid"));
        };
        let restricted = c.scope == crate::service::auth::keys::SCOPE_PASSWORD_CHANGE;
        if restricted && !RESTRICTED_METHODS.contains(&path) {
            return Err(status(Error::new(
                Kind::PermissionDenied,
                Reason::PasswordChangeRequired,
                "the password must be changed first: call Auth.ChangePassword with this token",
            )));
        }
        Ok(Caller::User(UserCaller {
            tenant_id: c.tenant.clone(),
            user_id,
            session_id,
            restricted,
            amr: c.amr.clone(),
        }))
    }
}

/// The names of a client certificate (the leaf of the chain): its DNS and URI subject alternative
/// names (a SPIFFE ID is a URI SAN). The subject's common name is not used: it is free text that
/// CAs constrain less, and RFC 6125 retired it for names.
fn certificate_names(chain: &[CertificateDer<'static>]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Some(leaf) = chain.first() else { return Vec::new() };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::URI(u) => names.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    names
}

fn status(e: Error) -> Status {
    super::status::from_error(e)
}

fn unauthenticated(message: &str) -> Status {
    status(Error::unauthenticated(message))
}

fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| unauthenticated("missing credentials: send metadata 'authorization: Bearer <token>'"))?;
    let value = value.to_str().map_err(|_| unauthenticated("the authorization metadata is not valid text"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthenticated("the authorization metadata must be 'Bearer <token>'"));
    }
    Ok(token.trim())
}

/// The method a request calls (its path, one of `proto::methods`), put into the request's
/// extensions by the authentication layer beside the [`Caller`].
#[derive(Clone, Copy, Debug)]
pub struct Method(pub &'static str);

/// The middleware that authenticates every request before routing.
#[derive(Clone)]
pub struct AuthLayer(Arc<Authenticator>);

impl AuthLayer {
    pub fn new(authenticator: Authenticator) -> AuthLayer {
        AuthLayer(Arc::new(authenticator))
    }
}

impl crate::middleware::Around for AuthLayer {
    fn around<S, B>(
        &self,
        mut inner: S,
        mut req: http::Request<B>,
    ) -> crate::middleware::BoxFuture<Result<crate::middleware::Response, S::Error>>
    where
        S: tower::Service<http::Request<B>, Response = crate::middleware::Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        let auth = self.0.clone();
        Box::pin(async move {
            let metadata = MetadataMap::from_headers(std::mem::take(req.headers_mut()));
            let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(TlsConnectInfo::peer_certs);
            let result = auth.authenticate(req.uri().path(), &metadata, certs.as_deref().map(Vec::as_slice)).await;
            *req.headers_mut() = metadata.into_headers();
            match result {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        req.extensions_mut().insert(caller);
                    }
                    if let Some(method) = methods::find(req.uri().path()) {
                        req.extensions_mut().insert(Method(method));
                    }
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
