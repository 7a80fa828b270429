//! Operations commands of the `crm-iam` binary: `audit tail` and `users import/export` talk to a
//! running server over gRPC; `backup` and `restore` work on the SQLite file; `keys` on the
//! master key that seals secrets at rest.

pub mod audit_tail;
pub mod backup;
pub mod keys;
pub mod users;

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Bearer> {
        Ok(Bearer(MetadataValue::try_from(format!("Bearer {token}"))?))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The token for CLI commands: `CRM_IAM_TOKEN`, else `CRM_IAM_ADMIN_TOKEN`, else the admin
/// token file (`--token-file`, default `./crm-iam.admin-token`).
pub fn token(token_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("CRM_IAM_TOKEN").or_else(|_| std::env::var("CRM_IAM_ADMIN_TOKEN")) {
        return Ok(t);
    }
    let path = token_file.unwrap_or(std::path::Path::new("crm-iam.admin-token"));
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| anyhow::anyhow!("no token: set CRM_IAM_TOKEN or pass --token-file ({}: {e})", path.display()))
}
