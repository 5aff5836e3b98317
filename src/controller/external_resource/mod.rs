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
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Resource, ResourceExt};

use super::{Context, EXTERNAL_RESOURCE_FINALIZER, Failure, Freshness, RESYNC_ANNOTATION, lock};
use crate::adapter::{AnyAdapter, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation};
use crate::api::ExternalResource;
use crate::api::external_resource::{DeletionPolicy, ExternalResourceStatus, ManagementPolicy};
use plan::{Decision, Facts, Lookup};
use status::Outcome;

pub const KIND: &str = "ExternalResource";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of {name}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete the external object yet: {0}")]
    DeletionBlocked(String),
    #[error(transparent)]
    Finalizer(#[from] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The write lost a race with a newer version of the object (409 on a
    /// conditional write, 422 on the finalizer's test-and-add patch): the
    /// cache was behind. Not a failure: retry soon with fresh data.
    pub fn is_stale_read(&self) -> bool {
        let code = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self {
            Error::WriteStatus { source, .. } => code(source),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => code(e),
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.is_stale_read(),
                _ => false,
            },
            Error::DeletionBlocked(_) => false,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Error::WriteStatus { .. } => "WriteStatusFailed",
            Error::DeletionBlocked(_) => "DeletionBlocked",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}

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
        return Action::requeue(crate::target::backoff::jittered(
            Duration::from_millis(200),
            Duration::from_secs(1),
            1,
        ));
    }
    ctx.metrics.reconcile_error(KIND, error.reason());
    tracing::warn!(name = %er.name_any(), namespace = ?er.namespace(), error = %error, "reconcile failed");
    let failure = Failure {
        reason: error.reason(),
        message: String::new(),
        permanent: false,
        retry_after: None,
        create_not_applied: false,
    };
    Action::requeue(ctx.backoff(&key(&er), &failure))
}

fn key(er: &ExternalResource) -> String {
    er.uid()
        .unwrap_or_else(|| format!("{}/{}", er.namespace().unwrap_or_default(), er.name_any()))
}

fn external_name(er: &ExternalResource) -> String {
    er.spec
        .external_name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", er.namespace().unwrap_or_default(), er.name_any()))
}

fn poll_interval(er: &ExternalResource) -> Duration {
    er.spec
        .poll_interval
        .to_std()
        .unwrap_or(Duration::from_secs(300))
        .max(Duration::from_secs(1))
}

/// Writes status with server-side apply, conditional on the resourceVersion
/// last seen, and only when it changed.
struct StatusWriter<'a> {
    api: Api<ExternalResource>,
    er: &'a ExternalResource,
    resource_version: Option<String>,
    current: Option<ExternalResourceStatus>,
    ctx: &'a Context,
}

impl<'a> StatusWriter<'a> {
    fn new(er: &'a ExternalResource, ctx: &'a Context) -> Self {
        Self {
            api: Api::namespaced(ctx.client.clone(), &er.namespace().unwrap_or_default()),
            er,
            resource_version: er.resource_version(),
            current: er.status.clone(),
            ctx,
        }
    }

    async fn write(&mut self, next: ExternalResourceStatus) -> Result<(), Error> {
        if !status::differs(self.current.as_ref(), &next) {
            return Ok(());
        }
        let written = self
            .ctx
            .apply_status_at(
                &self.api,
                &self.er.name_any(),
                KIND,
                self.resource_version.as_deref(),
                &next,
            )
            .await
            .map_err(|source| Error::WriteStatus {
                name: self.er.name_any(),
                source,
            })?;
        self.resource_version = written;
        self.current = Some(next);
        Ok(())
    }
}

