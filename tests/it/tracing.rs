//! Traces reach an OTLP collector: the server's spans continue the caller's trace, carry method,
//! tenant and status, and have child spans for the database work; the audit event of the call
//! records the same trace id.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::common::{Backend, Bearer, TestDb, count, pb};

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().await;
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_with_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let db = TestDb::new(Backend::Sqlite).await;
    let endpoint = format!("http://{otlp}");
    let (mut proc, addr) = crate::server::spawn_server(
        &["--listen", "127.0.0.1:0", "--database-url", &db.url],
        &[
            ("CRM_IAM_ADMIN_TOKEN", crate::common::ADMIN_TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "crm-iam-under-test"),
        ],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut tenants = pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel, Bearer::admin());
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut req = Request::new(pb::CreateTenantRequest {
        tenant: Some(pb::Tenant { tenant_id: "traced".into(), display_name: "Traced".into(), ..Default::default() }),
        request_id: String::new(),
    });
    req.metadata_mut()
        .insert("traceparent", MetadataValue::try_from(format!("00-{trace_id}-b7ad6b7169203331-01")).unwrap());
    tenants.create_tenant(req).await.unwrap();
    // A failing call records its status code too.
    let missing = tenants.get_tenant(pb::GetTenantRequest { tenant_id: "missing".into() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    // Stopping the server flushes the exporter.
    let pid = proc.child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || proc.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    // Wait for what the assertions below read: both calls' spans and CreateTenant's children.
    crate::common::eventually("spans reach the collector", || {
        let c = collector.clone();
        async move {
            let spans = c.0.lock().await;
            let create = spans.iter().find(|s| s.name == "crm.iam.v1.TenantAdmin/CreateTenant");
            spans.iter().any(|s| s.name == "crm.iam.v1.TenantAdmin/GetTenant")
                && create.is_some_and(|rpc| {
                    spans.iter().any(|s| s.parent_span_id == rpc.span_id && attr(s, "db.system").is_some())
                })
        }
    })
    .await;

    let spans = collector.0.lock().await.clone();
    let want = hex::decode(trace_id).unwrap();
    let rpc = spans
        .iter()
        .find(|s| s.name == "crm.iam.v1.TenantAdmin/CreateTenant")
        .unwrap_or_else(|| panic!("no CreateTenant span in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(rpc.trace_id, want, "the server span continues the caller's trace");
    assert_eq!(rpc.parent_span_id, hex::decode("b7ad6b7169203331").unwrap());
    assert_eq!(attr(rpc, "rpc.method").as_deref(), Some("CreateTenant"));
    assert_eq!(attr(rpc, "rpc.service").as_deref(), Some("crm.iam.v1.TenantAdmin"));
    assert_eq!(attr(rpc, "tenant_id").as_deref(), Some("traced"));
    assert_eq!(attr(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    let children: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == rpc.span_id).collect();
    assert!(
        children.iter().any(|s| attr(s, "db.system").as_deref() == Some("sqlite")),
        "database work is traced as child spans: {:?}",
        children.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(
        spans
            .iter()
            .filter(|s| attr(s, "db.statement").is_some())
            .all(|s| !attr(s, "db.statement").unwrap().contains("traced")),
        "statements are recorded without their values"
    );
    let failed = spans.iter().find(|s| s.name == "crm.iam.v1.TenantAdmin/GetTenant").unwrap();
    assert_eq!(attr(failed, "rpc.grpc.status_code").as_deref(), Some("5"));

    // The audit event of the call carries the same trace id.
    let conn = db.connect().await;
    assert_eq!(count(&conn, &format!("SELECT COUNT(*) FROM audit_events WHERE trace_id = '{trace_id}'")).await, 1);
}
