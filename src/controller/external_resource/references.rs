//! References between ExternalResources of one namespace, as pure
//! decisions over objects the caller hands in (from the store, or fresh
//! from the API server): which object each reference names and what it
//! exposes to expressions ([`resolve`]), the desired properties computed
//! from them ([`desired_properties`]), cycles ([`find_cycle`]), who holds
//! an object's deletion ([`dependents`]); and the [`ReferenceIndex`] that
//! maps a changed ExternalResource to the ones to wake, for the watch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use crate::api::ExternalResource;
use crate::api::common::condition::READY;
use crate::api::external_resource::ResourceReference;
use crate::expr::{Expr, ExprError};

/// Why the references cannot be used yet (or ever, as they stand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Some referenced objects are missing or not Ready: wait for their
    /// watch events. Each entry reads `customer (ExternalResource ada): not found`.
    Waiting(Vec<String>),
    /// A selector matches more than one ExternalResource.
    Ambiguous(String),
    /// Following references leads back here: `a -> b -> a`.
    Cycle(Vec<String>),
}

impl Unresolved {
    /// Stable label, used as the condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Unresolved::Waiting(_) => super::WAITING_FOR_REFERENCE,
            Unresolved::Ambiguous(_) => "AmbiguousReference",
            Unresolved::Cycle(_) => "ReferenceCycle",
        }
    }

    /// Only a change of some spec fixes it.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Unresolved::Waiting(_))
    }

    pub fn message(&self) -> String {
        match self {
            Unresolved::Waiting(which) => format!(
                "waiting for {}; nothing is sent to the target until every reference is Ready",
                which.join(", ")
            ),
            Unresolved::Ambiguous(message) => message.clone(),
            Unresolved::Cycle(path) => format!(
                "references form a cycle: {}; no object of a cycle can be created first, so none is",
                path.join(" -> ")
            ),
        }
    }
}

/// What a reference exposes to `propertiesFrom`: `.refs.<name>`.
fn exposed(er: &ExternalResource) -> Value {
    let status = er.status.as_ref();
    json!({
        "name": er.name_any(),
        "externalId": status.and_then(|s| s.external_id.clone()),
        "observed": er.observed().cloned().unwrap_or(Value::Null),
    })
}

fn is_ready(er: &ExternalResource) -> bool {
    er.status
        .as_ref()
        .is_some_and(|s| s.external_id.is_some() && crate::conditions::is_true(&s.conditions, READY))
}

/// Whether `reference` (made from `namespace`) names `candidate`.
pub fn names(reference: &ResourceReference, namespace: &str, candidate: &ExternalResource) -> bool {
    if candidate.namespace().as_deref() != Some(namespace) {
        return false;
    }
    match (&reference.name, &reference.selector) {
        (Some(name), _) => candidate.name_any() == *name,
        (None, Some(selector)) => {
            let labels = candidate.labels();
            selector.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        (None, None) => false,
    }
}

/// How a reference reads in a message.
fn describe(key: &str, reference: &ResourceReference) -> String {
    match (&reference.name, &reference.selector) {
        (Some(name), _) => format!("{key} (ExternalResource {name})"),
        (None, Some(selector)) => {
            let labels: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{key} (ExternalResource with labels {})", labels.join(","))
        }
        (None, None) => format!("{key} (no name or selector)"),
    }
}

/// Resolves the references of `er` among `candidates` (ExternalResources;
/// those of other namespaces never match). Returns `.refs` — reference
/// name to `{name, externalId, observed}` — when every one is Ready.
pub fn resolve<'a>(
    er: &ExternalResource,
    candidates: impl IntoIterator<Item = &'a ExternalResource> + Clone,
) -> Result<Value, Unresolved> {
    let namespace = er.namespace().unwrap_or_default();
    let mut refs = serde_json::Map::new();
    let mut waiting = Vec::new();
    for (key, reference) in &er.spec.references {
        let found: Vec<&ExternalResource> = candidates
            .clone()
            .into_iter()
            .filter(|c| c.uid() != er.uid() || c.name_any() != er.name_any())
            .filter(|c| names(reference, &namespace, c))
            .collect();
        match found.as_slice() {
            [] => waiting.push(format!("{}: not found", describe(key, reference))),
            [one] if is_ready(one) => {
                refs.insert(key.clone(), exposed(one));
            }
            [_] => waiting.push(format!("{}: not Ready", describe(key, reference))),
            many => {
                let mut names: Vec<String> = many.iter().map(|c| c.name_any()).collect();
                names.sort();
                return Err(Unresolved::Ambiguous(format!(
                    "{} matches {} ExternalResources ({}); a selector must match exactly one",
                    describe(key, reference),
                    names.len(),
                    names.join(", ")
                )));
            }
        }
    }
    if waiting.is_empty() {
        Ok(Value::Object(refs))
    } else {
        Err(Unresolved::Waiting(waiting))
    }
}