async fn apply(er: &ExternalResource, ctx: &Context) -> Result<Action, Error> {
    let namespace = er.namespace().unwrap_or_default();
    let target = ctx.target_system(&namespace, &er.spec.target_ref.name);
    let adapter_generation = target
        .as_ref()
        .and_then(|ts| ctx.adapter(&ts.spec.adapter_ref.name))
        .and_then(|a| a.metadata.generation);
    let freshness = Freshness {
        generation: er.metadata.generation,
        resync: er.annotations().get(RESYNC_ANNOTATION).cloned(),
        dependencies: (target.as_ref().and_then(|t| t.metadata.generation), adapter_generation),
        due: None,
    };
    match still_fresh(ctx, er, &freshness) {
        Some(Duration::MAX) => return Ok(Action::await_change()),
        Some(wait) => return Ok(Action::requeue(wait)),
        None => {}
    }

    let mut writer = StatusWriter::new(er, ctx);
    let result = match target {
        None => Err(Failure::missing(
            "TargetNotFound",
            format!(
                "TargetSystem {:?} does not exist in namespace {namespace}",
                er.spec.target_ref.name
            ),
        )),
        Some(ts) => match ctx.adapter_for(&ts).await {
            Ok(adapter) => sync(er, ctx, &adapter, &mut writer).await?,
            Err(failure) => Err(failure),
        },
    };
    let outcome_label = match &result {
        Ok(Synced::Object { how, .. }) => (*how).to_owned(),
        Ok(Synced::Drift { .. }) => "DriftReported".to_owned(),
        Ok(Synced::NotFound) => "NotFound".to_owned(),
        Ok(Synced::Conflict { .. }) => "Conflict".to_owned(),
        Err(failure) => failure.reason.to_owned(),
    };
    let now = Utc::now();
    let (next, action) = match result {
        Ok(synced) => {
            ctx.succeeded(&key(er));
            let due = Some(Instant::now() + poll_interval(er));
            lock(&ctx.fresh).insert(key(er), Freshness { due, ..freshness });
            let next = status::compute(
                writer.current.as_ref(),
                &er.spec,
                er.metadata.generation,
                &synced.outcome(),
                now,
            );
            (next, Action::requeue(poll_interval(er)))
        }
        Err(failure) => {
            // Our own status write must not wake this up before it is due:
            // a permanent failure waits for a change, a transient one for
            // its backoff.
            let delay = (!failure.permanent).then(|| ctx.backoff(&key(er), &failure));
            let due = delay.map(|d| Instant::now() + d);
            lock(&ctx.fresh).insert(key(er), Freshness { due, ..freshness });
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
            let action = delay.map_or_else(Action::await_change, Action::requeue);
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

fn still_fresh(ctx: &Context, er: &ExternalResource, now: &Freshness) -> Option<Duration> {
    lock(&ctx.fresh).get(&key(er))?.wait(now, Instant::now())
}

/// What a successful sync ended with (owned, for status and events).
enum Synced {
    Object {
        object: ExternalObject,
        how: &'static str,
    },
    Drift {
        object: ExternalObject,
        drifted: Vec<String>,
    },
    NotFound,
    Conflict {
        id: String,
        owner: String,
    },
}

impl Synced {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Synced::Object { object, how } => Outcome::Synced { object, how },
            Synced::Drift { object, drifted } => Outcome::DriftReported { object, drifted },
            Synced::NotFound => Outcome::NotFound,
            Synced::Conflict { id, owner } => Outcome::Conflict { id, owner },
        }
    }
}

async fn sync(
    er: &ExternalResource,
    ctx: &Context,
    adapter: &AnyAdapter,
    writer: &mut StatusWriter<'_>,
) -> Result<Result<Synced, Failure>, Error> {
    let spec = &er.spec;
    let status = writer.current.clone();
    let name = external_name(er);
    let request = |id, key| object_request(er, &name, id, key);
    let lookup = plan::lookup(spec, status.as_ref(), adapter.can_find(&spec.type_));
    let observation = match &lookup {
        Lookup::ById(id) => adapter.observe(&request(Some(id), None)).await,
        Lookup::Find => adapter.find(&request(None, None)).await,
        Lookup::ResendCreate(_) | Lookup::Nothing => Ok(Observation::Absent),
    };
    let observation = match observation {
        Ok(observation) => observation,
        Err(e) => return Ok(Err(e.into())),
    };
    let owned_id = status.as_ref().and_then(|s| s.external_id.clone());
    let claimed_by = match &observation {
        Observation::Present(object) => claim_on_id(ctx, er, &object.id),
        Observation::Absent => claim_on_name(ctx, er, &name),
    };
    let decision = plan::decide(
        spec,
        observation,
        Facts {
            status: status.as_ref(),
            claimed_by,
            can_update: adapter.can_update(&spec.type_),
            fresh_key: format!("{}-{}", key(er), uuid::Uuid::new_v4().simple()),
        },
    );
    let adopted = |object: &ExternalObject| owned_id.as_deref() != Some(object.id.as_str());
    Ok(Ok(match decision {
        Decision::InSync { object } => {
            let how = if adopted(&object) { "Adopted" } else { "InSync" };
            if how == "Adopted" {
                ctx.publish(
                    er,
                    EventType::Normal,
                    "Adopted",
                    "Adopt",
                    format!("adopted existing object {}", object.id),
                )
                .await;
            }
            Synced::Object { object, how }
        }
        Decision::Correct { mut object, drifted } => {
            match adapter.update(&request(Some(&object.id), None)).await {
                Ok(state) => object.state = state.unwrap_or_else(|| spec.properties.clone()),
                Err(e) => return Ok(Err(e.into())),
            }
            let note = format!("corrected {} on {}", drifted.join(", "), object.id);
            let reason = if adopted(&object) { "Adopted" } else { "DriftCorrected" };
            ctx.publish(er, EventType::Normal, reason, "Update", note).await;
            Synced::Object { object, how: "Updated" }
        }
        Decision::Report { object, drifted } => {
            let known = status.as_ref().map(|s| s.drifted_fields.clone()).unwrap_or_default();
            if known != drifted {
                let note = format!("{} differs at {}", object.id, drifted.join(", "));
                ctx.publish(er, EventType::Warning, "DriftDetected", "Observe", note)
                    .await;
            }
            Synced::Drift { object, drifted }
        }
        Decision::Create { idempotency_key } => {
            if spec.management_policy == ManagementPolicy::ObserveOnly {
                return Ok(Ok(Synced::NotFound));
            }
            // The intent goes to status before the request leaves.
            let intent = status::compute(
                status.as_ref(),
                spec,
                er.metadata.generation,
                &Outcome::Creating {
                    idempotency_key: &idempotency_key,
                },
                Utc::now(),
            );
            writer.write(intent).await?;
            match adapter.create(&request(None, Some(&idempotency_key))).await {
                Ok(object) => {
                    ctx.publish(
                        er,
                        EventType::Normal,
                        "Created",
                        "Create",
                        format!("created {}", object.id),
                    )
                    .await;
                    Synced::Object { object, how: "Created" }
                }
                Err(e) => {
                    let create_not_applied = e.certainly_not_applied();
                    return Ok(Err(Failure {
                        create_not_applied,
                        ..e.into()
                    }));
                }
            }
        }
        Decision::NotFound => Synced::NotFound,
        Decision::Conflict { id, owner } => {
            let previously = status
                .as_ref()
                .is_some_and(|s| crate::conditions::is_true(&s.conditions, status::CONFLICT));
            if !previously {
                let note = format!("the external object {id} is managed by ExternalResource {owner}");
                ctx.publish(er, EventType::Warning, "Conflict", "Adopt", note).await;
            }
            Synced::Conflict { id, owner }
        }
    }))
}

fn object_request<'a>(
    er: &'a ExternalResource,
    name: &'a str,
    id: Option<&'a str>,
    key: Option<&'a str>,
) -> ObjectRequest<'a> {
    ObjectRequest {
        resource_type: &er.spec.type_,
        external_id: id,
        external_name: name,
        properties: &er.spec.properties,
        idempotency_key: key,
    }
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

