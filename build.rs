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
    "crm.iam.v1.IdentityProvider",
    "crm.iam.v1.BeginSsoResponse",
    "crm.iam.v1.CompleteSsoRequest",
    "crm.iam.v1.CompleteSsoResponse",
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

    let mut fds = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("crm_iam_descriptor.bin"), fds.encode_to_vec())?;
    fds.file.retain(|f| f.package() != "google.rpc");

    std::fs::write(out_dir.join("limits.rs"), limits::generate(&fds)?)?;
    std::fs::write(out_dir.join("methods.rs"), methods(&fds))?;

    tonic_prost_build::configure()
        // Maps as BTreeMap: deterministic encoding, so idempotency fingerprints of equal requests match.
        .btree_map(".")
        .skip_debug(SECRET_BEARING.iter().map(|m| format!(".{m}")))
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

/// One constant per gRPC method (`methods::user_admin::CREATE_USER` is
/// `"/crm.iam.v1.UserAdmin/CreateUser"`) and `ALL`: the one way the code names a method.
fn methods(fds: &prost_types::FileDescriptorSet) -> String {
    let snake = |name: &str, upper: bool| {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        }
        out
    };
    let mut code = String::new();
    let mut all = Vec::new();
    for file in fds.file.iter().filter(|f| f.package() == "crm.iam.v1") {
        for service in &file.service {
            code.push_str(&format!(
                "/// Methods of `crm.iam.v1.{}`.\npub mod {} {{\n",
                service.name(),
                snake(service.name(), false)
            ));
            for m in &service.method {
                let path = format!("/crm.iam.v1.{}/{}", service.name(), m.name());
                code.push_str(&format!("    pub const {}: &str = {path:?};\n", snake(m.name(), true)));
                all.push(path);
            }
            code.push_str("}\n");
        }
    }
    all.sort();
    code.push_str("/// Every method, sorted.\npub const ALL: &[&str] = &[\n");
    for path in all {
        code.push_str(&format!("    {path:?},\n"));
    }
    code.push_str("];\n");
    code
}

/// Size limits of every field of the API's messages, as Rust code (`src/api/limits.rs` includes
/// it): each string field gets a maximum length in bytes and each repeated or map field a maximum
/// count, checked before any other work on a request. A field's comment states its limit ("At most
/// 256 bytes", "at most 100 characters" (4 bytes each in UTF-8), "At most 10000 items"); fields
/// without one get the default of their kind (see `default_limit`). The generated `LIMITS` list
/// holds the stated ones for the README's table (a test keeps the two equal).
mod limits {
    use std::{collections::HashMap, error::Error, fmt::Write};

    use prost_types::{
        DescriptorProto, FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    };

    const PACKAGE: &str = "crm.iam.v1";
    /// Rust keywords prost escapes as raw identifiers.
    const KEYWORDS: &[&str] = &["type", "use", "ref", "match", "move", "self", "struct", "enum", "fn", "mod"];

    pub const DEFAULT_STRING_BYTES: u64 = 4096;
    pub const DEFAULT_ID_BYTES: u64 = 128;
    pub const DEFAULT_ITEMS: u64 = 1000;
    pub const DEFAULT_MAP_ENTRIES: u64 = 100;
    pub const MAP_KEY_BYTES: u64 = 128;
    pub const FIELD_MASK_PATHS: u64 = 64;
    pub const FIELD_MASK_PATH_BYTES: u64 = 256;

    #[derive(Clone, Copy, Default)]
    struct Limit {
        bytes: Option<u64>,
        items: Option<u64>,
        stated: bool,
    }

