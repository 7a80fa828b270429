//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization, answered with
//! crm-iam's rights (`service::envoy`). This file only translates Envoy's messages.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::{protobuf as pbs, rpc};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::{
    domain::caller::Caller,
    service::{
        Iam,
        envoy::{HttpCheck, RouteTable, Verdict},
    },
};

/// The Envoy filter whose metadata carries the verified JWT payload.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
/// The context extension naming the upstream service (set in Envoy's route or virtual host).
const SERVICE_EXTENSION: &str = "crm_service";

pub struct EnvoyAuthzApi {
    iam: Iam,
    table: Arc<RouteTable>,
}

impl EnvoyAuthzApi {
    pub fn new(iam: Iam, table: RouteTable) -> Self {
        EnvoyAuthzApi { iam, table: Arc::new(table) }
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthzApi {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let req = req.into_inner();
        let check = http_check(&req, &self.table.jwt_payload_key);
        let verdict = self.iam.ext_authz(&self.table, caller.as_ref(), check).await?;
        Ok(Response::new(response(verdict, &req)))
    }
}

static NO_HEADERS: std::sync::LazyLock<std::collections::HashMap<String, String>> =
    std::sync::LazyLock::new(Default::default);

fn http_check<'a>(req: &'a CheckRequest, payload_key: &str) -> HttpCheck<'a> {
    let attributes = req.attributes.as_ref();
    let http = attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
    let jwt_payload = attributes
        .and_then(|a| a.metadata_context.as_ref())
        .and_then(|m| m.filter_metadata.get(JWT_AUTHN))
        .and_then(|s| s.fields.get(payload_key))
        .map(json);
    HttpCheck {
        service: attributes.and_then(|a| a.context_extensions.get(SERVICE_EXTENSION)).map_or("", String::as_str),
        host: http.map_or("", |h| h.host.as_str()),
        method: http.map_or("", |h| h.method.as_str()),
        path: http.map_or("", |h| h.path.as_str()),
        headers: http.map_or(&NO_HEADERS, |h| &h.headers),
        jwt_payload,
    }
}

/// A protobuf `Value` as JSON; whole numbers (JWT times) as integers.
fn json(v: &pbs::Value) -> Value {
    use pbs::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => Value::from(*n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json).collect()),
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value, raw_value: Vec::new() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn denied(grpc: tonic::Code, http: i32, error: &str, reason: String) -> CheckResponse {
    let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
    let mut headers = vec![header("content-type", "application/json".into())];
    if http == 401 {
        headers.push(header("www-authenticate", "Bearer realm=\"crm-iam\"".into()));
    }
    CheckResponse {
        status: Some(rpc::Status { code: grpc as i32, message: reason, details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

fn response(verdict: Verdict, req: &CheckRequest) -> CheckResponse {
    match verdict {
        Verdict::Allow(set) => {
            // Whatever x-crm-* headers the client sent are not crm-iam's: removed, or overwritten.
            let sent = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
            let headers_to_remove = sent
                .map(|h| {
                    h.headers
                        .keys()
                        .filter(|k| k.starts_with("x-crm-") && !set.iter().any(|(s, _)| s == k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            CheckResponse {
                status: Some(rpc::Status { code: tonic::Code::Ok as i32, message: String::new(), details: Vec::new() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: set.into_iter().map(|(k, v)| header(k, v)).collect(),
                    headers_to_remove,
                    ..Default::default()
                })),
                ..Default::default()
            }
        }
        Verdict::Unauthenticated(why) => denied(tonic::Code::Unauthenticated, 401, "unauthenticated", why),
        Verdict::Denied(why) => denied(tonic::Code::PermissionDenied, 403, "permission_denied", why),
    }
}
