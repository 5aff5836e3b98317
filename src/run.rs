//! `tether run`: the controller process. Serves `/metrics`, `/healthz` and
//! `/readyz`; optionally waits for the leader Lease; then runs the
//! Adapter, TargetSystem and ExternalResource controllers until SIGTERM or
//! Ctrl-C (graceful: reconciles in flight finish) or until leadership is
//! lost (the process exits non-zero and its replacement takes over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::api::{Adapter, Approval, ExternalResource, TargetSystem, Workflow, WorkflowRun};
use crate::controller::{self as ctrl, Context};
use crate::leader::{self, LeaderElector};
use crate::metrics::Metrics;
use crate::target::registry::Registry;

#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TETHER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconciles running at once, per kind.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,
    /// Address of the workflow webhook endpoint (`/webhooks/<ns>/<workflow>`)
    /// and of step callbacks (`/callbacks/...`).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub webhook_addr: SocketAddr,
    /// Base URL at which targets reach the callback endpoint (in a cluster:
    /// the Service, e.g. `http://tether.tether-system:8443`; default: the
    /// `--webhook-addr` it listens on).
    #[arg(long, env = "TETHER_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// How far a webhook's `X-Tether-Timestamp` may be from the
    /// controller's clock, either way; older or newer requests are refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub webhook_tolerance: Duration,
    /// Take part in leader election; only the holder of the Lease acts.
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "tether-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the watched namespace, or `default`).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// How long a Lease lasts without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Identity in the Lease (default: `$POD_NAME`, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Longest time one expression may evaluate (the expression sandbox).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub expr_timeout: Duration,
    /// Memory (address space) of one expression worker process, in MiB.
    #[arg(long, default_value_t = 256)]
    pub expr_memory_mib: u64,
    /// Expression worker processes (evaluations at once).
    #[arg(long, default_value_t = 2)]
    pub expr_workers: usize,
    /// The `tether` binary that runs expression workers (default: this one).
    #[arg(long, hide = true)]
    pub expr_worker_exe: Option<std::path::PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::api::common::parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 15s or 1m"))
}

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

fn health_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.render(),
                )
            }),
        )
        .with_state(health)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    run_with_client(client, options).await
}