    fn snake(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn ident(field: &str) -> String {
        if KEYWORDS.contains(&field) { format!("r#{field}") } else { field.to_owned() }
    }

    /// The limit a comment states, if any.
    fn stated(comment: &str) -> Limit {
        let words: Vec<&str> = comment.split_whitespace().collect();
        let mut l = Limit::default();
        for w in words.windows(3) {
            if !w[0].eq_ignore_ascii_case("most") {
                continue;
            }
            let Ok(n) = w[1].trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>() else { continue };
            let unit = w[2].trim_matches(|c: char| !c.is_alphabetic());
            match unit {
                "bytes" => l.bytes = Some(n),
                "characters" => l.bytes = Some(4 * n),
                "items" | "entries" => l.items = Some(n),
                _ => continue,
            }
            l.stated = true;
        }
        l
    }

    fn default_string_bytes(field: &str) -> u64 {
        if field.ends_with("_id") || field == "request_id" { DEFAULT_ID_BYTES } else { DEFAULT_STRING_BYTES }
    }

    struct Gen<'a> {
        messages: HashMap<String, &'a DescriptorProto>,
        comments: HashMap<String, String>,
        code: String,
        table: Vec<(String, String)>,
    }

    pub fn generate(fds: &FileDescriptorSet) -> Result<String, Box<dyn Error>> {
        let mut g = Gen { messages: HashMap::new(), comments: HashMap::new(), code: String::new(), table: Vec::new() };
        for file in fds.file.iter().filter(|f| f.package() == PACKAGE) {
            // Comments by path: [4, message index, 2, field index] (top-level messages only).
            if let Some(info) = &file.source_code_info {
                for loc in &info.location {
                    if loc.path.len() == 4 && loc.path[0] == 4 && loc.path[2] == 2 {
                        let m = &file.message_type[loc.path[1] as usize];
                        let f = &m.field[loc.path[3] as usize];
                        g.comments.insert(format!("{}.{}", m.name(), f.name()), loc.leading_comments().to_owned());
                    }
                }
            }
            for m in &file.message_type {
                g.messages.insert(m.name().to_owned(), m);
                for nested in &m.nested_type {
                    g.messages.insert(format!("{}.{}", m.name(), nested.name()), nested);
                }
            }
        }
        let mut names: Vec<String> = g.messages.keys().filter(|n| !n.contains('.')).cloned().collect();
        names.sort();
        for name in &names {
            let m = g.messages[name];
            g.message(name, m)?;
        }
        let mut out = String::new();
        out.push_str("// @generated by build.rs (mod limits): size limits of every API message.\n\n");
        out.push_str(&g.code);
        out.push_str("\n/// The limits the proto comments state (message.field, limit), for the README's table.\n");
        out.push_str("pub const LIMITS: &[(&str, &str)] = &[\n");
        for (field, limit) in &g.table {
            writeln!(out, "    ({field:?}, {limit:?}),")?;
        }
        out.push_str("];\n");
        Ok(out)
    }