fn owner_name(other: &ExternalResource) -> String {
    format!("{}/{}", other.namespace().unwrap_or_default(), other.name_any())
}

/// The ExternalResource that already manages the object `id`, if another
/// one does: it holds the id in status and is older than this one (or this
/// one does not hold it yet). Scans the store in place (no copies): this
/// runs on every reconcile.
fn claim_on_id(ctx: &Context, er: &ExternalResource, id: &str) -> Option<String> {
    let mine = er.status.as_ref().and_then(|s| s.external_id.as_deref()) == Some(id);
    ctx.resources
        .find(|other| {
            let Some(status) = other.status.as_ref() else {
                return false;
            };
            status.external_id.as_deref() == Some(id)
                && is_rival(er, other)
                && !crate::conditions::is_true(&status.conditions, status::CONFLICT)
                && (!mine || older(other, er))
        })
        .map(|other| owner_name(&other))
}

/// The older ExternalResource that declares the same external name, if any
/// (checked only before a create).
fn claim_on_name(ctx: &Context, er: &ExternalResource, name: &str) -> Option<String> {
    ctx.resources
        .find(|other| other.spec.external_name.as_deref() == Some(name) && is_rival(er, other) && older(other, er))
        .map(|other| owner_name(&other))
}

async fn cleanup(er: &ExternalResource, ctx: &Context) -> Result<Action, Error> {
    lock(&ctx.fresh).remove(&key(er));
    if er.spec.deletion_policy == DeletionPolicy::Orphan || er.spec.management_policy == ManagementPolicy::ObserveOnly {
        let id = er
            .status
            .as_ref()
            .and_then(|s| s.external_id.clone())
            .unwrap_or_else(|| "the external object".into());
        ctx.publish(
            er,
            EventType::Normal,
            "Orphaned",
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
        let mut writer = StatusWriter::new(er, ctx);
        let outcome = Outcome::Failed {
            reason: "DeletionBlocked",
            message: message.clone(),
            permanent: false,
            create_not_applied: false,
        };
        writer
            .write(status::compute(
                writer.current.as_ref(),
                &er.spec,
                er.metadata.generation,
                &outcome,
                Utc::now(),
            ))
            .await?;
        Err::<Action, Error>(Error::DeletionBlocked(message))
    };
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
    let mut request = object_request(er, &name, None, None);
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
            ctx.publish(er, EventType::Normal, "Deleted", "Delete", note).await;
            ctx.succeeded(&key(er));
            Ok(Action::await_change())
        }
        Err(e) => blocked(e.into()).await,
    }
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
