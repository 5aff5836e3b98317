//! The simulator's data: collections of JSON objects with server-generated
//! ids, idempotency keys, pagination and field filters. Pure in-memory state,
//! no I/O; the HTTP layer in `routes.rs` drives it.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// Largest page a list request may ask for.
pub const MAX_PAGE: usize = 500;
/// Page size when a list request does not say.
pub const DEFAULT_PAGE: usize = 50;

#[derive(Default, Debug)]
pub struct Collection {
    next_id: u64,
    objects: BTreeMap<String, Value>,
    /// Idempotency key -> (id of the object it created, the request body).
    idempotency: HashMap<String, (String, Value)>,
}

/// Outcome of a create.
#[derive(Debug, PartialEq)]
pub enum Created {
    /// A new object.
    New(Value),
    /// The key was seen before with the same body: the original object.
    Replayed(Value),
    /// The key was seen before with another body.
    KeyReused,
}

/// One page of a list.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// Relations between collections, as real APIs enforce them: (child
/// collection, field of the child, parent collection). A parent that a
/// child points at cannot be deleted; a child cannot point at a parent that
/// does not exist.
pub const RELATIONS: &[(&str, &str, &str)] = &[("orders", "customerId", "customers")];

/// Collections whose objects get a server-generated `secret` on create (an
/// API key shown to its creator), like a real API's credentials endpoint.
pub const SECRET_COLLECTIONS: &[&str] = &["api-keys"];

#[derive(Default, Debug)]
pub struct Store {
    collections: BTreeMap<String, Collection>,
    clock: u64,
}

