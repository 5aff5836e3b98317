//! Reconciling an ExternalResource: resolve (stores) -> look up (target) ->
//! decide ([`plan`], pure) -> act (target) -> status ([`status`], pure) ->
//! write status (API server, only when it changed).
//!
//! The create protocol that prevents zombies: the intent (an idempotency
//! key) is written to status, conditional on the resourceVersion this
//! reconcile read, *before* the create request leaves. If the answer is
//! lost or the controller dies, the next reconcile finds the intent and
//! adopts the object (`find`), or resends with the same key. A stale leader
//! fails the conditional write and never sends the create.

pub mod plan;
pub mod polls;
pub mod references;
pub mod secrets;
pub mod status;
pub mod sync;

use crate::api::common::event;
use crate::controller::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{Awaits, Context, EXTERNAL_RESOURCE_FINALIZER, Failure, Freshness, RESYNC_ANNOTATION, lock};
use crate::adapter::{Deletion, ExternalSystem, ObjectRequest, Observation};
use crate::api::ExternalResource;
use crate::api::external_resource::{DeletionPolicy, ExternalResourceSpec, ExternalResourceStatus, ManagementPolicy};
use references::Unresolved;
use status::Outcome;
use sync::{Claim, Effects, Note, Synced};

pub const KIND: &str = "ExternalResource";
/// Reason of a resource that waits for a reference to be Ready.
pub const WAITING_FOR_REFERENCE: &str = "WaitingForReference";
/// How long a pass that looked the name up and saw its create refused
/// spares the next pass a second lookup.
const REFUSED_CREATE_MEMORY: Duration = Duration::from_secs(120);

