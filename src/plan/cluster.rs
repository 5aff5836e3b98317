//! The I/O of `tether plan`: manifests from files (`-f`, repeatable, files
//! or directories of YAML/JSON, `kind: List` included) or the
//! ExternalResources already in the cluster (`--namespace`, `--all`); each
//! one's live status (its external id, its create intent) read from the
//! API server; its TargetSystem and Adapter from the manifests or the
//! cluster; and its target's runtime built by the controller's own
//! [`Registry`] — the same egress deny list (`--egress-deny`, default
//! loopback, link-local and the API server), the same credentials from the
//! TargetSystem's Secrets, read with the user's kubeconfig (a Secret the
//! user may not read is an error for that resource, never a bypass).
//! Reads only: the API server gets GETs and LISTs, targets get what
//! [`super::assess`] sends (`observe`, `find`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::{Action, Item, Plan, assess};
use crate::adapter::AnyAdapter;
use crate::api::{Adapter, ExternalResource, TargetSystem};
use crate::controller::MappingCache;
use crate::controller::external_resource::references::{self, Unresolved};
use crate::http::registry::Registry;
use crate::metrics::Metrics;

/// What `tether plan` plans, and how it prints it.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanOptions {
    /// Manifests to plan: files or directories of `.yaml`, `.yml` or
    /// `.json` (repeatable). Without it, the ExternalResources in the
    /// cluster are planned.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Namespace of the ExternalResources in the cluster, and of manifests
    /// that name none (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every ExternalResource of every namespace the user may list.
    #[arg(long, conflicts_with_all = ["files", "namespace"])]
    pub all: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Addresses no target may resolve to, as `tether run --egress-deny`
    /// (default: loopback, link-local, unspecified, and the API server).
    #[arg(long, env = "TETHER_EGRESS_DENY")]
    pub egress_deny: Option<crate::http::egress::DenyList>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// The manifests of `-f`: Tether's kinds, the rest left out.
#[derive(Default)]
struct Manifests {
    resources: Vec<ExternalResource>,
    targets: Vec<TargetSystem>,
    adapters: Vec<Adapter>,
}

/// Runs the plan and prints it; returns the outcome (the exit code).
pub async fn main(options: PlanOptions) -> anyhow::Result<super::Outcome> {
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let cluster_url = config.cluster_url.to_string();
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    // Tenants' expressions run in worker processes, as in the controller.
    let exe = std::env::current_exe().context("finding the tether binary for expression workers")?;
    crate::expr::sandbox::install(exe, crate::expr::sandbox::Limits::default());
    let egress = crate::http::egress::policy_for(options.egress_deny.as_ref(), Some(&cluster_url)).await;
    let registry = Registry::new(client.clone(), None, Metrics::shared()).with_egress(Arc::new(egress));
    registry.set_fencing_token("tether-plan".into());

    let namespace = options.namespace.clone().unwrap_or(default_namespace);
    let manifests = read_manifests(&options.files, &namespace)?;
    let resources = if options.files.is_empty() {
        let api: Api<ExternalResource> = if options.all {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &namespace)
        };
        let mut listed = api
            .list(&ListParams::default())
            .await
            .context("listing ExternalResources")?
            .items;
        listed.sort_by_key(|er| (er.namespace(), er.name_any()));
        listed
    } else {
        manifests.resources.clone()
    };
    let planner = Planner {
        client,
        registry,
        mappings: MappingCache::default(),
        manifests,
        neighbours: BTreeMap::new(),
    };
    let plan = planner.plan(resources).await;
    match options.output {
        Format::Text => print!("{}", plan.to_text()),
        Format::Json => println!("{}", plan.to_json()),
    }
    Ok(plan.outcome())
}

struct Planner {
    client: Client,
    registry: Registry,
    mappings: MappingCache,
    manifests: Manifests,
    /// The ExternalResources of each namespace in the cluster (claims,
    /// references), listed once.
    neighbours: BTreeMap<String, Result<Vec<ExternalResource>, String>>,
}

