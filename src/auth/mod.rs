//! Who is calling: bearer tokens → [`Caller`], and password hashing.

pub mod password;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status, metadata::MetadataMap};

use crate::domain::audit::{Actor, ActorKind};

/// The authenticated caller of a request, put into the request extensions by [`Authenticator`]
/// before any handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The platform admin token: every tenant, every method.
    PlatformAdmin,
}

impl Caller {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::PlatformAdmin => Actor { kind: ActorKind::Service, id: "platform-admin".into() },
        }
    }
}

/// Turns `authorization: Bearer <token>` metadata into a [`Caller`]; used as a tonic interceptor
/// on every service except health and reflection.
#[derive(Clone)]
pub struct Authenticator {
    admin_token_sha256: Arc<[u8; 32]>,
}

impl Authenticator {
    pub fn new(admin_token: &str) -> Authenticator {
        Authenticator { admin_token_sha256: Arc::new(Sha256::digest(admin_token.as_bytes()).into()) }
    }

    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata)?;
        // Compare digests in constant time: timing reveals nothing about the token.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(digest[..].ct_eq(&self.admin_token_sha256[..])) {
            return Ok(Caller::PlatformAdmin);
        }
        Err(unauthenticated("the bearer token is not valid"))
    }
}

fn unauthenticated(message: &str) -> Status {
    crate::api::status::from_error(crate::domain::Error::unauthenticated(message))
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

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
