//! SCIM filters (RFC 7644 §3.4.2.2), parsed by the `scim_v2` crate (a LALRPOP grammar with a term
//! and depth budget, so a hostile filter cannot exhaust the stack) and evaluated here against a
//! resource's SCIM representation, so every attribute a resource shows can be filtered on and
//! the answer is the one a GET of the resource would give.
//!
//! Attribute names are case-insensitive; string comparisons too, except for `id`, `externalId`
//! and `meta.version` (caseExact in RFC 7643). A multi-valued attribute matches when any value
//! does; a complex value without a sub-attribute compares its `value`.

use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, Filter, ValFilter};
use serde_json::Value;

use super::schema::ENTERPRISE_USER;

/// The most comparisons one filter may hold (each is evaluated against every user it scans).
pub const MAX_TERMS: usize = 50;

/// A filter that cannot be evaluated: SCIM `invalidFilter`.
pub fn parse(s: &str) -> Result<Filter, String> {
    let f = s.parse::<Filter>().map_err(|e| format!("the filter does not parse: {e}"))?;
    if terms(&f) > MAX_TERMS {
        return Err(format!("the filter has more than {MAX_TERMS} comparisons"));
    }
    Ok(f)
}

fn terms(f: &Filter) -> usize {
    match f {
        Filter::Attr(_) => 1,
        Filter::ValuePath(vp) => val_terms(&vp.filter),
        Filter::Not(f) => terms(f),
        Filter::And(fs) | Filter::Or(fs) => fs.iter().map(terms).sum(),
    }
}

fn val_terms(f: &ValFilter) -> usize {
    match f {
        ValFilter::Attr(_) => 1,
        ValFilter::Not(f) => val_terms(f),
        ValFilter::And(fs) | ValFilter::Or(fs) => fs.iter().map(val_terms).sum(),
    }
}

/// Whether `resource` matches `filter`.
pub fn matches(filter: &Filter, resource: &Value) -> bool {
    match filter {
        Filter::Attr(e) => attr_exp(e, resource),
        Filter::ValuePath(vp) => values(resource, &vp.attr).iter().any(|v| val_filter(&vp.filter, v)),
        Filter::Not(f) => !matches(f, resource),
        Filter::And(fs) => fs.iter().all(|f| matches(f, resource)),
        Filter::Or(fs) => fs.iter().any(|f| matches(f, resource)),
    }
}

/// A filter inside brackets, evaluated against one value of a multi-valued attribute.
pub fn val_filter(filter: &ValFilter, value: &Value) -> bool {
    match filter {
        ValFilter::Attr(e) => attr_exp(e, value),
        ValFilter::Not(f) => !val_filter(f, value),
        ValFilter::And(fs) => fs.iter().all(|f| val_filter(f, value)),
        ValFilter::Or(fs) => fs.iter().any(|f| val_filter(f, value)),
    }
}

fn attr_exp(e: &AttrExp, resource: &Value) -> bool {
    match e {
        AttrExp::Present(path) => resolve(resource, path).iter().any(|v| present(v)),
        AttrExp::Comparison(path, op, want) => {
            let exact = case_exact(path);
            resolve(resource, path).iter().any(|v| compare(v, op, want, exact))
        }
    }
}

/// Whether a value counts as present: not null, not an empty string, array or object.
fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(present),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn case_exact(path: &AttrPath) -> bool {
    let name = path.name.to_ascii_lowercase();
    let sub = path.sub_attr.as_deref().map(str::to_ascii_lowercase);
    matches!((name.as_str(), sub.as_deref()), ("id" | "externalid", None) | ("meta", Some("version")))
}

/// The member of an object by a case-insensitive name.
pub fn member<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// The values an attribute path names in a resource (several for a multi-valued attribute).
fn values<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let base = match path.uri.as_deref() {
        Some(uri) if uri.eq_ignore_ascii_case(ENTERPRISE_USER) => match member(resource, ENTERPRISE_USER) {
            Some(ext) => ext,
            None => return Vec::new(),
        },
        _ => resource,
    };
    let Some(v) = member(base, &path.name) else { return Vec::new() };
    match v {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    }
}

/// The leaf values a path names: the sub-attribute of each value, or for complex values without
/// one, their `value`.
fn resolve<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    values(resource, path)
        .into_iter()
        .filter_map(|v| match (&path.sub_attr, v) {
            (Some(sub), v) => member(v, sub),
            (None, Value::Object(_)) => member(v, "value").or(Some(v)),
            (None, v) => Some(v),
        })
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            v => vec![v],
        })
        .collect()
}

