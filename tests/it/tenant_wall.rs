//! The tenant wall comes before anything tenant-specific: every RPC that acts in a tenant, called
//! with a token of another tenant, answers PERMISSION_DENIED whatever the payload, and nothing in
//! the answer depends on the tenant named (its existence, its catalog, its settings). The RPCs are
//! taken from the descriptor set and the payloads built from it, so a new RPC is covered too.

use bytes::{Buf, BufMut};
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};
use tonic_types::StatusExt;

use crate::{
    both_backends,
    common::{Backend, TestServer},
};

const PASSWORD: &str = "velvet staircase under morning rain";

/// Raw protobuf bytes in, ignored bytes out.
#[derive(Clone, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let out = src.chunk().to_vec();
        src.advance(out.len());
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

fn put_string(buf: &mut Vec<u8>, field: i32, value: &str) {
    prost::encoding::string::encode(field as u32, &value.to_owned(), buf);
}

/// A request of `message` aimed at tenant `target`: its tenant (top-level `tenant_id`, or the
/// `tenant` message's) is `target`; every other string field, and one item of every repeated
/// string, holds `junk` (bad ids, unknown module names, a short password...).
fn payload(set: &prost_types::FileDescriptorSet, message: &str, target: &str, junk: &str) -> Option<Vec<u8>> {
    use prost_types::field_descriptor_proto::Type;
    let name = message.trim_start_matches(".crm.iam.v1.");
    let m = set.file.iter().flat_map(|f| &f.message_type).find(|m| m.name() == name)?;
    let mut out = Vec::new();
    let mut scoped = false;
    for f in &m.field {
        match (f.name(), f.r#type()) {
            ("tenant_id", Type::String) => {
                put_string(&mut out, f.number(), target);
                scoped = true;
            }
            ("tenant", Type::Message) if f.type_name() == ".crm.iam.v1.Tenant" => {
                let mut inner = Vec::new();
                put_string(&mut inner, 1, target);
                prost::encoding::bytes::encode(f.number() as u32, &inner, &mut out);
                scoped = true;
            }
            (_, Type::String) => put_string(&mut out, f.number(), junk),
            _ => {}
        }
    }
    scoped.then_some(out)
}

async fn call(channel: tonic::transport::Channel, token: &str, path: &str, streaming: bool, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    if streaming {
        match grpc.server_streaming(req, path, Raw).await {
            Ok(mut stream) => stream.get_mut().message().await.err().unwrap_or_else(|| Status::ok("")),
            Err(s) => s,
        }
    } else {
        grpc.unary(req, path, Raw).await.err().unwrap_or_else(|| Status::ok(""))
    }
}

both_backends!(every_tenant_rpc_refuses_another_tenants_token_whatever_the_payload);

async fn every_tenant_rpc_refuses_another_tenants_token_whatever_the_payload(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    server.tenant("beta", 0).await;
    let admin_role = server.builtin_role("beta", "administrator").await;
    server.password_user("beta", "admin@beta.example", PASSWORD, &[admin_role]).await;
    let token = server.login("beta", "admin@beta.example", PASSWORD).await.access_token;
    let set = prost_types::FileDescriptorSet::decode(crm_iam::proto::FILE_DESCRIPTOR_SET).unwrap();
    let channel = server.channel().await;
    let mut covered = 0;
    for file in set.file.iter().filter(|f| f.package() == "crm.iam.v1") {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/crm.iam.v1.{}/{}", service.name(), method.name());
                if crm_iam::api::authn::PUBLIC_METHODS.contains(&path.as_str()) {
                    continue; // no token: nothing to wall off (their own tests cover them)
                }
                // Aimed at an existing tenant, at one that does not exist, with junk of every kind:
                // the answers must be the same wall.
                let mut answers = Vec::new();
                for (target, junk) in [
                    ("acme", "secret-acquisitions"),
                    ("acme", "not-a-uuid"),
                    ("no-such-tenant", "secret-acquisitions"),
                    ("acme", &"x".repeat(100_000)),
                ] {
                    let Some(body) = payload(&set, method.input_type(), target, junk) else { continue };
                    let s = call(channel.clone(), &token, &path, method.server_streaming(), body).await;
                    assert_eq!(s.code(), Code::PermissionDenied, "{path} to {target} with {:.30}: {s:?}", junk);
                    let details = s.get_error_details();
                    assert!(
                        details.bad_request().is_none() && details.precondition_failure().is_none(),
                        "{path}: nothing about the request or the tenant: {s:?}"
                    );
                    answers.push(s.message().to_owned());
                }
                if answers.is_empty() {
                    continue; // not tenant-scoped (own session, platform key management)
                }
                answers.dedup();
                assert_eq!(answers.len(), 1, "{path}: the same answer whatever the tenant and payload: {answers:?}");
                assert!(!answers[0].contains("acme") && !answers[0].contains("no-such-tenant"), "{answers:?}");
                covered += 1;
            }
        }
    }
    assert!(covered >= 45, "only {covered} tenant-scoped RPCs found");
    server.stop().await;
}

/// The README's table of limits is the one the protos state (the generated checks use the latter).
#[test]
fn the_readme_lists_every_stated_limit() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Limits\n").nth(1).expect("a Limits section").split("\n## ").next().unwrap();
    let table: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    let stated: Vec<String> =
        crm_iam::api::limits::LIMITS.iter().map(|(field, limit)| format!("| `{field}` | {limit} |")).collect();
    assert_eq!(table, stated, "README's table of limits and the protos' comments differ");
}
