//! Compiles the protos under `proto/` without a system `protoc`: `protox` (a pure-Rust protobuf
//! compiler) produces the descriptor set, `tonic-prost-build` turns it into Rust, and the encoded
//! descriptor set is written beside the generated code for gRPC server reflection.

use std::{error::Error, path::PathBuf};

use prost::Message;

/// Messages that carry a password, token or TOTP secret. They get no derived `Debug`; `src/proto.rs`
/// gives them one that prints only the harmless fields, so a secret can never reach a log line.
const SECRET_BEARING: &[&str] = &[
    "crm.iam.v1.CreateUserRequest",
    "crm.iam.v1.CreateUserResponse",
    "crm.iam.v1.ResetPasswordRequest",
    "crm.iam.v1.ResetPasswordResponse",
    "crm.iam.v1.ResendInvitationResponse",
    "crm.iam.v1.AuthenticateRequest",
    "crm.iam.v1.AuthenticateResponse",
    "crm.iam.v1.RefreshRequest",
    "crm.iam.v1.RefreshResponse",
    "crm.iam.v1.ChangePasswordRequest",
    "crm.iam.v1.ChangePasswordResponse",
    "crm.iam.v1.AcceptInvitationRequest",
    "crm.iam.v1.CompletePasswordResetRequest",
    "crm.iam.v1.EnrollTotpResponse",
    "crm.iam.v1.ConfirmTotpRequest",
    "crm.iam.v1.ConfirmTotpResponse",
    "crm.iam.v1.DisableTotpRequest",
    "crm.iam.v1.IntrospectTokenRequest",
];

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_dir.join("crm/iam/v1"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    // Only described by reflection (so grpcurl can print error details); not compiled to Rust.
    files.push(proto_dir.join("google/rpc/error_details.proto"));
    // The benchmarks' echo service: compiled to Rust, not served by `crm-iam serve`, not reflected.
    files.push(proto_dir.join("crm/iam/bench/v1/echo.proto"));

    let mut fds = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut reflected = fds.clone();
    reflected.file.retain(|f| f.package() != "crm.iam.bench.v1");
    std::fs::write(out_dir.join("crm_iam_descriptor.bin"), reflected.encode_to_vec())?;
    fds.file.retain(|f| f.package() != "google.rpc");

    tonic_prost_build::configure()
        // Maps as BTreeMap: deterministic encoding, so idempotency fingerprints of equal requests match.
        .btree_map(".")
        .skip_debug(SECRET_BEARING.iter().map(|m| format!(".{m}")))
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