/// [`run`] with a client of the caller's (the sandbox runs the controller
/// in-process as the controller identity).
pub async fn run_with_client(client: Client, options: RunOptions) -> anyhow::Result<()> {
    let exe = match &options.expr_worker_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("finding the tether binary for expression workers")?,
    };
    crate::expr::sandbox::install(
        exe,
        crate::expr::sandbox::Limits {
            timeout: options.expr_timeout,
            memory_bytes: options.expr_memory_mib.saturating_mul(1024 * 1024),
            workers: options.expr_workers,
        },
    );
    let metrics = Metrics::shared();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .with_context(|| format!("binding {}", options.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let router = health_router(Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        }
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let identity = options
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let secrets_api: Api<PartialObjectMeta<Secret>> = scoped(&client, options.namespace.as_deref());
    let (secrets, secrets_writer) = reflector::store();
    let secrets_ready = secrets.clone();
    let registry = Arc::new(Registry::new(client.clone(), Some(secrets), metrics.clone()));

    let mut lost_leadership: Option<tokio::task::JoinHandle<leader::Error>> = None;
    if options.leader_election {
        let lease_namespace = options
            .lease_namespace
            .clone()
            .or_else(|| options.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &lease_namespace),
            leader::Config {
                name: options.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: options.lease_duration,
                renew_every: options.lease_duration / 3,
            },
        );
        tracing::info!(%identity, lease = %options.lease_name, "waiting for leadership");
        let leadership = tokio::select! {
            acquired = elector.acquire() => acquired?,
            () = stopped() => return Ok(()),
        };
        tracing::info!(fencing_token = %leadership.fencing_token, "became leader");
        metrics.leader.set(1);
        registry.set_fencing_token(leadership.fencing_token.clone());
        lost_leadership = Some(tokio::spawn(async move { elector.hold(&leadership).await }));
    } else {
        registry.set_fencing_token(identity.clone());
    }

    // Reflectors for lookups: reconciles read TargetSystems, Adapters and
    // Secret versions from memory.
    let (targets, targets_writer) = reflector::store();
    let (adapters, adapters_writer) = reflector::store();
    let (workflows, workflows_writer) = reflector::store();
    let (approvals, approvals_writer) = reflector::store();
    let workflow_api: Api<Workflow> = scoped(&client, options.namespace.as_deref());
    let approval_api: Api<Approval> = scoped(&client, options.namespace.as_deref());
    let run_api: Api<WorkflowRun> = scoped(&client, options.namespace.as_deref());
    let target_api: Api<TargetSystem> = scoped(&client, options.namespace.as_deref());
    let adapter_api: Api<Adapter> = Api::all(client.clone());
    let er_api: Api<ExternalResource> = scoped(&client, options.namespace.as_deref());
    for stream in [
        reflector::reflector(targets_writer, watcher(target_api.clone(), watcher::Config::default()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
        reflector::reflector(
            adapters_writer,
            watcher(adapter_api.clone(), watcher::Config::default()),
        )
        .default_backoff()
        .map(|_| ())
        .boxed(),
        reflector::reflector(secrets_writer, watcher(secrets_api, watcher::Config::default()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
        reflector::reflector(
            workflows_writer,
            watcher(workflow_api.clone(), watcher::Config::default()),
        )
        .default_backoff()
        .map(|_| ())
        .boxed(),
        reflector::reflector(
            approvals_writer,
            watcher(approval_api.clone(), watcher::Config::default()),
        )
        .default_backoff()
        .map(|_| ())
        .boxed(),
    ] {
        tokio::spawn(stream.for_each(|()| async {}));
    }
    targets.wait_until_ready().await.context("TargetSystem reflector")?;
    adapters.wait_until_ready().await.context("Adapter reflector")?;
    workflows.wait_until_ready().await.context("Workflow reflector")?;
    approvals.wait_until_ready().await.context("Approval reflector")?;
    // Targets are fingerprinted by their Secrets' versions: know them before
    // the first target is built, or every target is built twice.
    secrets_ready
        .wait_until_ready()
        .await
        .context("Secret metadata reflector")?;

    let webhook_listener = tokio::net::TcpListener::bind(options.webhook_addr)
        .await
        .with_context(|| format!("binding {}", options.webhook_addr))?;
    let callback_base = match &options.callback_url {
        Some(url) => url.clone(),
        None => format!("http://{}", webhook_listener.local_addr()?),
    };
    let reporter = Reporter {
        controller: "tether".into(),
        instance: Some(identity.clone()),
    };
    let config = controller::Config::default().concurrency(options.concurrency);
    let er_controller = Controller::new(er_api.clone(), watcher::Config::default()).with_config(config.clone());
    let run_controller = Controller::new(run_api.clone(), watcher::Config::default()).with_config(config.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        registry,
        mappings: ctrl::MappingCache::default(),
        targets: targets.clone(),
        adapters: adapters.clone(),
        resources: er_controller.store(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        fresh: Default::default(),
        failures: Default::default(),
        workflows: workflows.clone(),
        runs: run_controller.store(),
        approvals,
        compiled: Default::default(),
        written: Default::default(),
        callback_base,
        triggers: crate::webhook::Triggers {
            tolerance: options.webhook_tolerance,
            ..Default::default()
        },
    });

    tracing::info!(addr = %webhook_listener.local_addr()?, "serving workflow webhooks and callbacks");
    let webhook_router = crate::webhook::router(ctx.clone());
    tokio::spawn(async move { axum::serve(webhook_listener, webhook_router).await });

    let store = er_controller.store();
    let target_generations = ctrl::GenerationFilter::default();
    let by_target = move |ts: TargetSystem| {
        if !target_generations.changed(&ts) {
            return vec![];
        }
        ctrl::external_resource::referencing(&store.state(), &ts.namespace().unwrap_or_default(), &ts.name_any())
    };
    let (store, targets_for_adapters) = (er_controller.store(), targets.clone());
    let adapter_generations = ctrl::GenerationFilter::default();
    let by_adapter = move |adapter: Adapter| -> Vec<ObjectRef<ExternalResource>> {
        if !adapter_generations.changed(&adapter) {
            return vec![];
        }
        let resources = store.state();
        targets_for_adapters
            .state()
            .iter()
            .filter(|ts| ts.spec.adapter_ref.name == adapter.name_any())
            .flat_map(|ts| {
                ctrl::external_resource::referencing(&resources, &ts.namespace().unwrap_or_default(), &ts.name_any())
            })
            .collect()
    };
    // A changed ExternalResource wakes those that reference it (its id or
    // readiness may be what they wait for), and, while it is deleted, those
    // it references (their deletion waits for it). The index learns the
    // references from the same events, so no event scans the store.
    let reference_index = ctrl::external_resource::references::ReferenceIndex::default();
    let by_reference = move |changed: ExternalResource| reference_index.affected(&changed);
    let external_resources = er_controller
        .watches(er_api.clone(), watcher::Config::default(), by_reference)
        .watches(target_api.clone(), watcher::Config::default(), by_target)
        .watches(adapter_api.clone(), watcher::Config::default(), by_adapter)
        .graceful_shutdown_on(stopped())
        .run(
            |o, c| ctrl::guard::reconcile(o, c, "ExternalResource", ctrl::external_resource::reconcile),
            ctrl::external_resource::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let target_systems = Controller::new(target_api, watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stopped())
        .run(
            |o, c| ctrl::guard::reconcile(o, c, "TargetSystem", ctrl::target_system::reconcile),
            ctrl::target_system::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let adapters_controller = Controller::new(adapter_api, watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stopped())
        .run(
            |o, c| ctrl::guard::reconcile(o, c, "Adapter", ctrl::adapter::reconcile),
            ctrl::adapter::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});

    // A decision wakes the run it names.
    let by_approval = |approval: Approval| {
        Some(
            ObjectRef::<WorkflowRun>::new(&approval.spec.run_ref.name)
                .within(&approval.namespace().unwrap_or_default()),
        )
    };
    let workflow_runs = run_controller
        .owns(er_api, watcher::Config::default())
        .watches(approval_api, watcher::Config::default(), by_approval)
        .graceful_shutdown_on(stopped())
        .run(
            |o, c| ctrl::guard::reconcile(o, c, "WorkflowRun", ctrl::workflow_run::reconcile),
            ctrl::workflow_run::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    // A run of a schedule that finishes wakes its workflow (history limits,
    // concurrency policy).
    let by_run = |run: WorkflowRun| {
        let finished = run.status.as_ref().is_some_and(|s| crate::engine::is_terminal(s.phase));
        let workflow = run
            .labels()
            .get(ctrl::workflow::SCHEDULE_LABEL)
            .map(|_| run.spec.workflow_ref.name.clone());
        workflow
            .filter(|_| finished)
            .map(|w| ObjectRef::<Workflow>::new(&w).within(&run.namespace().unwrap_or_default()))
    };
    let workflows_controller = Controller::new(workflow_api, watcher::Config::default())
        .with_config(config.clone())
        .watches(run_api, watcher::Config::default(), by_run)
        .graceful_shutdown_on(stopped())
        .run(
            |o, c| ctrl::guard::reconcile(o, c, "Workflow", ctrl::workflow::reconcile),
            ctrl::workflow::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});

    ready.store(true, Ordering::Relaxed);
    tracing::info!(namespace = ?options.namespace, concurrency = options.concurrency, "controllers running");
    let controllers = async {
        tokio::join!(
            external_resources,
            target_systems,
            adapters_controller,
            workflow_runs,
            workflows_controller
        );
    };
    match lost_leadership {
        Some(lost) => tokio::select! {
            () = controllers => Ok(()),
            reason = lost => {
                let reason = reason.map_or_else(|e| e.to_string(), |e| e.to_string());
                anyhow::bail!("stopping: leadership ended ({reason})")
            }
        },
        None => {
            controllers.await;
            Ok(())
        }
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tether".into())
}
