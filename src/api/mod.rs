//! The custom resources of group `tether.dev/v1alpha1`, one module per kind.
//! Pure data and schema: the controllers live elsewhere.

pub mod adapter;
pub mod approval;
pub mod common;
pub mod external_resource;
pub mod target_system;
pub mod workflow;
pub mod workflow_run;

pub use adapter::Adapter;
pub use approval::Approval;
pub use external_resource::ExternalResource;
pub use target_system::TargetSystem;
pub use workflow::Workflow;
pub use workflow_run::WorkflowRun;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Label on every object Tether ships, CRDs included.
pub const PART_OF_LABEL: (&str, &str) = ("app.kubernetes.io/part-of", "tether");

/// Every CRD Tether defines, in a stable order, labelled as part of Tether.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Adapter::crd(),
        TargetSystem::crd(),
        ExternalResource::crd(),
        Workflow::crd(),
        WorkflowRun::crd(),
        Approval::crd(),
    ];
    for crd in &mut crds {
        crd.metadata
            .labels
            .get_or_insert_default()
            .insert(PART_OF_LABEL.0.into(), PART_OF_LABEL.1.into());
    }
    crds
}