/// The properties to compare and send: `properties` with each
/// `propertiesFrom` expression evaluated over `{refs}` set on top.
pub fn desired_properties(
    properties: &Value,
    properties_from: &BTreeMap<String, String>,
    refs: &Value,
) -> Result<Value, ExprError> {
    if properties_from.is_empty() {
        return Ok(properties.clone());
    }
    let input = json!({ "refs": refs });
    let mut desired = match properties {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    for (key, source) in properties_from {
        let expr = Expr::compile_cached(&format!("spec.propertiesFrom.{key}"), source, &[])?;
        desired.insert(key.clone(), expr.eval(&input, &[])?);
    }
    Ok(Value::Object(desired))
}

/// The names `er` references among `candidates` (a selector: every match).
pub fn referenced_names<'a>(
    er: &ExternalResource,
    candidates: impl IntoIterator<Item = &'a ExternalResource> + Clone,
) -> BTreeSet<String> {
    let namespace = er.namespace().unwrap_or_default();
    er.spec
        .references
        .values()
        .flat_map(|reference| match &reference.name {
            Some(name) => vec![name.clone()],
            None => candidates
                .clone()
                .into_iter()
                .filter(|c| names(reference, &namespace, c))
                .map(|c| c.name_any())
                .collect(),
        })
        .collect()
}

/// A cycle through `start`, following `edges` (name -> the names it
/// references): `[start, .., start]`. Visits each name once, so it ends on
/// any graph.
pub fn find_cycle(start: &str, edges: impl Fn(&str) -> BTreeSet<String>) -> Option<Vec<String>> {
    let mut visited = BTreeSet::new();
    let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_owned(), vec![start.to_owned()])];
    while let Some((node, path)) = stack.pop() {
        for next in edges(&node) {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next);
                return Some(cycle);
            }
            if visited.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next, longer));
            }
        }
    }
    None
}