/// Entry point for the controller: apply or clean up, through the
/// finalizer helper.
pub async fn reconcile(er: Arc<ExternalResource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = er.namespace().unwrap_or_default();
    let api: Api<ExternalResource> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer::finalizer(&api, EXTERNAL_RESOURCE_FINALIZER, er, |event| async {
        match event {
            Finalizer::Apply(er) => apply(&er, &ctx).await,
            Finalizer::Cleanup(er) => cleanup(&er, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    result
}

/// Requeue after a failure the reconcile could not turn into a condition.
pub fn error_policy(er: Arc<ExternalResource>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale_read() {
        tracing::debug!(name = %er.name_any(), error = %error, "stale read; retrying with fresh data");
        return Action::requeue(crate::http::backoff::jittered(
            Duration::from_millis(200),
            Duration::from_secs(1),
            1,
        ));
    }
    ctx.metrics.reconcile_error(KIND, error.label());
    if error.waits_for_dependents() {
        // Waiting for dependents is the expected order, not a failure: the
        // watch event of the last dependent's deletion wakes this one.
        tracing::debug!(name = %er.name_any(), error = %error, "deletion waits for dependents");
        return Action::requeue(Duration::from_secs(30));
    }
    tracing::warn!(name = %er.name_any(), namespace = ?er.namespace(), error = %error, "reconcile failed");
    let policy = target_policy(&ctx, &er);
    Action::requeue(ctx.backoff_by(&key(&er), &Failure::missing(error.label(), String::new()), &policy))
}

/// The key of what is kept per resource (its UID).
pub(crate) fn key(er: &ExternalResource) -> String {
    er.uid()
        .unwrap_or_else(|| format!("{}/{}", er.namespace().unwrap_or_default(), er.name_any()))
}

/// The natural key: `spec.externalName`, default `<namespace>-<name>`.
pub fn external_name(er: &ExternalResource) -> String {
    er.spec
        .external_name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", er.namespace().unwrap_or_default(), er.name_any()))
}

/// The backoff of the resource's TargetSystem (`spec.retry`), or the
/// default when it is not known.
fn target_policy(ctx: &Context, er: &ExternalResource) -> super::Backoff {
    ctx.target_system(&er.namespace().unwrap_or_default(), &er.spec.target_ref.name)
        .map_or_else(super::Backoff::default, |ts| super::Backoff::of(&ts.spec.retry))
}

fn poll_interval(er: &ExternalResource) -> Duration {
    er.spec
        .poll_interval
        .to_std()
        .unwrap_or(Duration::from_secs(300))
        .max(Duration::from_secs(1))
}

/// The ExternalResource's status writer (conditional on the resourceVersion).
type StatusWriter<'a> = super::status::StatusWriter<'a, ExternalResource, ExternalResourceStatus>;

fn status_writer<'a>(er: &ExternalResource, ctx: &'a Context) -> StatusWriter<'a> {
    let api = Api::namespaced(ctx.client.clone(), &er.namespace().unwrap_or_default());
    StatusWriter::new(ctx, api, er, KIND, er.full_status())
}

async fn apply(er: &ExternalResource, ctx: &Context) -> Result<Action, Error> {
    let namespace = er.namespace().unwrap_or_default();
    let resolution = resolve_references(er, ctx).await;
    let references_hash = (!er.spec.references.is_empty()).then(|| match &resolution {
        Ok(refs) => crate::diff::hash(refs),
        Err(unresolved) => crate::diff::hash(&serde_json::Value::String(unresolved.message())),
    });
    let target = ctx.target_system(&namespace, &er.spec.target_ref.name);
    let adapter_generation = target
        .as_ref()
        .and_then(|ts| ctx.adapter(&ts.spec.adapter_ref.name))
        .and_then(|a| a.metadata.generation);
    let freshness = Freshness {
        generation: er.metadata.generation,
        resync: er.annotations().get(RESYNC_ANNOTATION).cloned(),
        dependencies: (target.as_ref().and_then(|t| t.metadata.generation), adapter_generation),
        references: references_hash,
        due: None,
    };
    match still_fresh(ctx, er, &freshness) {
        Some(Duration::MAX) => return Ok(Action::await_change()),
        // Booked when the pass that set it ended (see `next_pass`).
        Some(wait) if wait >= polls::BOOKED_FROM => return Ok(Action::await_change()),
        Some(wait) => return Ok(Action::requeue(wait)),
        None => {}
    }

    let mut writer = status_writer(er, ctx);
    // Spared one lookup at most: a pass that did not look records nothing.
    let refused_just_now = lock(&ctx.resource_memory.refused_creates)
        .remove(&key(er))
        .is_some_and(|at| at.elapsed() < REFUSED_CREATE_MEMORY);
    // Nothing is sent to the target before every reference is Ready.
    let prepared = match resolution {
        Ok(refs) => prepare(er, ctx, &refs).await,
        Err(unresolved) => Err(unresolved_failure(&unresolved)),
    };
    let desired = prepared.as_ref().map_or_else(|_| er.spec.clone(), |p| p.spec.clone());
    let result = match (prepared, target) {
        (Err(failure), _) => Err(failure),
        (Ok(_), None) => Err(Failure::missing(
            "TargetNotFound",
            format!(
                "TargetSystem {:?} does not exist in namespace {namespace}",
                er.spec.target_ref.name
            ),
        )),
        (Ok(prepared), Some(ts)) => match ctx.adapter_for(&ts).await {
            Ok(adapter) => {
                let current = writer.current.clone();
                match sync::sync(
                    &adapter,
                    sync::Input {
                        spec: &prepared.spec,
                        sent: &prepared.sent,
                        external_name: &external_name(er),
                        status: current.as_ref(),
                        generation: er.metadata.generation,
                        fresh_key: format!("{}-{}", key(er), uuid::Uuid::new_v4().simple()),
                        refused_just_now,
                    },
                    &mut Live {
                        er,
                        ctx,
                        writer: &mut writer,
                    },
                )
                .await?
                {
                    Ok(synced) => keep_secrets(ctx, er, synced.redacted(&prepared.hide)).await,
                    Err(failure) => Err(Failure {
                        message: prepared.hide.redact(&failure.message),
                        ..failure
                    }),
                }
            }
            Err(failure) => Err(failure),
        },
    };
    let outcome_label = match &result {
        Ok(synced) => synced.label(),
        Err(failure) => failure.reason,
    };
    let now = Utc::now();
    let (next, action) = match result {
        Ok(synced) => {
            ctx.succeeded(&key(er));
            let delay = poll_interval(er);
            let due = Instant::now() + delay;
            remember(
                ctx,
                er,
                Freshness {
                    due: Some(due),
                    ..freshness
                },
            );
            let next = status::compute(
                writer.current.as_ref(),
                &desired,
                er.metadata.generation,
                &synced.outcome(),
                now,
            );
            (next, next_pass(ctx, er, Some((delay, due))))
        }
        Err(failure) => {
            if failure.create_not_applied && !refused_just_now {
                lock(&ctx.resource_memory.refused_creates).insert(key(er), Instant::now());
            }
            // Our own status write must not wake this up before it is due:
            // a permanent failure waits for a change, a transient one for
            // its backoff. Waiting for a reference is neither: the watch
            // event of the referenced object wakes it (its hash is part of
            // the freshness), the poll interval is only a safety net.
            let delay = if failure.awaits == Awaits::Reference {
                Some(poll_interval(er))
            } else {
                // The TargetSystem's `spec.retry` spaces the retries of
                // calls to it.
                let policy = target_policy(ctx, er);
                (!failure.permanent).then(|| ctx.backoff_by(&key(er), &failure, &policy))
            };
            let delay = delay.map(|d| (d, Instant::now() + d));
            let due = delay.map(|(_, due)| due);
            remember(ctx, er, Freshness { due, ..freshness });
            ctx.metrics.reconcile_error(KIND, failure.reason);
            let previous_reason = writer
                .current
                .as_ref()
                .and_then(|s| crate::conditions::find(&s.conditions, crate::api::common::condition::SYNCED))
                .map(|c| c.reason.clone());
            if previous_reason.as_deref() != Some(failure.reason) {
                ctx.publish(
                    er,
                    EventType::Warning,
                    failure.reason,
                    "Reconcile",
                    failure.message.clone(),
                )
                .await;
            }
            let action = next_pass(ctx, er, delay);
            let outcome = Outcome::Failed {
                reason: failure.reason,
                message: failure.message,
                permanent: failure.permanent,
                create_not_applied: failure.create_not_applied,
            };
            (
                status::compute(writer.current.as_ref(), &er.spec, er.metadata.generation, &outcome, now),
                action,
            )
        }
    };
    writer.write(next).await?;
    tracing::debug!(name = %er.name_any(), outcome = %outcome_label, ?action, "reconciled");
    Ok(action)
}

/// The references of `er` resolved from the store; a reference that the
/// store shows missing or not Ready is read again from the API server (the
/// watch event that woke this pass may be ahead of the store). Cycles are
/// checked first: a cycle would otherwise wait forever.
async fn resolve_references(er: &ExternalResource, ctx: &Context) -> Result<serde_json::Value, Unresolved> {
    if er.spec.references.is_empty() {
        return Ok(serde_json::json!({}));
    }
    let namespace = er.namespace().unwrap_or_default();
    let all = ctx.resources.state();
    let mut candidates: Vec<Arc<ExternalResource>> = all
        .iter()
        .filter(|other| other.namespace().as_deref() == Some(namespace.as_str()))
        .cloned()
        .collect();
    let by_name = |name: &str, list: &[Arc<ExternalResource>]| -> std::collections::BTreeSet<String> {
        list.iter()
            .find(|o| o.name_any() == name)
            .map(|o| references::referenced_names(o, list.iter().map(AsRef::as_ref)))
            .unwrap_or_default()
    };
    let me = er.name_any();
    let edges = |name: &str| {
        if name == me {
            references::referenced_names(er, candidates.iter().map(AsRef::as_ref))
        } else {
            by_name(name, &candidates)
        }
    };
    if let Some(cycle) = references::find_cycle(&me, edges) {
        return Err(Unresolved::Cycle(cycle));
    }
    match references::resolve(er, candidates.iter().map(AsRef::as_ref)) {
        Err(Unresolved::Waiting(_)) => {}
        resolved => return resolved,
    }
    let api: Api<ExternalResource> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in er.spec.references.values().filter_map(|r| r.name.as_ref()) {
        if let Ok(Some(fresh)) = api.get_opt(name).await {
            candidates.retain(|o| o.name_any() != *name);
            candidates.push(Arc::new(fresh));
        }
    }
    references::resolve(er, candidates.iter().map(AsRef::as_ref))
}

fn unresolved_failure(unresolved: &Unresolved) -> Failure {
    let failure = if unresolved.is_permanent() {
        Failure::permanent
    } else {
        Failure::missing
    };
    let failure = failure(unresolved.reason(), unresolved.message());
    match unresolved {
        Unresolved::Waiting(_) => Failure {
            awaits: Awaits::Reference,
            ..failure
        },
        _ => failure,
    }
}

/// The spec as this pass sees it (properties with `propertiesFrom`
/// resolved, compared and recorded) and what is sent (those plus the
/// secret properties, which are never compared or recorded).
struct Prepared {
    spec: ExternalResourceSpec,
    sent: serde_json::Value,
    /// Redacts the secret properties' values from what the target answers
    /// (an error that echoes the request, an observed field).
    hide: crate::http::auth::Redactor,
}

async fn prepare(er: &ExternalResource, ctx: &Context, refs: &serde_json::Value) -> Result<Prepared, Failure> {
    let properties =
        crate::expr::in_turn(|| references::desired_properties(&er.spec.properties, &er.spec.properties_from, refs))
            .await
            .map_err(|e| Failure::permanent("ExpressionError", e.to_string()))?;
    let mut sent = properties.clone();
    let secret_values = secrets::read_properties(ctx, er).await?;
    if let serde_json::Value::Object(map) = &mut sent {
        // A key in both would send the secret under a name that is
        // compared and recorded in status.observed.
        if let Some(key) = secret_values.keys().find(|k| map.contains_key(k.as_str())) {
            return Err(Failure::permanent(
                "SecretPropertyOverlap",
                format!("{key:?} is both in properties and in secretProperties: name it in one of them"),
            ));
        }
        map.extend(secret_values.clone());
    }
    let hide = crate::http::auth::Redactor::new(
        secret_values
            .values()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
    );
    let spec = ExternalResourceSpec {
        properties,
        ..er.spec.clone()
    };
    Ok(Prepared { spec, sent, hide })
}

/// Writes the answer's secret fields to the resource's Secret.
async fn keep_secrets(ctx: &Context, er: &ExternalResource, synced: Synced) -> Result<Synced, Failure> {
    let object = match &synced {
        Synced::Object { object, .. } | Synced::Drift { object, .. } => object,
        Synced::NotFound | Synced::Conflict { .. } => return Ok(synced),
    };
    secrets::write(ctx, er, &object.secrets).await?;
    Ok(synced)
}

/// The action that waits for the next pass, due after `delay` at `due`
/// (`None`: only a change makes it due). A long wait is booked with
/// [`polls::Polls`] at exactly the due time the freshness records, and the
/// controller's scheduler keeps nothing; a short one (a backoff) is the
/// scheduler's.
fn next_pass(ctx: &Context, er: &ExternalResource, delay: Option<(Duration, Instant)>) -> Action {
    match delay {
        None => Action::await_change(),
        Some((delay, due)) if delay >= polls::BOOKED_FROM => {
            let namespace = er.namespace().unwrap_or_default();
            ctx.resource_memory.polls.book(&namespace, &er.name_any(), due);
            Action::await_change()
        }
        Some((delay, _)) => Action::requeue(delay),
    }
}

/// Records the freshness of `er`'s last pass, and unbooks the poll booked
/// for the pass before (the wheel holds one entry per resource).
fn remember(ctx: &Context, er: &ExternalResource, freshness: Freshness) {
    let previous = lock(&ctx.resource_memory.fresh).insert(key(er), freshness);
    unbook(ctx, er, previous);
}

/// Forgets the freshness of `er` and unbooks its next poll: its next pass
/// is due at once, or it is gone.
pub fn forget_freshness(ctx: &Context, er: &ExternalResource) {
    let previous = lock(&ctx.resource_memory.fresh).remove(&key(er));
    unbook(ctx, er, previous);
}

fn unbook(ctx: &Context, er: &ExternalResource, previous: Option<Freshness>) {
    if let Some(due) = previous.and_then(|f| f.due) {
        let namespace = er.namespace().unwrap_or_default();
        ctx.resource_memory.polls.unbook(&namespace, &er.name_any(), due);
    }
}

/// Wakes `namespace`/`name` for a booked poll, unless a later pass was
/// booked since (the resource was reconciled again) or it is gone; false
/// when the controller is gone.
pub fn wake_booked(ctx: &Context, namespace: &str, name: &str) -> bool {
    let reference = ObjectRef::new(name).within(namespace);
    let Some(er) = ctx.resources.get(&reference) else {
        return true;
    };
    let due = lock(&ctx.resource_memory.fresh).get(&key(&er)).and_then(|f| f.due);
    if due.is_some_and(|due| due > Instant::now()) {
        return true;
    }
    ctx.resync.send(reference)
}

fn still_fresh(ctx: &Context, er: &ExternalResource, now: &Freshness) -> Option<Duration> {
    lock(&ctx.resource_memory.fresh)
        .get(&key(er))?
        .wait(now, Instant::now())
}

/// Records in status why a deletion waits (a transient failure: it is
/// retried, and the finalizer holds meanwhile).
async fn record_deletion_wait(
    er: &ExternalResource,
    ctx: &Context,
    reason: &'static str,
    message: String,
) -> Result<(), Error> {
    let mut writer = status_writer(er, ctx);
    let outcome = Outcome::Failed {
        reason,
        message,
        permanent: false,
        create_not_applied: false,
    };
    let next = status::compute(
        writer.current.as_ref(),
        &er.spec,
        er.metadata.generation,
        &outcome,
        Utc::now(),
    );
    writer.write(next).await.map(drop)
}

/// Another live ExternalResource of the same namespace, target and type.
fn is_rival(er: &ExternalResource, other: &ExternalResource) -> bool {
    other.uid() != er.uid()
        && other.namespace() == er.namespace()
        && other.spec.target_ref == er.spec.target_ref
        && other.spec.type_ == er.spec.type_
        && other.meta().deletion_timestamp.is_none()
}

fn older(a: &ExternalResource, b: &ExternalResource) -> bool {
    (a.creation_timestamp(), a.name_any()) < (b.creation_timestamp(), b.name_any())
}

/// Whether `other` already manages the object `id` rather than `er`: it
/// holds the id in status and is older than `er` (or `er` does not hold it
/// yet). Pure, shared by the reconcile (over the store) and `tether plan`.
pub fn claims_id(er: &ExternalResource, other: &ExternalResource, id: &str) -> bool {
    let mine = er.status.as_ref().and_then(|s| s.external_id.as_deref()) == Some(id);
    let Some(status) = other.status.as_ref() else {
        return false;
    };
    status.external_id.as_deref() == Some(id)
        && is_rival(er, other)
        && !crate::conditions::is_true(&status.conditions, status::CONFLICT)
        && (!mine || older(other, er))
}

/// Whether `other` is an older ExternalResource that declares the external
/// name `name` (checked only before a create). Pure.
pub fn claims_name(er: &ExternalResource, other: &ExternalResource, name: &str) -> bool {
    other.spec.external_name.as_deref() == Some(name) && is_rival(er, other) && older(other, er)
}

/// `namespace/name` of a claimant.
pub fn owner_name(other: &ExternalResource) -> String {
    format!("{}/{}", other.namespace().unwrap_or_default(), other.name_any())
}

/// The ExternalResource that already manages the object `id`, if another
/// one does ([`claims_id`]). Scans the store in place (no copies): this
/// runs on every reconcile.
fn claim_on_id(ctx: &Context, er: &ExternalResource, id: &str) -> Option<String> {
    ctx.resources
        .find(|other| claims_id(er, other, id))
        .map(|other| owner_name(&other))
}

/// The older ExternalResource that declares the same external name, if any
/// ([`claims_name`]).
fn claim_on_name(ctx: &Context, er: &ExternalResource, name: &str) -> Option<String> {
    ctx.resources
        .find(|other| claims_name(er, other, name))
        .map(|other| owner_name(&other))
}

async fn cleanup(er: &ExternalResource, ctx: &Context) -> Result<Action, Error> {
    let action = cleanup_target(er, ctx).await?;
    secrets::remove(ctx, er)
        .await
        .map_err(|failure| Error::SecretCleanup(failure.message))?;
    Ok(action)
}

/// The ExternalResources that still reference `er`: from the store, each
/// confirmed by the API server (the store may still hold one whose
/// deletion woke this pass).
async fn dependents(er: &ExternalResource, ctx: &Context) -> Vec<String> {
    let all = ctx.resources.state();
    let listed = references::dependents(er, all.iter().map(AsRef::as_ref));
    if listed.is_empty() {
        return listed;
    }
    let api: Api<ExternalResource> = Api::namespaced(ctx.client.clone(), &er.namespace().unwrap_or_default());
    let mut confirmed = Vec::new();
    for name in listed {
        match api.get_opt(&name).await {
            Ok(None) => {}
            // Still there, or unknown: assume it is, and hold.
            Ok(Some(_)) | Err(_) => confirmed.push(name),
        }
    }
    confirmed
}

async fn cleanup_target(er: &ExternalResource, ctx: &Context) -> Result<Action, Error> {
    forget_freshness(ctx, er);
    lock(&ctx.resource_memory.refused_creates).remove(&key(er));
    if er.spec.deletion_policy == DeletionPolicy::Orphan || er.spec.management_policy == ManagementPolicy::ObserveOnly {
        let id = er
            .status
            .as_ref()
            .and_then(|s| s.external_id.clone())
            .unwrap_or_else(|| "the external object".into());
        ctx.publish(
            er,
            EventType::Normal,
            event::ORPHANED,
            "Delete",
            format!("left {id} in place (deletionPolicy/managementPolicy)"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let namespace = er.namespace().unwrap_or_default();
    let status = er.status.clone().unwrap_or_default();
    if status.external_id.is_none() && status.pending_create.is_none() {
        return Ok(Action::await_change()); // nothing was ever created
    }
    let blocked = |failure: Failure| async move {
        let message = format!(
            "{}; restore it, or set deletionPolicy: Orphan to let the ExternalResource go",
            failure.message
        );
        record_deletion_wait(er, ctx, "DeletionBlocked", message.clone()).await?;
        Err::<Action, Error>(Error::DeletionBlocked(message))
    };
    let held = dependents(er, ctx).await;
    if references::deletion_waits(er, &held) {
        let names = held.join(", ");
        let message = format!(
            "still referenced by {names}: deleted at the target once they are gone (a target with a relation would refuse it before)"
        );
        let previous = er
            .status
            .as_ref()
            .and_then(|s| crate::conditions::find(&s.conditions, crate::api::common::condition::SYNCED))
            .map(|c| c.message.clone());
        if previous.as_deref() != Some(message.as_str()) {
            ctx.publish(
                er,
                EventType::Normal,
                event::WAITING_FOR_DEPENDENTS,
                "Delete",
                message.clone(),
            )
            .await;
        }
        record_deletion_wait(er, ctx, "InUse", message).await?;
        return Err(Error::InUse(names));
    }
    let Some(ts) = ctx.target_system(&namespace, &er.spec.target_ref.name) else {
        return blocked(Failure::permanent(
            "TargetNotFound",
            format!("TargetSystem {:?} does not exist", er.spec.target_ref.name),
        ))
        .await;
    };
    let adapter = match ctx.adapter_for(&ts).await {
        Ok(adapter) => adapter,
        Err(failure) => return blocked(failure).await,
    };
    let name = external_name(er);
    let mut request = ObjectRequest {
        resource_type: &er.spec.type_,
        external_id: None,
        external_name: &name,
        properties: &er.spec.properties,
        idempotency_key: None,
    };
    let found_id;
    match status.external_id.as_deref() {
        Some(id) => request.external_id = Some(id),
        // A create of unknown outcome may have left an object: find it, so
        // deleting the ExternalResource never leaks it.
        None => match adapter.find(&request).await {
            Ok(Observation::Present(object)) => {
                found_id = object.id;
                request.external_id = Some(&found_id);
            }
            Ok(Observation::Absent) => return Ok(Action::await_change()),
            Err(e) => return blocked(e.into()).await,
        },
    }
    match adapter.delete(&request).await {
        Ok(result) => {
            let id = request.external_id.unwrap_or_default();
            let note = match result {
                Deletion::Deleted => format!("deleted {id}"),
                Deletion::AlreadyGone => format!("{id} was already gone"),
            };
            ctx.publish(er, EventType::Normal, event::DELETED, "Delete", note).await;
            ctx.succeeded(&key(er));
            Ok(Action::await_change())
        }
        Err(e) => blocked(e.into()).await,
    }
}

/// Makes the next pass of `er` call its target whatever its freshness (a
/// signed resync push), and wakes it through the controller's trigger
/// stream. Memory only: no API call.
pub fn request_resync(ctx: &Context, er: &ExternalResource) -> bool {
    forget_freshness(ctx, er);
    ctx.resync.send(kube::runtime::reflector::ObjectRef::from_obj(er))
}

/// The ExternalResources that reference a TargetSystem (to reconcile them
/// when it changes).
pub fn referencing(
    resources: &[Arc<ExternalResource>],
    namespace: &str,
    target: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<ExternalResource>> {
    resources
        .iter()
        .filter(|er| er.namespace().as_deref() == Some(namespace) && er.spec.target_ref.name == target)
        .map(|er| kube::runtime::reflector::ObjectRef::from_obj(er.as_ref()))
        .collect()
}

/// The effects of a sync on the cluster: the intent through the status
/// writer, Events through the recorder, claims from the store.
struct Live<'a, 'w> {
    er: &'a ExternalResource,
    ctx: &'a Context,
    writer: &'w mut StatusWriter<'a>,
}

impl Effects for Live<'_, '_> {
    fn claimed_by(&self, claim: Claim<'_>) -> Option<String> {
        match claim {
            Claim::Id(id) => claim_on_id(self.ctx, self.er, id),
            Claim::Name(name) => claim_on_name(self.ctx, self.er, name),
        }
    }

    async fn write_intent(&mut self, status: ExternalResourceStatus) -> Result<(), Error> {
        self.writer.write(status).await.map(drop)
    }

    async fn event(&self, note: Note) {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.ctx
            .publish(self.er, type_, note.reason, note.action, note.text)
            .await;
    }
}