impl Planner {
    async fn plan(mut self, resources: Vec<ExternalResource>) -> Plan {
        let mut items = Vec::new();
        for er in resources {
            let (namespace, name) = (er.namespace().unwrap_or_default(), er.name_any());
            let (target, type_) = (er.spec.target_ref.name.clone(), er.spec.type_.clone());
            let action = match self.live(er).await {
                Ok(er) => self.one(&er).await,
                Err(message) => Action::Error { message },
            };
            items.push(Item {
                namespace,
                name,
                target,
                type_,
                action,
            });
        }
        Plan::new(items)
    }

    /// `er` as the controller would see it: its spec (from the manifest),
    /// and the live object's status and metadata when it exists.
    async fn live(&mut self, er: ExternalResource) -> Result<ExternalResource, String> {
        let namespace = er.namespace().unwrap_or_default();
        let neighbours = self.neighbours(&namespace).await?;
        let mut er = er;
        if let Some(found) = neighbours.iter().find(|o| o.name_any() == er.name_any()) {
            er.metadata = found.metadata.clone();
            er.status = found.status.clone();
        } else {
            // Not applied yet: the youngest of its namespace.
            er.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        }
        Ok(er)
    }

    async fn neighbours(&mut self, namespace: &str) -> Result<Vec<ExternalResource>, String> {
        if !self.neighbours.contains_key(namespace) {
            let api: Api<ExternalResource> = Api::namespaced(self.client.clone(), namespace);
            let listed = api
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(|e| format!("listing the ExternalResources of namespace {namespace}: {e}"));
            self.neighbours.insert(namespace.to_owned(), listed);
        }
        self.neighbours.get(namespace).cloned().unwrap_or_else(|| Ok(vec![]))
    }

    async fn one(&mut self, er: &ExternalResource) -> Action {
        match self.prepare(er).await {
            Ok((adapter, spec, others)) => assess(&adapter, er, &spec, &others).await,
            Err(action) => action,
        }
    }

    /// The adapter of `er`'s target, its spec with `propertiesFrom`
    /// resolved, and the resources that may claim its object.
    async fn prepare(
        &mut self,
        er: &ExternalResource,
    ) -> Result<
        (
            AnyAdapter,
            crate::api::external_resource::ExternalResourceSpec,
            Vec<ExternalResource>,
        ),
        Action,
    > {
        let error = |message: String| Action::Error { message };
        let namespace = er.namespace().unwrap_or_default();
        let mut others = self.neighbours(&namespace).await.map_err(error)?;
        // The manifests' resources stand in for their live copies.
        for declared in self
            .manifests
            .resources
            .iter()
            .filter(|m| m.namespace().as_deref() == Some(namespace.as_str()))
        {
            match others.iter_mut().find(|o| o.name_any() == declared.name_any()) {
                Some(live) => live.spec = declared.spec.clone(),
                None => others.push(declared.clone()),
            }
        }
        let refs = match references::resolve(er, others.iter()) {
            Ok(refs) => refs,
            Err(Unresolved::Waiting(waiting)) => {
                return Err(Action::Waiting {
                    why: format!("waits for its references: {}", waiting.join("; ")),
                });
            }
            Err(other) => return Err(error(other.message())),
        };
        let properties = references::desired_properties(&er.spec.properties, &er.spec.properties_from, &refs)
            .map_err(|e| error(e.to_string()))?;
        let spec = crate::api::external_resource::ExternalResourceSpec {
            properties,
            ..er.spec.clone()
        };
        let ts = self.target_system(&namespace, &er.spec.target_ref.name).await?;
        let adapter = self.adapter(&ts.spec.adapter_ref.name).await?;
        let target = self.registry.get(&ts).await.map_err(|e| {
            error(format!(
                "TargetSystem {namespace}/{}: {}",
                ts.name_any(),
                describe_error(&e)
            ))
        })?;
        let adapter =
            AnyAdapter::build(&adapter, target, |a| self.mappings.get(a)).map_err(|e| error(e.to_string()))?;
        Ok((adapter, spec, others))
    }

