//! The route table of Envoy's external authorization: which right an HTTP request of a sibling
//! service needs, and where the resource's id, owner or department comes from.
//!
//! ```toml
//! [ext_authz]
//! unmatched = "deny"                  # or "allow": requests no route matches
//! [[ext_authz.routes]]
//! service = "deals"                   # Envoy context extension `crm_service`, else the host; "" = any
//! method = "GET"                      # or "*"
//! path = "/api/deals/{id}"            # literal segments and {name} segments
//! permission = "deals.view"
//! resource_id = "{id}"                # {path param}, query:NAME or header:NAME
//! ```
//!
//! The first matching route decides. A request whose path is not normalized (`.` or `..`
//! segments, empty segments, encoded `/` or `\`) matches nothing and is denied whatever
//! `unmatched` says: the upstream might resolve it to another route than the one checked.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What happens to a request no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Deny,
    Allow,
}

/// `[ext_authz]` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    #[serde(default)]
    pub unmatched: Unmatched,
    /// The key Envoy's `jwt_authn` stores the verified payload under (`payload_in_metadata`).
    #[serde(default = "default_payload_key")]
    pub jwt_payload_key: String,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_payload_key() -> String {
    "jwt_payload".into()
}

/// One `[[ext_authz.routes]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub service: String,
    pub method: String,
    pub path: String,
    /// `module.action`; empty with `public = true`.
    #[serde(default)]
    pub permission: String,
    /// No token needed (a health or login page): allowed as is, `x-crm-*` headers stripped.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub resource_id: String,
    #[serde(default)]
    pub owner_user_id: String,
    #[serde(default)]
    pub department_id: String,
    /// A list route: the upstream gets the department ids in the caller's scope.
    #[serde(default)]
    pub list: bool,
}

/// Where a value of the request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(usize),
    Query(String),
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub index: usize,
    service: String,
    method: String,
    segments: Vec<Segment>,
    pub public: bool,
    pub module: String,
    pub action: String,
    pub resource_id: Option<Source>,
    pub owner_user_id: Option<Source>,
    pub department_id: Option<Source>,
    pub list: bool,
}

/// The compiled table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub unmatched: Unmatched,
    pub jwt_payload_key: String,
    routes: Vec<Route>,
}

/// A matched route with the request's values.
#[derive(Debug)]
pub struct Matched<'r> {
    pub route: &'r Route,
    pub resource_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub department_id: Option<String>,
}

/// Most routes in a table (the table is scanned in order for every request).
pub const MAX_ROUTES: usize = 1000;

impl ExtAuthzConfig {
    /// Checks and compiles the table; errors name the route.
    pub fn compile(&self) -> Result<RouteTable, String> {
        if self.routes.len() > MAX_ROUTES {
            return Err(format!("at most {MAX_ROUTES} routes"));
        }
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| compile_route(i, r).map_err(|e| format!("routes[{i}] ({} {}): {e}", r.method, r.path)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteTable { unmatched: self.unmatched, jwt_payload_key: self.jwt_payload_key.clone(), routes })
    }
}

