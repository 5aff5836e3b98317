//! A `resource` step: the run owns an ExternalResource (server-side
//! applied, owner reference to the run); the step finishes when it is
//! Ready, and its compensation deletes it (its own finalizer deletes the
//! external object first) unless the step keeps it.

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::{Do, Scope, Step};
use crate::api::workflow_run::StepStatus;
use crate::api::{ExternalResource, WorkflowRun};
use crate::controller::{Context, Error};
use crate::workflow::compile::CompiledResource;
use crate::workflow::engine::{FailureClass, Observation};
use crate::workflow::steps::{resource_name, resource_outcome};

/// Field manager of the ExternalResources that `resource` steps own.
pub const RESOURCE_MANAGER: &str = "tether-workflow";
/// Label naming the run that owns an ExternalResource.
pub const RUN_LABEL: &str = "tether.dev/run";

pub async fn perform(
    scope: &Scope<'_>,
    step: &Step<'_>,
    resource: &CompiledResource,
    what: Do<'_>,
) -> Option<Observation> {
    match what {
        Do::Start { item, .. } => Some(start(scope, step, resource, item).await),
        Do::Check => check(scope, step, resource),
        Do::Compensate { item, .. } => delete(scope, step, item).await,
    }
}

async fn start(scope: &Scope<'_>, step: &Step<'_>, resource: &CompiledResource, item: Option<i32>) -> Observation {
    let vars = scope.vars(item, step.name);
    let properties = match crate::expr::in_turn(|| resource.properties.eval(&Value::Null, &vars.refs())).await {
        Ok(p) => p,
        Err(e) => return step.failed(item, (e.to_string(), FailureClass::Permanent)),
    };
    match ensure(scope, step.name, item, resource, properties).await {
        Ok(()) if item.is_none() => step.waiting(None, None),
        // Items of a fan-out do not wait one by one: the item is done once
        // its ExternalResource is accepted.
        Ok(()) => Observation::Succeeded {
            step: step.name.to_owned(),
            item,
            outputs: Value::Null,
        },
        Err(e) => step.failed(
            item,
            (
                format!("cannot create the ExternalResource: {e}"),
                FailureClass::Transient,
            ),
        ),
    }
}

/// The run whose name the step's ExternalResources carry: this one, or the
/// run a retry kept the step from.
fn owner_name(scope: &Scope<'_>, step: &str) -> String {
    scope
        .status
        .steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.kept_from.clone())
        .unwrap_or_else(|| scope.run.name_any())
}

/// Makes `run` (a retry) the owner of the ExternalResources of a step it
/// kept from the run it retries: deleting that run must not delete them,
/// and this run's compensation undoes them. Idempotent; one already gone
/// is left gone.
pub async fn hand_over(ctx: &Context, run: &WorkflowRun, step: &StepStatus) -> Result<(), Error> {
    let Some(from) = step.kept_from.as_deref() else {
        return Ok(());
    };
    let names: Vec<String> = match &step.items {
        Some(items) => (0..items.total)
            .map(|i| resource_name(from, &step.name, Some(i)))
            .collect(),
        None => vec![resource_name(from, &step.name, None)],
    };
    let owner = run.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = None;
        o
    });
    // A merge patch replaces the list: the old run's reference goes.
    let patch = json!({"metadata": {
        "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        "labels": { RUN_LABEL: run.name_any() },
    }});
    let api: Api<ExternalResource> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    for name in names {
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::HandOver { name, source }),
        }
    }
    Ok(())
}

fn check(scope: &Scope<'_>, step: &Step<'_>, resource: &CompiledResource) -> Option<Observation> {
    let name = resource_name(&owner_name(scope, step.name), step.name, None);
    let er = scope
        .ctx
        .resources
        .get(&ObjectRef::new(&name).within(&scope.namespace()));
    // The cache keeps an in-sync resource's observed state once: restore it.
    let status = er.as_ref().and_then(|er| er.full_status());
    resource_outcome(
        step.name,
        &name,
        status.as_ref(),
        step.started(scope.now),
        resource.ready_timeout,
        scope.now,
    )
}

/// Deletes the step's ExternalResource: compensated once it is gone (its
/// own finalizer deletes the external object first), `None` meanwhile.
pub async fn delete(scope: &Scope<'_>, step: &Step<'_>, item: Option<i32>) -> Option<Observation> {
    match delete_object(scope, step.name, item).await {
        Ok(true) => Some(Observation::Compensated {
            step: step.name.to_owned(),
            item,
        }),
        Ok(false) => None,
        Err(e) => Some(Observation::CompensationFailed {
            step: step.name.to_owned(),
            item,
            message: format!("cannot delete the ExternalResource: {e}"),
            class: FailureClass::Transient,
        }),
    }
}

async fn ensure(
    scope: &Scope<'_>,
    step: &str,
    item: Option<i32>,
    resource: &CompiledResource,
    properties: Value,
) -> Result<(), kube::Error> {
    let run = scope.run;
    let name = resource_name(&run.name_any(), step, item);
    let owner = run.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = None;
        o
    });
    let mut labels = json!({ RUN_LABEL: run.name_any(), "tether.dev/step": step });
    // The run's shard (same namespace), from the create on.
    if let Some((key, shard)) = scope.ctx.shards.label(&scope.namespace()) {
        labels[key] = json!(shard);
    }
    let er = json!({
        "apiVersion": ExternalResource::api_version(&()),
        "kind": ExternalResource::kind(&()),
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "targetRef": { "name": resource.target },
            "type": resource.resource_type,
            "properties": properties,
        },
    });
    let api: Api<ExternalResource> = Api::namespaced(scope.ctx.client.clone(), &scope.namespace());
    api.patch(&name, &PatchParams::apply(RESOURCE_MANAGER).force(), &Patch::Apply(&er))
        .await?;
    Ok(())
}

/// Deletes the ExternalResource; true once it is gone.
async fn delete_object(scope: &Scope<'_>, step: &str, item: Option<i32>) -> Result<bool, kube::Error> {
    let name = resource_name(&owner_name(scope, step), step, item);
    let api: Api<ExternalResource> = Api::namespaced(scope.ctx.client.clone(), &scope.namespace());
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
        Err(e) => return Err(e),
    }
    Ok(api.get_opt(&name).await?.is_none())
}
