//! SCIM PATCH (RFC 7644 §3.5.2), applied to a resource's SCIM representation; the result is then
//! stored exactly as a PUT of it would be, so PATCH and PUT cannot disagree. Accepted as real IdPs
//! send it: operation names in any case (Entra ID's `"Replace"`), operations without a `path`
//! whose `value` object names attributes (also by `name.givenName` or the enterprise URN), value
//! paths (`emails[type eq "work"].value`), and removal of members listed in `value`.

use scim_v2::filter::{AttrPath, PatchPath};
use serde_json::{Map, Value};

use super::{
    filter::{member, val_filter},
    schema::ENTERPRISE_USER,
};

/// At most this many operations in one PATCH (each attribute of a pathless operation's value
/// counts as one).
pub const MAX_OPERATIONS: usize = 100;

/// At most this many values in one operation's list (a group's members, a user's addresses).
pub const MAX_VALUES: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// A PATCH that cannot be applied: (scimType, detail).
pub type PatchError = (&'static str, String);

/// Applies the `Operations` of a PatchOp message to `resource`.
pub fn apply(resource: &mut Value, body: &Value) -> Result<(), PatchError> {
    let ops = member(body, "Operations").and_then(Value::as_array).ok_or(("invalidSyntax", "no Operations".into()))?;
    // The work is bounded before any is done (dedupe and key lookups are linear scans).
    let mut count = 0usize;
    for op in ops {
        let value = member(op, "value");
        count += match value {
            Some(Value::Object(o)) if member(op, "path").is_none() => o.len().max(1),
            _ => 1,
        };
        if let Some(Value::Array(items)) = value
            && items.len() > MAX_VALUES
        {
            return Err(("tooMany", format!("at most {MAX_VALUES} values in one operation")));
        }
    }
    if count > MAX_OPERATIONS {
        return Err(("tooMany", format!("at most {MAX_OPERATIONS} operations (attributes) in one PATCH")));
    }
    for (i, op) in ops.iter().enumerate() {
        let name = member(op, "op").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let kind = match name.as_str() {
            "add" => Op::Add,
            "replace" => Op::Replace,
            "remove" => Op::Remove,
            _ => return Err(("invalidSyntax", format!("Operations[{i}].op must be add, replace or remove"))),
        };
        let value = member(op, "value").cloned();
        match member(op, "path").and_then(Value::as_str).filter(|p| !p.trim().is_empty()) {
            // The enterprise extension as a whole.
            Some(path) if path.trim().eq_ignore_ascii_case(ENTERPRISE_USER) => {
                let obj =
                    resource.as_object_mut().ok_or(("invalidValue", "the resource is not an object".to_string()))?;
                let k = key(obj, ENTERPRISE_USER);
                match (kind, value) {
                    (Op::Remove, _) => {
                        obj.remove(&k);
                    }
                    (Op::Replace, Some(v @ Value::Object(_))) => {
                        obj.insert(k, v);
                    }
                    (Op::Add, Some(Value::Object(v))) => {
                        let ext = obj.entry(k).or_insert_with(|| Value::Object(Map::new()));
                        if let Some(ext) = ext.as_object_mut() {
                            ext.extend(v);
                        }
                    }
                    _ => {
                        return Err((
                            "invalidValue",
                            format!("Operations[{i}]: the extension's value must be an object"),
                        ));
                    }
                }
            }
            Some(path) => {
                let path: PatchPath =
                    path.parse().map_err(|e| ("invalidPath", format!("Operations[{i}].path: {e}")))?;
                at_path(resource, kind, &path, value)?;
            }
            None => {
                if kind == Op::Remove {
                    return Err(("noTarget", format!("Operations[{i}]: remove needs a path")));
                }
                let Some(Value::Object(fields)) = value else {
                    return Err(("invalidValue", format!("Operations[{i}]: without a path, value must be an object")));
                };
                for (k, v) in fields {
                    if k.eq_ignore_ascii_case(ENTERPRISE_USER) && v.is_object() {
                        // The extension as a whole: each of its attributes.
                        for (ek, ev) in v.as_object().into_iter().flatten() {
                            let path = PatchPath::Attr(AttrPath {
                                uri: Some(ENTERPRISE_USER.into()),
                                name: ek.clone(),
                                sub_attr: None,
                            });
                            at_path(resource, kind, &path, Some(ev.clone()))?;
                        }
                        continue;
                    }
                    let path: PatchPath =
                        k.parse().map_err(|e| ("invalidPath", format!("Operations[{i}].value.{k}: {e}")))?;
                    at_path(resource, kind, &path, Some(v))?;
                }
            }
        }
    }
    Ok(())
}

/// The object an attribute path lives in (the enterprise extension's, made when missing).
fn container<'a>(resource: &'a mut Value, path: &AttrPath) -> Result<&'a mut Map<String, Value>, PatchError> {
    let root = resource.as_object_mut().ok_or(("invalidValue", "the resource is not an object".to_string()))?;
    match path.uri.as_deref() {
        Some(uri) if uri.eq_ignore_ascii_case(ENTERPRISE_USER) => {
            let ext = root.entry(ENTERPRISE_USER).or_insert_with(|| Value::Object(Map::new()));
            if !ext.is_object() {
                *ext = Value::Object(Map::new());
            }
            Ok(ext.as_object_mut().expect("made an object"))
        }
        _ => Ok(root),
    }
}