fn compile_route(index: usize, r: &RouteConfig) -> Result<Route, String> {
    let method = r.method.trim().to_ascii_uppercase();
    if method != "*" && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err("method must be an HTTP method (GET, POST, …) or *".into());
    }
    if !r.path.starts_with('/') {
        return Err("path must start with /".into());
    }
    let mut segments = Vec::new();
    for s in r.path[1..].split('/') {
        if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("path parameter {{{name}}}: letters, digits and _ only"));
            }
            if segments.iter().any(|s| matches!(s, Segment::Param(n) if n == name)) {
                return Err(format!("path parameter {{{name}}} appears twice"));
            }
            segments.push(Segment::Param(name.to_owned()));
        } else if s.contains(['{', '}']) || s == "." || s == ".." || (s.is_empty() && r.path.len() > 1) {
            return Err(format!("path segment {s:?}: a literal, or one whole {{name}}"));
        } else {
            segments.push(Segment::Literal(s.to_owned()));
        }
    }
    let (module, action) = if r.public {
        if !r.permission.is_empty() {
            return Err("a public route names no permission".into());
        }
        (String::new(), String::new())
    } else {
        let (m, a) = r.permission.split_once('.').ok_or("permission must be module.action, e.g. deals.view")?;
        if m.is_empty() || a.is_empty() {
            return Err("permission must be module.action, e.g. deals.view".into());
        }
        (m.to_owned(), a.to_owned())
    };
    let source = |field: &str, v: &str| -> Result<Option<Source>, String> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if let Some(name) = v.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let i = segments
                .iter()
                .position(|s| matches!(s, Segment::Param(n) if n == name))
                .ok_or_else(|| format!("{field}: the path has no {{{name}}}"))?;
            return Ok(Some(Source::Path(i)));
        }
        if let Some(q) = v.strip_prefix("query:").filter(|q| !q.is_empty()) {
            return Ok(Some(Source::Query(q.to_owned())));
        }
        if let Some(h) = v.strip_prefix("header:").filter(|h| !h.is_empty()) {
            let h = h.to_ascii_lowercase();
            if h.starts_with("x-crm-") {
                return Err(format!("{field}: x-crm-* headers are set by crm-iam, not read from the client"));
            }
            return Ok(Some(Source::Header(h)));
        }
        Err(format!("{field}: write {{param}}, query:NAME or header:NAME"))
    };
    let route = Route {
        index,
        service: r.service.trim().to_owned(),
        method,
        public: r.public,
        module,
        action,
        resource_id: source("resource_id", &r.resource_id)?,
        owner_user_id: source("owner_user_id", &r.owner_user_id)?,
        department_id: source("department_id", &r.department_id)?,
        list: r.list,
        segments,
    };
    if route.public && (route.resource_id.is_some() || route.owner_user_id.is_some() || route.list) {
        return Err("a public route has no resource and is not a list".into());
    }
    Ok(route)
}

/// Whether a request path is in the normal form both Envoy and the upstream route the same way.
fn normalized(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && !lower.contains("%2e")
        && !path.contains('\\')
        && !path[1..].split('/').enumerate().any(|(i, s)| s == "." || s == ".." || (s.is_empty() && i > 0))
}

