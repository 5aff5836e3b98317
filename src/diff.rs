//! Comparing desired with observed state. Only the fields a user declared
//! count: fields the server adds (ids, versions, timestamps) are not drift.
//! Numbers compare by value (`1` equals `1.0`). Pure.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// JSON pointers of declared fields whose observed value differs, skipping
/// `ignore` (JSON pointers) and everything below them.
pub fn drifted_fields(desired: &Value, observed: &Value, ignore: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    walk(desired, observed, &mut String::new(), ignore, &mut out);
    out
}

fn walk(desired: &Value, observed: &Value, pointer: &mut String, ignore: &[String], out: &mut Vec<String>) {
    if ignore.iter().any(|i| i == pointer) {
        return;
    }
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                walk(value, have.get(key).unwrap_or(&Value::Null), pointer, ignore, out);
                pointer.truncate(len);
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(w, h, pointer, ignore, out);
                pointer.truncate(len);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        _ => out.push(if pointer.is_empty() {
            "/".into()
        } else {
            pointer.clone()
        }),
    }
}

/// The observed value cut down to the declared fields, for status.
pub fn project(desired: &Value, observed: &Value) -> Value {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => Value::Object(
            want.iter()
                .filter_map(|(k, w)| have.get(k).map(|h| (k.clone(), project(w, h))))
                .collect(),
        ),
        (_, observed) => observed.clone(),
    }
}

/// A stable hash of a JSON value (keys sorted by serde_json's map order).
pub fn hash(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Keeps a JSON value for status only when its text is at most `max` bytes.
pub fn bounded(value: Value, max: usize) -> Option<Value> {
    (value.to_string().len() <= max).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_added_fields_are_not_drift() {
        let desired = json!({"email": "a@b", "address": {"city": "Paris"}});
        let observed = json!({"email": "a@b", "id": "7", "version": 3, "address": {"city": "Paris", "zip": "75001"}});
        assert!(drifted_fields(&desired, &observed, &[]).is_empty());
    }

    #[test]
    fn changed_and_missing_declared_fields_are_drift() {
        let desired = json!({"plan": "pro", "seats": 5, "tags": ["a", "b"], "address": {"city": "Paris"}});
        let observed = json!({"plan": "free", "tags": ["a"], "address": {"city": "Lyon"}});
        assert_eq!(
            drifted_fields(&desired, &observed, &[]),
            ["/address/city", "/plan", "/seats", "/tags"]
        );
    }

    #[test]
    fn numbers_compare_by_value_and_ignored_fields_are_skipped() {
        let desired = json!({"limit": 1, "updatedAt": "x", "meta": {"etag": "1"}});
        let observed = json!({"limit": 1.0, "updatedAt": "y", "meta": {"etag": "2"}});
        assert!(drifted_fields(&desired, &observed, &["/updatedAt".into(), "/meta".into()]).is_empty());
    }

    #[test]
    fn projection_keeps_only_declared_fields() {
        let desired = json!({"email": "a@b", "address": {"city": "Paris"}});
        let observed = json!({"email": "a@b", "id": "7", "address": {"city": "Paris", "zip": "1"}});
        assert_eq!(
            project(&desired, &observed),
            json!({"email": "a@b", "address": {"city": "Paris"}})
        );
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        assert_eq!(hash(&json!({"a": 1, "b": 2})), hash(&json!({"b": 2, "a": 1})));
        assert_ne!(hash(&json!({"a": 1})), hash(&json!({"a": 2})));
    }
}