fn compare(have: &Value, op: &CompareOp, want: &CompValue, exact: bool) -> bool {
    use std::cmp::Ordering;
    let ordering = match (have, want) {
        (Value::String(h), CompValue::Str(w)) => {
            let (h, w) = if exact { (h.clone(), w.clone()) } else { (h.to_lowercase(), w.to_lowercase()) };
            match op {
                CompareOp::Co => return h.contains(&w),
                CompareOp::Sw => return h.starts_with(&w),
                CompareOp::Ew => return h.ends_with(&w),
                _ => h.cmp(&w),
            }
        }
        (Value::Number(h), CompValue::Number(w)) => match (h.as_f64(), w.as_f64()) {
            (Some(h), Some(w)) => h.partial_cmp(&w).unwrap_or(Ordering::Less),
            _ => return false,
        },
        (Value::Bool(h), CompValue::True) => return bool_op(op, *h),
        (Value::Bool(h), CompValue::False) => return bool_op(op, !*h),
        (Value::Null, CompValue::Null) => return matches!(op, CompareOp::Eq),
        (_, CompValue::Null) => return matches!(op, CompareOp::Ne),
        _ => return matches!(op, CompareOp::Ne),
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

/// `eq true` / `ne true` on a boolean (`same`: whether the value equals the one asked for).
fn bool_op(op: &CompareOp, same: bool) -> bool {
    match op {
        CompareOp::Eq => same,
        CompareOp::Ne => !same,
        _ => false,
    }
}

/// When a filter asks for one user by an attribute the store can look up directly (what IdPs
/// send before every create: `userName eq "…"`, `externalId eq "…"`), that attribute and value.
pub fn lookup(filter: &Filter) -> Option<(&'static str, &str)> {
    let Filter::Attr(AttrExp::Comparison(path, CompareOp::Eq, CompValue::Str(v))) = filter else { return None };
    if path.sub_attr.is_some() || path.uri.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(ENTERPRISE_USER)) {
        return None;
    }
    match path.name.to_ascii_lowercase().as_str() {
        "username" => Some(("userName", v)),
        "externalid" => Some(("externalId", v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "0193", "userName": "Ann@Acme.example", "active": true, "externalId": "AbC",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": "ann@acme.example", "type": "work", "primary": true},
                       {"value": "ann@home.example", "type": "home"}],
            "meta": {"lastModified": "2026-12-01T10:00:00Z"},
            ENTERPRISE_USER: {"department": "Sales", "employeeNumber": "7"}
        })
    }

    fn eval(f: &str) -> bool {
        matches(&parse(f).unwrap(), &user())
    }

    #[test]
    fn the_rfc_operators_evaluate_against_the_representation() {
        assert!(eval(r#"userName eq "ann@acme.example""#), "userName is not case-exact");
        assert!(!eval(r#"externalId eq "abc""#), "externalId is case-exact");
        assert!(eval(r#"name.familyName co "ee" and active eq true"#));
        assert!(eval(r#"userName sw "ann" or title pr"#));
        assert!(!eval("title pr"));
        assert!(eval("not (title pr)"));
        assert!(eval(r#"emails[type eq "work" and value ew "acme.example"]"#));
        assert!(!eval(r#"emails[type eq "home" and value ew "acme.example"]"#));
        assert!(eval(r#"emails.value eq "ann@home.example""#), "any value of a multi-valued attribute");
        assert!(eval(r#"emails co "home""#), "a complex value compares its value");
        assert!(eval(r#"meta.lastModified gt "2026-11-30T00:00:00Z""#));
        assert!(!eval(r#"meta.lastModified gt "2026-12-02T00:00:00Z""#));
        assert!(eval(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "sales""#));
        assert!(eval(r#"USERNAME Eq "ANN@ACME.EXAMPLE""#), "names and operators in any case");
    }

    #[test]
    fn lookups_are_recognised_and_bad_filters_refused() {
        let f = parse(r#"userName eq "x@y.example""#).unwrap();
        assert_eq!(lookup(&f), Some(("userName", "x@y.example")));
        assert_eq!(lookup(&parse(r#"userName co "x""#).unwrap()), None);
        assert!(parse("userName eq").is_err());
        assert!(parse(&"(".repeat(500)).is_err(), "nesting is bounded");
    }
}