    async fn target_system(&self, namespace: &str, name: &str) -> Result<TargetSystem, Action> {
        if let Some(ts) = self
            .manifests
            .targets
            .iter()
            .find(|t| t.namespace().as_deref() == Some(namespace) && t.name_any() == name)
        {
            return Ok(ts.clone());
        }
        let api: Api<TargetSystem> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(ts)) => Ok(ts),
            Ok(None) => Err(Action::Error {
                message: format!("TargetSystem {name:?} does not exist in namespace {namespace}"),
            }),
            Err(e) => Err(Action::Error {
                message: format!("reading TargetSystem {namespace}/{name}: {e}"),
            }),
        }
    }

    async fn adapter(&self, name: &str) -> Result<Adapter, Action> {
        if let Some(adapter) = self.manifests.adapters.iter().find(|a| a.name_any() == name) {
            return Ok(adapter.clone());
        }
        let api: Api<Adapter> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(adapter)) => Ok(adapter),
            Ok(None) => Err(Action::Error {
                message: format!("Adapter {name:?} does not exist"),
            }),
            Err(e) => Err(Action::Error {
                message: format!("reading Adapter {name}: {e}"),
            }),
        }
    }
}

/// A registry error with its cause (a Secret the user may not read says so).
fn describe_error(e: &crate::http::registry::RegistryError) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

/// The files of `paths`: each file, and the `.yaml`, `.yml` and `.json`
/// files of each directory (not recursive), in name order.
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn read_manifests(paths: &[PathBuf], namespace: &str) -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    for file in files(paths)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for document in documents(&file, &text)? {
            add(&mut manifests, document, namespace).with_context(|| format!("in {}", file.display()))?;
        }
    }
    Ok(manifests)
}

/// The documents of a file (YAML, several separated by `---`, or JSON),
/// with `kind: List` expanded.
fn documents(file: &Path, text: &str) -> anyhow::Result<Vec<Value>> {
    let parsed: Vec<Value> =
        serde_saphyr::from_multiple(text).with_context(|| format!("parsing {} as YAML", file.display()))?;
    let mut out = Vec::new();
    for document in parsed {
        match document {
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(map.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            Value::Null => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn add(manifests: &mut Manifests, document: Value, namespace: &str) -> anyhow::Result<()> {
    let group_version = document.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if group_version != "tether.dev/v1alpha1" {
        return Ok(());
    }
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |e: serde_json::Error| anyhow::anyhow!("{kind} {name:?} does not parse: {e}");
    match kind.as_str() {
        "ExternalResource" => {
            let mut er: ExternalResource = serde_json::from_value(document).map_err(invalid)?;
            er.metadata.namespace.get_or_insert_with(|| namespace.to_owned());
            manifests.resources.push(er);
        }
        "TargetSystem" => {
            let mut ts: TargetSystem = serde_json::from_value(document).map_err(invalid)?;
            ts.metadata.namespace.get_or_insert_with(|| namespace.to_owned());
            manifests.targets.push(ts);
        }
        "Adapter" => manifests
            .adapters
            .push(serde_json::from_value(document).map_err(invalid)?),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_read_from_multi_document_yaml_and_lists_in_the_default_namespace() {
        let yaml = r#"
apiVersion: tether.dev/v1alpha1
kind: ExternalResource
metadata: {name: ada}
spec: {targetRef: {name: crm}, type: contact, properties: {plan: pro}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: tether.dev/v1alpha1
    kind: TargetSystem
    metadata: {name: crm, namespace: other}
    spec: {adapterRef: {name: saas}, baseUrl: "http://crm.example"}
  - apiVersion: v1
    kind: Secret
    metadata: {name: token}
"#;
        let mut manifests = Manifests::default();
        for document in documents(Path::new("x.yaml"), yaml).expect("parses") {
            add(&mut manifests, document, "demo").expect("adds");
        }
        assert_eq!(manifests.resources.len(), 1);
        assert_eq!(manifests.resources[0].namespace().as_deref(), Some("demo"));
        assert_eq!(manifests.targets.len(), 1);
        assert_eq!(manifests.targets[0].namespace().as_deref(), Some("other"));
        assert!(manifests.adapters.is_empty());
    }
}