/// The ExternalResources among `others` that reference `er` (sorted
/// names): while one exists, `er` is not deleted at its target.
pub fn dependents<'a>(er: &ExternalResource, others: impl IntoIterator<Item = &'a ExternalResource>) -> Vec<String> {
    let mut names: Vec<String> = others
        .into_iter()
        .filter(|other| other.name_any() != er.name_any() && other.namespace() == er.namespace())
        .filter(|other| {
            let namespace = other.namespace().unwrap_or_default();
            other.spec.references.values().any(|r| names(r, &namespace, er))
        })
        .map(|other| other.name_any())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether the cleanup of `er` must wait for `dependents` before deleting
/// at the target. An orphaned object stays at the target, so it never
/// waits; nor does one that was never created.
pub fn deletion_waits(er: &ExternalResource, dependents: &[String]) -> bool {
    use crate::api::external_resource::{DeletionPolicy, ManagementPolicy};
    let spec = &er.spec;
    let at_target = er
        .status
        .as_ref()
        .is_some_and(|s| s.external_id.is_some() || s.pending_create.is_some());
    spec.deletion_policy == DeletionPolicy::Delete
        && spec.management_policy == ManagementPolicy::Full
        && at_target
        && !dependents.is_empty()
}

/// Which ExternalResources reference which, learnt from the watch events
/// themselves: each event records the changed object's references (by
/// name, or its selectors) and answers who to wake. O(references of the
/// object + selectors of its namespace) per event; no scan of the store.
#[derive(Default)]
pub struct ReferenceIndex {
    inner: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    /// (namespace, referenced name) -> names that reference it.
    by_name: HashMap<(String, String), BTreeSet<String>>,
    /// namespace -> dependent -> its selectors.
    selectors: HashMap<String, BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    /// (namespace, dependent) -> the names it referenced, to forget them.
    recorded: HashMap<(String, String), BTreeSet<String>>,
}

impl Index {
    /// `dependent` no longer references `target`.
    fn unlink(&mut self, namespace: &str, target: &str, dependent: &str) {
        let key = (namespace.to_owned(), target.to_owned());
        if let Some(set) = self.by_name.get_mut(&key) {
            set.remove(dependent);
            if set.is_empty() {
                self.by_name.remove(&key);
            }
        }
    }

    /// Everything recorded of `name`.
    fn forget(&mut self, namespace: &str, name: &str) {
        let referenced = self
            .recorded
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_default();
        for target in &referenced {
            self.unlink(namespace, target, name);
        }
        if let Some(of_namespace) = self.selectors.get_mut(namespace) {
            of_namespace.remove(name);
            if of_namespace.is_empty() {
                self.selectors.remove(namespace);
            }
        }
    }
}

impl ReferenceIndex {
    /// Forgets an ExternalResource that is gone (also one whose last event
    /// was missed, which a relist reports).
    pub fn forget(&self, gone: &ExternalResource) {
        let mut index = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        index.forget(&gone.namespace().unwrap_or_default(), &gone.name_any());
    }

    /// Objects and namespaces recorded (what [`Self::forget`] frees).
    pub fn len(&self) -> usize {
        let index = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        index.recorded.len() + index.by_name.len() + index.selectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `changed`'s references and returns the objects to reconcile:
    /// those that reference it (its id, readiness or fields may have
    /// changed), and — when it is being deleted — those it references (their
    /// deletion may be waiting for it).
    pub fn affected(&self, changed: &ExternalResource) -> Vec<ObjectRef<ExternalResource>> {
        let namespace = changed.namespace().unwrap_or_default();
        let name = changed.name_any();
        let mut index = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: BTreeSet<String> = changed
            .spec
            .references
            .values()
            .filter_map(|r| r.name.clone())
            .collect();
        // Only objects that reference by name are recorded: memory follows
        // the references, not the number of objects.
        let key = (namespace.clone(), name.clone());
        let before = if now.is_empty() {
            index.recorded.remove(&key)
        } else {
            index.recorded.insert(key, now.clone())
        }
        .unwrap_or_default();
        for gone in before.difference(&now) {
            index.unlink(&namespace, gone, &name);
        }
        for target in &now {
            index
                .by_name
                .entry((namespace.clone(), target.clone()))
                .or_default()
                .insert(name.clone());
        }
        let selectors: Vec<BTreeMap<String, String>> = changed
            .spec
            .references
            .values()
            .filter_map(|r| r.selector.as_ref().map(|s| s.match_labels.clone()))
            .collect();
        if selectors.is_empty() {
            if let Some(of_namespace) = index.selectors.get_mut(&namespace) {
                of_namespace.remove(&name);
                if of_namespace.is_empty() {
                    index.selectors.remove(&namespace);
                }
            }
        } else {
            index
                .selectors
                .entry(namespace.clone())
                .or_default()
                .insert(name.clone(), selectors);
        }

        let mut wake: BTreeSet<String> = index
            .by_name
            .get(&(namespace.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        let labels = changed.labels();
        if let Some(of_namespace) = index.selectors.get(&namespace) {
            for (dependent, selectors) in of_namespace {
                if selectors
                    .iter()
                    .any(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
                {
                    wake.insert(dependent.clone());
                }
            }
        }
        if changed.metadata.deletion_timestamp.is_some() {
            wake.extend(now.iter().cloned());
            // Its finalizer is gone: this is the last event of the object,
            // so the index forgets it (names are not kept forever).
            if changed.finalizers().is_empty() {
                index.forget(&namespace, &name);
            }
        }
        wake.remove(&name);
        wake.into_iter()
            .map(|n| ObjectRef::new(&n).within(&namespace))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::external_resource::ExternalResourceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn er(name: &str, references: Value) -> ExternalResource {
        let mut er: ExternalResource = serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"targetRef": {"name": "crm"}, "type": "order", "properties": {"total": 3},
                     "references": references}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        er.status = None;
        er
    }

    fn ready(mut er: ExternalResource, id: &str) -> ExternalResource {
        er.status = Some(ExternalResourceStatus {
            external_id: Some(id.into()),
            observed: Some(json!({"email": "ada@example.com"})),
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Created".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            }],
            ..Default::default()
        });
        er
    }

    fn in_namespace(mut er: ExternalResource, ns: &str) -> ExternalResource {
        er.metadata.namespace = Some(ns.into());
        er
    }

    #[test]
    fn a_ready_reference_exposes_its_id_and_observed_fields() {
        let order = er("order", json!({"customer": {"name": "ada"}}));
        let ada = ready(er("ada", json!({})), "cus-1");
        let refs = resolve(&order, [&ada]);
        assert_eq!(
            refs,
            Ok(json!({"customer": {"name": "ada", "externalId": "cus-1", "observed": {"email": "ada@example.com"}}}))
        );
    }

    #[test]
    fn a_missing_or_unready_reference_waits_and_says_which() {
        let order = er("order", json!({"customer": {"name": "ada"}}));
        let waiting = resolve(&order, std::iter::empty::<&ExternalResource>());
        assert_eq!(
            waiting,
            Err(Unresolved::Waiting(vec![
                "customer (ExternalResource ada): not found".into()
            ]))
        );
        let creating = er("ada", json!({}));
        let Err(unready) = resolve(&order, [&creating]) else {
            panic!("an unready reference must wait")
        };
        assert_eq!(unready.reason(), "WaitingForReference");
        assert!(unready.message().contains("customer (ExternalResource ada): not Ready"));
        assert!(!unready.is_permanent());
    }

    #[test]
    fn a_reference_never_resolves_in_another_namespace() {
        let order = er("order", json!({"customer": {"name": "ada"}}));
        let elsewhere = in_namespace(ready(er("ada", json!({})), "cus-1"), "other-tenant");
        assert!(matches!(resolve(&order, [&elsewhere]), Err(Unresolved::Waiting(_))));
    }

    #[test]
    fn a_selector_must_match_exactly_one() {
        let order = er(
            "order",
            json!({"customer": {"selector": {"matchLabels": {"role": "buyer"}}}}),
        );
        let mut ada = ready(er("ada", json!({})), "cus-1");
        ada.metadata.labels = Some([("role".to_owned(), "buyer".to_owned())].into());
        assert!(resolve(&order, [&ada]).is_ok());
        let mut bob = ready(er("bob", json!({})), "cus-2");
        bob.metadata.labels = ada.metadata.labels.clone();
        let Err(ambiguous) = resolve(&order, [&ada, &bob]) else {
            panic!("two matches must be refused")
        };
        assert_eq!(ambiguous.reason(), "AmbiguousReference");
        assert!(ambiguous.message().contains("ada, bob"));
    }

    #[test]
    fn properties_from_are_evaluated_over_refs_and_merged() {
        let refs = json!({"customer": {"externalId": "cus-1", "observed": {"email": "a@b"}}});
        let from: BTreeMap<String, String> = [
            ("customerId".to_owned(), ".refs.customer.externalId".to_owned()),
            ("contact".to_owned(), ".refs.customer.observed.email".to_owned()),
        ]
        .into();
        let desired = desired_properties(&json!({"total": 3}), &from, &refs);
        assert_eq!(
            desired,
            Ok(json!({"total": 3, "customerId": "cus-1", "contact": "a@b"}))
        );
        let bad: BTreeMap<String, String> = [("x".to_owned(), ".refs.customer.externalId +".to_owned())].into();
        let Err(error) = desired_properties(&json!({}), &bad, &refs) else {
            panic!("a bad expression must fail")
        };
        assert!(error.to_string().contains("spec.propertiesFrom.x"));
    }

    #[test]
    fn cycles_are_found_and_named_and_chains_are_not_cycles() {
        let graph: BTreeMap<&str, Vec<&str>> =
            [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])].into();
        let edges = |n: &str| -> BTreeSet<String> {
            graph
                .get(n)
                .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            find_cycle("a", edges),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(find_cycle("d", edges), None, "d leads into a cycle but is not on it");
        let itself = |_: &str| -> BTreeSet<String> { ["self".to_owned()].into() };
        assert_eq!(find_cycle("self", itself), Some(vec!["self".into(), "self".into()]));
    }

    #[test]
    fn deletion_waits_for_dependents_unless_the_object_is_orphaned() {
        let ada = ready(er("ada", json!({})), "cus-1");
        let order = er("order", json!({"customer": {"name": "ada"}}));
        let other = er("other", json!({"customer": {"name": "bob"}}));
        let held = dependents(&ada, [&ada, &order, &other]);
        assert_eq!(held, vec!["order".to_owned()]);
        assert!(deletion_waits(&ada, &held));
        assert!(!deletion_waits(&ada, &[]));
        let mut orphan = ada.clone();
        orphan.spec.deletion_policy = crate::api::external_resource::DeletionPolicy::Orphan;
        assert!(!deletion_waits(&orphan, &held));
        let never_created = er("ada", json!({}));
        assert!(!deletion_waits(&never_created, &held));
    }

    #[test]
    fn the_index_wakes_dependents_and_on_deletion_the_referenced() {
        let index = ReferenceIndex::default();
        let order = er("order", json!({"customer": {"name": "ada"}}));
        assert!(index.affected(&order).is_empty(), "nothing references the order");
        let ada = er("ada", json!({}));
        assert_eq!(index.affected(&ada), vec![ObjectRef::new("order").within("shop")]);
        let mut deleting = order.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(index.affected(&deleting), vec![ObjectRef::new("ada").within("shop")]);
        let moved = er("order", json!({"customer": {"name": "bob"}}));
        index.affected(&moved);
        assert!(index.affected(&ada).is_empty(), "the old reference is forgotten");
        let bob = er("bob", json!({}));
        assert_eq!(index.affected(&bob).len(), 1);
        let mut gone = moved.clone();
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(index.affected(&gone), vec![ObjectRef::new("bob").within("shop")]);
        assert!(index.affected(&bob).is_empty(), "a deleted dependent is forgotten");
    }

    #[test]
    fn the_index_keeps_nothing_for_objects_without_references_and_forgets_the_deleted() {
        let index = ReferenceIndex::default();
        for i in 0..100 {
            index.affected(&er(&format!("plain-{i}"), json!({})));
        }
        assert!(index.is_empty(), "100 resources that reference nothing cost nothing");
        let order = er("order", json!({"customer": {"name": "ada"}}));
        let picky = er(
            "picky",
            json!({"customer": {"selector": {"matchLabels": {"tier": "gold"}}}}),
        );
        index.affected(&order);
        index.affected(&picky);
        assert!(!index.is_empty());
        // Deleted while the watch was away: no last event, a relist reports it.
        index.forget(&order);
        index.forget(&picky);
        assert!(index.is_empty(), "forgotten: {}", index.len());
    }
}