/// A percent-decoded path segment (`+` stays `+`).
fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl RouteTable {
    /// The first route matching the request, with the values it names. `None`: no route matches
    /// (or the path is not normalized).
    pub fn find<'r>(
        &'r self,
        service: &str,
        host: &str,
        method: &str,
        target: &str,
        headers: &HashMap<String, String>,
    ) -> Option<Matched<'r>> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if !normalized(path) {
            return None;
        }
        let host = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |h| h.0);
        let parts: Vec<&str> = path[1..].split('/').collect();
        let route = self.routes.iter().find(|r| {
            (r.service.is_empty()
                || r.service == service
                || (service.is_empty() && r.service.eq_ignore_ascii_case(host)))
                && (r.method == "*" || r.method == method)
                && r.segments.len() == parts.len()
                && r.segments.iter().zip(&parts).all(|(s, p)| match s {
                    Segment::Literal(l) => l == p,
                    Segment::Param(_) => !p.is_empty(),
                })
        })?;
        let value = |source: &Option<Source>| -> Option<String> {
            match source.as_ref()? {
                Source::Path(i) => Some(decode(parts[*i])),
                Source::Query(name) => url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name.as_str())
                    .map(|(_, v)| v.into_owned()),
                Source::Header(name) => headers.get(name).cloned(),
            }
            .filter(|v| !v.is_empty())
        };
        Some(Matched {
            resource_id: value(&route.resource_id),
            owner_user_id: value(&route.owner_user_id),
            department_id: value(&route.department_id),
            route,
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let toml = r#"
            unmatched = "deny"
            [[routes]]
            service = "deals"
            method = "GET"
            path = "/api/deals/{id}"
            permission = "deals.view"
            resource_id = "{id}"
            [[routes]]
            method = "GET"
            path = "/api/deals"
            permission = "deals.view"
            list = true
            [[routes]]
            method = "*"
            path = "/api/contacts/{id}/notes"
            permission = "contacts.edit"
            resource_id = "{id}"
            owner_user_id = "query:owner"
            department_id = "header:x-department"
            [[routes]]
            method = "GET"
            path = "/healthz"
            public = true
        "#;
        let c: ExtAuthzConfig = {
            use figment::providers::Format;
            figment::Figment::from(figment::providers::Toml::string(toml))
        }
        .extract()
        .unwrap();
        c.compile().unwrap()
    }

    #[test]
    fn first_matching_route_with_its_values() {
        let t = table();
        let h: HashMap<String, String> = [("x-department".to_string(), "d1".to_string())].into();
        let m = t.find("deals", "", "GET", "/api/deals/42", &h).unwrap();
        assert_eq!((m.route.index, m.resource_id.as_deref()), (0, Some("42")));
        assert!(t.find("tasks", "", "GET", "/api/deals/42", &h).is_none(), "another service");
        let m = t.find("", "deals:8080", "GET", "/api/deals/a%20b", &h).unwrap();
        assert_eq!(m.resource_id.as_deref(), Some("a b"), "host without port names the service; decoded");
        let m = t.find("x", "", "GET", "/api/deals?page=2", &h).unwrap();
        assert!(m.route.list);
        let m = t.find("x", "", "DELETE", "/api/contacts/7/notes?owner=u1", &h).unwrap();
        assert_eq!(
            (m.route.module.as_str(), m.resource_id.as_deref(), m.owner_user_id.as_deref(), m.department_id.as_deref()),
            ("contacts", Some("7"), Some("u1"), Some("d1"))
        );
        assert!(t.find("x", "", "POST", "/api/deals", &h).is_none(), "method");
        assert!(t.find("x", "", "GET", "/api/deals/42/x", &h).is_none(), "segment count");
        assert!(t.find("x", "", "GET", "/healthz", &h).unwrap().route.public);
    }

    /// The example table of deploy/ (and the README) compiles and names rights of the built-in
    /// catalog.
    #[test]
    fn the_deploy_example_compiles() {
        use figment::providers::Format;
        let text = include_str!("../../../deploy/examples/envoy-sidecar/crm-iam-ext-authz.toml");
        let c: ExtAuthzConfig =
            figment::Figment::from(figment::providers::Toml::string(text)).extract_inner("ext_authz").unwrap();
        let t = c.compile().unwrap();
        assert!(t.len() >= 10);
        let catalog =
            crate::domain::access::Template::Administrator.permissions(&crate::domain::access::builtin_modules());
        for r in t.routes.iter().filter(|r| !r.public) {
            assert!(catalog.iter().any(|p| p.module == r.module && p.action == r.action), "{}.{}", r.module, r.action);
        }
        let h = HashMap::new();
        let m = t.find("deals", "", "DELETE", "/api/deals/42", &h).unwrap();
        assert_eq!((m.route.action.as_str(), m.resource_id.as_deref()), ("delete", Some("42")));
    }

    #[test]
    fn unnormalized_paths_match_nothing() {
        let t = table();
        let h = HashMap::new();
        for p in [
            "/healthz/../api/deals",
            "/api/deals/./42",
            "/api//deals",
            "/api/deals/42%2F..%2Fadmin",
            "/api/deals/%2e%2e",
            "/api\\deals",
            "/api/deals/",
        ] {
            assert!(t.find("deals", "", "GET", p, &h).is_none(), "{p}");
        }
    }

    #[test]
    fn bad_routes_are_refused_with_their_index() {
        let bad = |r: RouteConfig| ExtAuthzConfig { routes: vec![r], ..Default::default() }.compile().unwrap_err();
        let base = RouteConfig {
            method: "GET".into(),
            path: "/a/{id}".into(),
            permission: "deals.view".into(),
            ..Default::default()
        };
        assert!(bad(RouteConfig { permission: "deals".into(), ..base.clone() }).contains("module.action"));
        assert!(bad(RouteConfig { resource_id: "{nope}".into(), ..base.clone() }).contains("no {nope}"));
        assert!(bad(RouteConfig { owner_user_id: "header:x-crm-user-id".into(), ..base.clone() }).contains("x-crm-"));
        assert!(bad(RouteConfig { path: "a/b".into(), ..base.clone() }).contains("start with /"));
        assert!(bad(RouteConfig { path: "/a/x{id}".into(), ..base.clone() }).contains("segment"));
        assert!(bad(RouteConfig { method: "get deals".into(), ..base.clone() }).contains("method"));
        assert!(bad(RouteConfig { public: true, ..base }).starts_with("routes[0]"));
    }
}