/// The key of `obj` matching `name` case-insensitively (or `name` itself when none does).
fn key(obj: &Map<String, Value>, name: &str) -> String {
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned().unwrap_or_else(|| name.to_owned())
}

fn at_path(resource: &mut Value, op: Op, path: &PatchPath, value: Option<Value>) -> Result<(), PatchError> {
    if op != Op::Remove && value.is_none() {
        return Err(("invalidValue", format!("{path}: add and replace need a value")));
    }
    match path {
        PatchPath::Attr(a) => {
            let obj = container(resource, a)?;
            let k = key(obj, &a.name);
            match (&a.sub_attr, op) {
                (None, Op::Remove) => {
                    match (obj.get_mut(&k), value) {
                        // `remove members` with the members to remove as value (Entra ID).
                        (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                            let ids: Vec<&Value> = gone.iter().filter_map(|g| member(g, "value")).collect();
                            items.retain(|it| !member(it, "value").is_some_and(|v| ids.contains(&v)));
                        }
                        _ => {
                            obj.remove(&k);
                        }
                    }
                }
                (None, Op::Add)
                    if matches!(obj.get(&k), Some(Value::Array(_))) || value.as_ref().is_some_and(Value::is_array) =>
                {
                    let add = match value.expect("checked") {
                        Value::Array(items) => items,
                        v => vec![v],
                    };
                    let items = obj.entry(k).or_insert_with(|| Value::Array(Vec::new()));
                    if !items.is_array() {
                        *items = Value::Array(Vec::new());
                    }
                    let items = items.as_array_mut().expect("an array");
                    for v in add {
                        let same = |it: &Value| match (member(it, "value"), member(&v, "value")) {
                            (Some(a), Some(b)) => a == b,
                            _ => *it == v,
                        };
                        if !items.iter().any(same) {
                            items.push(v);
                        }
                    }
                }
                (None, Op::Add)
                    if obj.get(&k).is_some_and(Value::is_object) && value.as_ref().is_some_and(Value::is_object) =>
                {
                    let target = obj.get_mut(&k).and_then(Value::as_object_mut).expect("an object");
                    for (sk, sv) in value.expect("checked").as_object().into_iter().flatten() {
                        let sk2 = key(target, sk);
                        target.insert(sk2, sv.clone());
                    }
                }
                (None, _) => {
                    obj.insert(k, value.expect("checked"));
                }
                (Some(sub), Op::Remove) => {
                    if let Some(Value::Object(inner)) = obj.get_mut(&k) {
                        let sk = key(inner, sub);
                        inner.remove(&sk);
                    }
                }
                (Some(sub), _) => {
                    let inner = obj.entry(k).or_insert_with(|| Value::Object(Map::new()));
                    if !inner.is_object() {
                        *inner = Value::Object(Map::new());
                    }
                    let inner = inner.as_object_mut().expect("an object");
                    let sk = key(inner, sub);
                    inner.insert(sk, value.expect("checked"));
                }
            }
        }
        PatchPath::Value(vp) => {
            let obj = container(resource, &vp.attr)?;
            let k = key(obj, &vp.attr.name);
            let items = obj.entry(k).or_insert_with(|| Value::Array(Vec::new()));
            if !items.is_array() {
                *items = Value::Array(Vec::new());
            }
            let items = items.as_array_mut().expect("an array");
            match (op, &vp.sub_attr) {
                (Op::Remove, None) => items.retain(|it| !val_filter(&vp.filter, it)),
                (Op::Remove, Some(sub)) => {
                    for it in items.iter_mut().filter(|it| val_filter(&vp.filter, it)) {
                        if let Some(o) = it.as_object_mut() {
                            let sk = key(o, sub);
                            o.remove(&sk);
                        }
                    }
                }
                (_, sub) => {
                    let value = value.expect("checked");
                    let mut hit = false;
                    for it in items.iter_mut().filter(|it| val_filter(&vp.filter, it)) {
                        hit = true;
                        match sub {
                            Some(sub) => {
                                if let Some(o) = it.as_object_mut() {
                                    let sk = key(o, sub);
                                    o.insert(sk, value.clone());
                                }
                            }
                            None => *it = value.clone(),
                        }
                    }
                    if !hit {
                        // Entra ID replaces `emails[type eq "work"].value` on a user that has no
                        // work address yet: the element is made from the filter's equalities.
                        let mut made = Map::new();
                        seed(&vp.filter, &mut made);
                        match sub {
                            Some(sub) => {
                                made.insert(sub.clone(), value);
                            }
                            None => {
                                if let Value::Object(v) = value {
                                    made.extend(v);
                                }
                            }
                        }
                        items.push(Value::Object(made));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `attr eq "value"` terms of a value filter, as the fields of a new element.
fn seed(f: &scim_v2::filter::ValFilter, out: &mut Map<String, Value>) {
    use scim_v2::filter::{AttrExp, CompValue, CompareOp, ValFilter};
    match f {
        ValFilter::Attr(AttrExp::Comparison(p, CompareOp::Eq, v)) if p.sub_attr.is_none() => {
            let v = match v {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::True => Value::Bool(true),
                CompValue::False => Value::Bool(false),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => Value::Null,
            };
            out.insert(p.name.clone(), v);
        }
        ValFilter::And(fs) => fs.iter().for_each(|f| seed(f, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(ops: Value) -> Value {
        let mut u = json!({
            "userName": "ann@acme.example", "active": true, "title": "Clerk",
            "emails": [{"value": "ann@acme.example", "type": "work", "primary": true}],
            "members": [{"value": "a"}, {"value": "b"}]
        });
        apply(&mut u, &json!({"Operations": ops})).unwrap();
        u
    }

    #[test]
    fn entra_id_and_okta_operations_apply() {
        let u = patched(json!([{"op": "Replace", "path": "active", "value": "False"}]));
        assert_eq!(u["active"], "False", "the string is coerced when the user is read back");
        let u = patched(json!([{"op": "replace", "value": {"title": "Lead", "name.givenName": "Ann",
            ENTERPRISE_USER: {"department": "Sales"}}}]));
        assert_eq!((u["title"].as_str(), u["name"]["givenName"].as_str()), (Some("Lead"), Some("Ann")));
        assert_eq!(u[ENTERPRISE_USER]["department"], "Sales");
        let u = patched(
            json!([{"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "value": "7"}]),
        );
        assert_eq!(u[ENTERPRISE_USER]["employeeNumber"], "7");
        let u = patched(json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "a@b.example"}]));
        assert_eq!(u["emails"][0]["value"], "a@b.example");
        let u = patched(json!([{"op": "remove", "path": "members", "value": [{"value": "a"}]}]));
        assert_eq!(u["members"], json!([{"value": "b"}]));
        let u = patched(
            json!([{"op": "remove", "path": "members[value eq \"b\"]"}, {"op": "add", "path": "members", "value": [{"value": "c"}, {"value": "a"}]}]),
        );
        assert_eq!(u["members"], json!([{"value": "a"}, {"value": "c"}]));
        let u = patched(json!([{"op": "remove", "path": "title"}]));
        assert!(u.get("title").is_none());
    }

    #[test]
    fn bad_operations_are_refused_with_their_scim_type() {
        let mut u = json!({});
        let err = |ops: Value, u: &mut Value| apply(u, &json!({"Operations": ops})).unwrap_err().0;
        assert_eq!(err(json!([{"op": "move", "path": "title"}]), &mut u), "invalidSyntax");
        assert_eq!(err(json!([{"op": "remove"}]), &mut u), "noTarget");
        assert_eq!(err(json!([{"op": "add", "path": "emails[type eq"}]), &mut u), "invalidPath");
        assert_eq!(err(json!([{"op": "add", "path": "title"}]), &mut u), "invalidValue");
    }
}