impl Store {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Creates an object from `body` (a JSON object). The server owns `id`,
    /// `version`, `createdAt` and `updatedAt`.
    pub fn create(&mut self, collection: &str, body: Value, idempotency_key: Option<&str>) -> Created {
        let tick = self.tick();
        let col = self.collections.entry(collection.to_owned()).or_default();
        if let Some((id, original)) = idempotency_key.and_then(|key| col.idempotency.get(key)) {
            if *original != body {
                return Created::KeyReused;
            }
            // The object may have been deleted since: replay what was created.
            let object = col.objects.get(id).cloned().unwrap_or_else(|| json!({ "id": id }));
            return Created::Replayed(object);
        }
        col.next_id += 1;
        let id = format!("{}-{:06}", singular(collection), col.next_id);
        let mut object = stamp(body.clone(), &id, 1, tick, tick);
        if SECRET_COLLECTIONS.contains(&collection)
            && let Value::Object(map) = &mut object
        {
            map.insert("secret".into(), json!(format!("sk_{}", uuid::Uuid::new_v4().simple())));
        }
        col.objects.insert(id.clone(), object.clone());
        if let Some(key) = idempotency_key {
            col.idempotency.insert(key.to_owned(), (id, body));
        }
        Created::New(object)
    }

    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        self.collections.get(collection)?.objects.get(id).cloned()
    }

    /// A GET of one object. Objects can model asynchronous jobs: one
    /// created with `"state": "running"` and `"readsUntilDone": n` turns
    /// `"done"` on its n-th read, the way a provisioning API finishes work
    /// that a client polls.
    pub fn read(&mut self, collection: &str, id: &str) -> Option<Value> {
        let tick = self.tick();
        let object = self.collections.get_mut(collection)?.objects.get_mut(id)?;
        let remaining = object.get("readsUntilDone").and_then(Value::as_u64);
        if let (Some(remaining), Some("running")) = (remaining, object.get("state").and_then(Value::as_str)) {
            let remaining = remaining.saturating_sub(1);
            object["readsUntilDone"] = json!(remaining);
            if remaining == 0 {
                object["state"] = json!("done");
                object["updatedAt"] = json!(tick);
            }
        }
        Some(object.clone())
    }

    /// Replaces the client-owned fields of an object (PUT).
    pub fn replace(&mut self, collection: &str, id: &str, body: Value) -> Option<Value> {
        let tick = self.tick();
        let object = self.collections.get_mut(collection)?.objects.get_mut(id)?;
        let (version, created) = versions(object);
        *object = stamp(body, id, version + 1, created, tick);
        Some(object.clone())
    }

    /// Applies a JSON merge patch (RFC 7386) to an object (PATCH).
    pub fn merge(&mut self, collection: &str, id: &str, patch: &Value) -> Option<Value> {
        let tick = self.tick();
        let object = self.collections.get_mut(collection)?.objects.get_mut(id)?;
        let (version, created) = versions(object);
        let mut merged = object.clone();
        merge_patch(&mut merged, patch);
        *object = stamp(merged, id, version + 1, created, tick);
        Some(object.clone())
    }

    /// The ids of the children (by [`RELATIONS`]) that point at `id`.
    pub fn children(&self, collection: &str, id: &str) -> Vec<String> {
        RELATIONS
            .iter()
            .filter(|(_, _, parent)| *parent == collection)
            .flat_map(|(child, field, _)| {
                self.collections
                    .get(*child)
                    .map(|c| {
                        c.objects
                            .iter()
                            .filter(|(_, o)| o.get(*field).and_then(Value::as_str) == Some(id))
                            .map(|(child_id, _)| child_id.clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The first relation field of `body` (for `collection`) that names a
    /// parent that does not exist: `(field, parent collection, id)`.
    pub fn missing_parent(&self, collection: &str, body: &Value) -> Option<(String, String, String)> {
        RELATIONS
            .iter()
            .filter(|(child, _, _)| *child == collection)
            .find_map(|(_, field, parent)| {
                let id = body.get(*field)?.as_str()?;
                self.get(parent, id)
                    .is_none()
                    .then(|| ((*field).to_owned(), (*parent).to_owned(), id.to_owned()))
            })
    }

    pub fn delete(&mut self, collection: &str, id: &str) -> bool {
        self.collections
            .get_mut(collection)
            .is_some_and(|c| c.objects.remove(id).is_some())
    }

    /// Objects in id order after `cursor`, keeping those whose fields equal
    /// every filter (`a.b` reaches nested fields).
    pub fn list(&self, collection: &str, filters: &[(String, String)], cursor: Option<&str>, limit: usize) -> Page {
        let limit = limit.clamp(1, MAX_PAGE);
        let Some(col) = self.collections.get(collection) else {
            return Page {
                items: vec![],
                next_cursor: None,
            };
        };
        let mut items = Vec::new();
        let mut next_cursor = None;
        let range = match cursor {
            Some(c) => col
                .objects
                .range::<str, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            None => col.objects.range::<str, _>(..),
        };
        for object in range.map(|(_, o)| o).filter(|o| matches(o, filters)) {
            if items.len() == limit {
                next_cursor = items.last().and_then(|o: &Value| o["id"].as_str()).map(str::to_owned);
                break;
            }
            items.push(object.clone());
        }
        Page { items, next_cursor }
    }

    /// Every object of a collection, for the control API and tests.
    pub fn all(&self, collection: &str) -> Vec<Value> {
        self.collections
            .get(collection)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn singular(collection: &str) -> &str {
    collection
        .strip_suffix('s')
        .filter(|s| !s.is_empty())
        .unwrap_or(collection)
}

fn versions(object: &Value) -> (u64, u64) {
    (
        object["version"].as_u64().unwrap_or(0),
        object["createdAt"].as_u64().unwrap_or(0),
    )
}

/// Writes the server-owned fields over whatever the client sent.
fn stamp(body: Value, id: &str, version: u64, created: u64, updated: u64) -> Value {
    let mut map = match body {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    map.insert("id".into(), json!(id));
    map.insert("version".into(), json!(version));
    map.insert("createdAt".into(), json!(created));
    map.insert("updatedAt".into(), json!(updated));
    Value::Object(map)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn matches(object: &Value, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(path, wanted)| {
        let found = path.split('.').try_fold(object, |v, key| v.get(key));
        match found {
            Some(Value::String(s)) => s == wanted,
            // Numbers and booleans are compared as JSON: `?n=3` matches 3.
            Some(other) => serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == *other),
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_parent_with_children_is_known_and_a_missing_parent_is_named() {
        let mut store = Store::default();
        let Created::New(customer) = store.create("customers", json!({"name": "ada"}), None) else {
            panic!("created")
        };
        let id = customer["id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(store.missing_parent("orders", &json!({"customerId": id})), None);
        assert_eq!(
            store.missing_parent("orders", &json!({"customerId": "customer-999"})),
            Some(("customerId".into(), "customers".into(), "customer-999".into()))
        );
        store.create("orders", json!({"customerId": id}), None);
        assert_eq!(store.children("customers", &id).len(), 1);
    }

    #[test]
    fn a_running_job_is_done_after_its_reads() {
        let mut store = Store::default();
        let Created::New(job) = store.create("jobs", json!({"state": "running", "readsUntilDone": 2}), None) else {
            panic!("created")
        };
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            store.read("jobs", &id).map(|j| j["state"].clone()),
            Some(json!("running"))
        );
        assert_eq!(store.read("jobs", &id).map(|j| j["state"].clone()), Some(json!("done")));
        assert_eq!(store.read("jobs", &id).map(|j| j["state"].clone()), Some(json!("done")));
    }

    use super::*;

    #[test]
    fn same_idempotency_key_and_body_replays_the_first_object() {
        let mut store = Store::default();
        let Created::New(first) = store.create("contacts", json!({"email": "a@x"}), Some("k1")) else {
            panic!("first create must be new")
        };
        assert_eq!(
            store.create("contacts", json!({"email": "a@x"}), Some("k1")),
            Created::Replayed(first)
        );
        assert_eq!(store.all("contacts").len(), 1);
    }

    #[test]
    fn same_idempotency_key_with_another_body_is_refused() {
        let mut store = Store::default();
        store.create("contacts", json!({"email": "a@x"}), Some("k1"));
        assert_eq!(
            store.create("contacts", json!({"email": "b@x"}), Some("k1")),
            Created::KeyReused
        );
    }

    #[test]
    fn list_pages_through_filtered_objects_in_id_order() {
        let mut store = Store::default();
        for i in 0..7 {
            store.create(
                "contacts",
                json!({"team": if i % 2 == 0 { "red" } else { "blue" }, "n": i}),
                None,
            );
        }
        let filter = [("team".to_owned(), "red".to_owned())];
        let first = store.list("contacts", &filter, None, 3);
        assert_eq!(first.items.len(), 3);
        let second = store.list("contacts", &filter, first.next_cursor.as_deref(), 3);
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.next_cursor, None);
        let ns: Vec<_> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|o| o["n"].as_u64())
            .collect();
        assert_eq!(ns, [Some(0), Some(2), Some(4), Some(6)]);
    }

    #[test]
    fn merge_patch_removes_nulls_and_keeps_server_fields() {
        let mut store = Store::default();
        let Created::New(obj) = store.create("contacts", json!({"a": 1, "b": {"c": 2, "d": 3}}), None) else {
            panic!()
        };
        let id = obj["id"].as_str().unwrap_or_default().to_owned();
        let patched = store.merge("contacts", &id, &json!({"b": {"c": null}, "id": "hijack"}));
        let patched = patched.unwrap_or_default();
        assert_eq!(patched["b"], json!({"d": 3}));
        assert_eq!(patched["id"], json!(id));
        assert_eq!(patched["version"], json!(2));
    }
}