    impl Gen<'_> {
        fn message(&mut self, name: &str, m: &DescriptorProto) -> Result<(), Box<dyn Error>> {
            let mut body = String::new();
            for f in &m.field {
                let field = f.name();
                let rust = ident(field);
                let key = format!("{name}.{field}");
                let comment = self.comments.get(&key).cloned().unwrap_or_default();
                let limit = stated(&comment);
                let repeated = f.label() == Label::Repeated;
                let type_name = f.type_name().trim_start_matches('.');
                let local = type_name.strip_prefix("crm.iam.v1.").unwrap_or(type_name);
                let map_entry = f.r#type() == Type::Message
                    && self.messages.get(local).is_some_and(|d| d.options.as_ref().is_some_and(|o| o.map_entry()));
                if limit.stated {
                    let mut parts = Vec::new();
                    if let Some(n) = limit.items {
                        parts.push(format!("{n} {}", if map_entry { "entries" } else { "items" }));
                    }
                    if let Some(n) = limit.bytes {
                        parts.push(format!("{n} bytes{}", if repeated { " each" } else { "" }));
                    }
                    self.table.push((key.clone(), parts.join(", ")));
                }
                let in_oneof = f.oneof_index.is_some() && !f.proto3_optional();
                if in_oneof {
                    continue; // handled per oneof below
                }
                let path = field.to_owned();
                if map_entry {
                    let entry = self.messages[local];
                    let value = &entry.field[1];
                    let entries = limit.items.unwrap_or(DEFAULT_MAP_ENTRIES);
                    writeln!(
                        body,
                        "        if self.{rust}.len() > {entries} {{ v.add(format!(\"{{}}{path}\", p()), \"at most {entries} entries\"); }} else {{"
                    )?;
                    writeln!(body, "            for (k, val) in &self.{rust} {{")?;
                    writeln!(
                        body,
                        "                if k.len() > {MAP_KEY_BYTES} {{ v.add(format!(\"{{}}{path}\", p()), \"keys of at most {MAP_KEY_BYTES} bytes\"); }}"
                    )?;
                    match value.r#type() {
                        Type::String => {
                            let bytes = limit.bytes.unwrap_or(DEFAULT_STRING_BYTES);
                            writeln!(
                                body,
                                "                if val.len() > {bytes} {{ v.add(format!(\"{{}}{path}[{{k:?}}]\", p()), \"at most {bytes} bytes\"); }}"
                            )?;
                        }
                        Type::Message if value.type_name().starts_with(".crm.iam.v1.") => {
                            writeln!(
                                body,
                                "                val.check_limits(&|| format!(\"{{}}{path}[{{k:?}}].\", p()), v);"
                            )?;
                        }
                        _ => writeln!(body, "                let _ = val;")?,
                    }
                    writeln!(body, "            }}\n        }}")?;
                    continue;
                }
                match (f.r#type(), repeated) {
                    (Type::String | Type::Bytes, false) => {
                        let bytes = limit.bytes.unwrap_or_else(|| default_string_bytes(field));
                        writeln!(
                            body,
                            "        if self.{rust}.len() > {bytes} {{ v.add(format!(\"{{}}{path}\", p()), \"at most {bytes} bytes\"); }}"
                        )?;
                    }
                    (Type::String | Type::Bytes, true) => {
                        let items = limit.items.unwrap_or(DEFAULT_ITEMS);
                        let singular = field.strip_suffix('s').unwrap_or(field);
                        let bytes = limit.bytes.unwrap_or_else(|| default_string_bytes(singular));
                        writeln!(
                            body,
                            "        if self.{rust}.len() > {items} {{ v.add(format!(\"{{}}{path}\", p()), \"at most {items} items\"); }} else {{"
                        )?;
                        writeln!(
                            body,
                            "            for (i, s) in self.{rust}.iter().enumerate() {{ if s.len() > {bytes} {{ v.add(format!(\"{{}}{path}[{{i}}]\", p()), \"at most {bytes} bytes\"); }} }}"
                        )?;
                        writeln!(body, "        }}")?;
                    }
                    (Type::Message, false) if type_name == "google.protobuf.FieldMask" => {
                        writeln!(body, "        if let Some(m) = &self.{rust} {{")?;
                        writeln!(
                            body,
                            "            if m.paths.len() > {FIELD_MASK_PATHS} {{ v.add(format!(\"{{}}{path}.paths\", p()), \"at most {FIELD_MASK_PATHS} items\"); }}"
                        )?;
                        writeln!(
                            body,
                            "            else {{ for (i, s) in m.paths.iter().enumerate() {{ if s.len() > {FIELD_MASK_PATH_BYTES} {{ v.add(format!(\"{{}}{path}.paths[{{i}}]\", p()), \"at most {FIELD_MASK_PATH_BYTES} bytes\"); }} }} }}"
                        )?;
                        writeln!(body, "        }}")?;
                    }
                    (Type::Message, false) if type_name.starts_with("crm.iam.v1.") => {
                        writeln!(
                            body,
                            "        if let Some(m) = &self.{rust} {{ m.check_limits(&|| format!(\"{{}}{path}.\", p()), v); }}"
                        )?;
                    }
                    (Type::Message, true) if type_name.starts_with("crm.iam.v1.") => {
                        let items = limit.items.unwrap_or(DEFAULT_ITEMS);
                        writeln!(
                            body,
                            "        if self.{rust}.len() > {items} {{ v.add(format!(\"{{}}{path}\", p()), \"at most {items} items\"); }} else {{"
                        )?;
                        writeln!(
                            body,
                            "            for (i, m) in self.{rust}.iter().enumerate() {{ m.check_limits(&|| format!(\"{{}}{path}[{{i}}].\", p()), v); }}"
                        )?;
                        writeln!(body, "        }}")?;
                    }
                    (_, true) => {
                        let items = limit.items.unwrap_or(DEFAULT_ITEMS);
                        writeln!(
                            body,
                            "        if self.{rust}.len() > {items} {{ v.add(format!(\"{{}}{path}\", p()), \"at most {items} items\"); }}"
                        )?;
                    }
                    _ => {}
                }
            }
            // Oneofs: string members only (the API has no other kind in a oneof of a request).
            for (i, o) in m.oneof_decl.iter().enumerate() {
                let members: Vec<_> =
                    m.field.iter().filter(|f| f.oneof_index == Some(i as i32) && !f.proto3_optional()).collect();
                if members.is_empty() {
                    continue;
                }
                let enum_path = format!("v1::{}::{}", snake(name), camel(o.name()));
                writeln!(body, "        match &self.{} {{", ident(o.name()))?;
                for f in members {
                    let variant = camel(f.name());
                    let field = f.name();
                    match f.r#type() {
                        Type::String => {
                            let bytes = default_string_bytes(field);
                            writeln!(
                                body,
                                "            Some({enum_path}::{variant}(s)) if s.len() > {bytes} => v.add(format!(\"{{}}{field}\", p()), \"at most {bytes} bytes\"),"
                            )?;
                        }
                        Type::Message if f.type_name().starts_with(".crm.iam.v1.") => {
                            writeln!(
                                body,
                                "            Some({enum_path}::{variant}(m)) => m.check_limits(&|| format!(\"{{}}{field}.\", p()), v),"
                            )?;
                        }
                        _ => {}
                    }
                }
                writeln!(body, "            _ => {{}}\n        }}")?;
            }
            let rust_name = name.replace('.', "::");
            writeln!(self.code, "impl Limits for v1::{rust_name} {{")?;
            if m.field.iter().any(|f| f.name() == "tenant_id" && f.r#type() == Type::String && f.oneof_index.is_none())
            {
                writeln!(self.code, "    fn tenant(&self) -> Option<&str> {{ Some(&self.tenant_id) }}")?;
            } else if m.field.iter().any(|f| f.name() == "tenant" && f.type_name() == ".crm.iam.v1.Tenant") {
                writeln!(
                    self.code,
                    "    fn tenant(&self) -> Option<&str> {{ self.tenant.as_ref().map(|t| t.tenant_id.as_str()) }}"
                )?;
            }
            if m.field.iter().any(|f| f.name() == "request_id" && f.r#type() == Type::String) {
                writeln!(self.code, "    fn request_id(&self) -> &str {{ &self.request_id }}")?;
                writeln!(self.code, "    fn clear_request_id(&mut self) {{ self.request_id.clear() }}")?;
            }
            writeln!(self.code, "    #[allow(unused_variables)]")?;
            writeln!(self.code, "    fn check_limits(&self, p: &dyn Fn() -> String, v: &mut Violations) {{")?;
            self.code.push_str(&body);
            writeln!(self.code, "    }}\n}}\n")?;
            Ok(())
        }
    }

    fn camel(name: &str) -> String {
        name.split('_')
            .map(|w| {
                let mut c = w.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                    None => String::new(),
                }
            })
            .collect()
    }
}
