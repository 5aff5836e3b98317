//! `tether run`: the controller process. Serves `/metrics`, `/healthz` and
//! `/readyz`; fills its caches and serves the webhook and callback endpoint
//! (every replica, so either may receive them: both act only through the
//! API server); is then Ready; optionally waits for the leader Lease; then
//! runs the controllers until SIGTERM or Ctrl-C (graceful: reconciles in
//! flight finish) or until leadership is lost (the process exits non-zero
//! and its replacement takes over).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::api::{Adapter, Approval, ExternalResource, TargetSystem, Workflow, WorkflowRun};
use crate::cache::Cache;
use crate::controller::{self as ctrl, Context};
use crate::http::registry::Registry;
use crate::leader::{self, LeaderElector};
use crate::metrics::Metrics;
use crate::scope::Scope;
use crate::shard::Held;
use crate::shard::Step;
use crate::shard::lease::Leases;

#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Watch only these namespaces, comma separated (default: all).
    #[arg(long, env = "TETHER_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Reconcile only ExternalResources, Workflows, WorkflowRuns and
    /// TargetSystems whose labels match this selector (`team=payments`).
    #[arg(long, env = "TETHER_SELECTOR")]
    pub selector: Option<String>,
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
    /// Split the objects into this many shards (by namespace), each held
    /// by one replica through a Lease `<lease-name>-shard-<i>`; replicas
    /// share them out evenly. 1 (the default): one leader reconciles all.
    /// Above 1 needs `--leader-election`, and every replica the same value.
    #[arg(long, env = "TETHER_SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,
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
    /// Addresses no target, token endpoint, health probe or adapter service
    /// may resolve to: CIDRs, comma separated. Replaces the default list
    /// (loopback, link-local, unspecified, and the API server's addresses);
    /// the API server's own ip:port is refused whatever this says.
    #[arg(long, env = "TETHER_EGRESS_DENY")]
    pub egress_deny: Option<crate::http::egress::DenyList>,
    /// Export traces (a span per reconcile, workflow step and call to a
    /// target) over OTLP/HTTP protobuf to this base URL (`/v1/traces` is
    /// added), and send targets the W3C `traceparent` header. Off when
    /// unset: no exporter, no spans.
    #[arg(long, env = "TETHER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// URL of the API server, for the egress deny list (set by `run` from
    /// the kubeconfig or the in-cluster config).
    #[arg(skip)]
    pub api_server_url: Option<String>,
}

/// How long a stopping leader waits for reconciles in flight before it
/// releases the Lease anyway (a pod has 30 s before SIGKILL; a standby
/// should not wait for the Lease to expire).
const GRACEFUL_STOP: Duration = Duration::from_secs(5);

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

pub async fn run(mut options: RunOptions) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    options.api_server_url = Some(config.cluster_url.to_string());
    let connect = "connecting to the Kubernetes API (KUBECONFIG or in-cluster)";
    // Leader election on connections of its own (as client-go's users do):
    // the Lease is renewed, and released on the way out, whatever the
    // controllers' watches do to theirs (on a graceful stop, a request of
    // the release was seen to wait on a pooled connection the watches'
    // shutdown had left dead, until the Lease expired).
    let lease_client = Client::try_from(config.clone()).context(connect)?;
    let client = Client::try_from(config).context(connect)?;
    run_with_clients(client, lease_client, options).await
}

/// [`run`] with a client of the caller's (the sandbox runs the controller
/// in-process as the controller identity).
pub async fn run_with_client(client: Client, options: RunOptions) -> anyhow::Result<()> {
    run_with_clients(client.clone(), client, options).await
}

/// [`run`] with the caller's clients: `client` for everything but the
/// Lease, `lease_client` for leader election.
pub async fn run_with_clients(client: Client, lease_client: Client, options: RunOptions) -> anyhow::Result<()> {
    let exe = match &options.expr_worker_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("finding the tether binary for expression workers")?,
    };
    if options.shards > 1 && !options.leader_election {
        anyhow::bail!("--shards above 1 needs --leader-election: each shard is held through a Lease");
    }
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
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };

    let identity = options
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let scope = Scope::new(&options.namespace, options.selector.as_deref());
    let egress = crate::http::egress::policy_for(options.egress_deny.as_ref(), options.api_server_url.as_deref()).await;
    tracing::info!(deny = ?egress.deny_list(), "egress deny list");
    let webhook_listener = tokio::net::TcpListener::bind(options.webhook_addr)
        .await
        .with_context(|| format!("binding {}", options.webhook_addr))?;
    let callback_base = match &options.callback_url {
        Some(url) => url.clone(),
        None => format!("http://{}", webhook_listener.local_addr()?),
    };
    let lease_namespace = options
        .lease_namespace
        .clone()
        .or_else(|| scope.single_namespace().map(str::to_owned))
        .unwrap_or_else(|| "default".into());
    let process = Process {
        client,
        options,
        scope,
        identity,
        metrics: metrics.clone(),
        egress: Arc::new(egress),
        callback_base,
        stop: stop_rx,
    };

    // Unsharded, the one generation holds every object (and waits for the
    // leader Lease below); sharded, the first holds no shard yet.
    let first = if process.options.shards > 1 {
        Held::some(process.options.shards, BTreeSet::new())
    } else {
        Held::all()
    };
    let mut generation = Generation::start(&process, first, &BTreeMap::new()).await?;
    let current: crate::webhook::Current = Arc::new(std::sync::RwLock::new(generation.ctx.clone()));
    tracing::info!(addr = %webhook_listener.local_addr()?, "serving workflow webhooks and callbacks");
    let webhook_router = crate::webhook::router(current.clone(), process.options.webhook_tolerance);
    tokio::spawn(async move { axum::serve(webhook_listener, webhook_router).await });

    // Ready means: caches synced and the webhook and callback endpoint
    // serving, which a standby does as well as the leader (leadership is
    // not readiness: a rollout waits for every replica to be Ready).
    ready.store(true, Ordering::Relaxed);
    tracing::info!("ready");

    if process.options.shards > 1 {
        let leases = Leases::new(
            Api::<Lease>::namespaced(lease_client, &lease_namespace),
            &process.options.lease_name,
            &process.identity,
            process.options.shards,
            process.options.lease_duration,
        );
        return sharded(&process, leases, generation, &current).await;
    }

    let mut lost_leadership: Option<(
        tokio::task::JoinHandle<leader::Error>,
        LeaderElector,
        leader::Leadership,
    )> = None;
    let registry = generation.ctx.registry.clone();
    if process.options.leader_election {
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(lease_client, &lease_namespace),
            leader::Config {
                name: process.options.lease_name.clone(),
                identity: process.identity.clone(),
                lease_duration: process.options.lease_duration,
                renew_every: process.options.lease_duration / 3,
            },
        );
        tracing::info!(identity = %process.identity, lease = %process.options.lease_name, "waiting for leadership");
        let leadership = tokio::select! {
            acquired = elector.acquire() => acquired?,
            () = stopped() => return Ok(()),
        };
        tracing::info!(fencing_token = %leadership.fencing_token, "became leader");
        metrics.leader.set(1);
        registry.set_fencing_token(leadership.fencing_token.clone());
        let held = leadership.clone();
        let releaser = elector.clone();
        lost_leadership = Some((
            tokio::spawn(async move { elector.hold(&held).await }),
            releaser,
            leadership,
        ));
    } else {
        registry.set_fencing_token(process.identity.clone());
    }

    let controllers = generation
        .controllers
        .take()
        .unwrap_or_else(|| futures::future::ready(()).boxed());
    match lost_leadership {
        Some((mut lost, elector, leadership)) => {
            // A stop waits for reconciles in flight, but not for ever: the
            // Lease is renewed meanwhile, and the standby waits.
            let overdue = async {
                stopped().await;
                tokio::time::sleep(GRACEFUL_STOP).await;
            };
            tokio::select! {
                () = controllers => {}
                () = overdue => tracing::warn!(
                    grace = ?GRACEFUL_STOP,
                    "reconciles still running after the stop; stopping without waiting for them"
                ),
                reason = &mut lost => {
                    let reason = reason.map_or_else(|e| e.to_string(), |e| e.to_string());
                    anyhow::bail!("stopping: leadership ended ({reason})")
                }
            }
            // A graceful stop (SIGTERM: a rollout, a deleted pod): hand the
            // Lease over now rather than after it expires. Writes still in
            // flight are fenced like any deposed leader's.
            lost.abort();
            match elector.release(&leadership).await {
                Ok(()) => tracing::info!("released the Lease"),
                Err(err) => tracing::warn!(%err, "releasing the Lease failed; it expires instead"),
            }
            Ok(())
        }
        None => {
            controllers.await;
            Ok(())
        }
    }
}

/// What outlives a change of the held shards: the process's options,
/// clients, identity, metrics, egress policy and stop signal.
struct Process {
    client: Client,
    options: RunOptions,
    scope: Scope,
    identity: String,
    metrics: Arc<Metrics>,
    egress: Arc<crate::http::egress::EgressPolicy>,
    callback_base: String,
    /// True once SIGTERM or Ctrl-C arrived.
    stop: watch::Receiver<bool>,
}

/// A shard Lease this replica holds, and the task that renews it.
struct HeldShard {
    elector: LeaderElector,
    leadership: leader::Leadership,
    renewal: tokio::task::JoinHandle<()>,
}

/// Sharded (`--shards` above 1): holds a member Lease while it runs, and
/// takes or gives up shard Leases until it holds its fair share. Each
/// change of the held set stops the controllers gracefully (reconciles in
/// flight finish, [`GRACEFUL_STOP`] at most), releases what it gives up,
/// and starts caches and controllers selecting the new set. A shard Lease
/// that cannot be renewed stops that shard's reconciles at once (the
/// controllers are dropped without grace) and the others go on.
async fn sharded(
    process: &Process,
    leases: Leases,
    mut generation: Generation,
    current: &crate::webhook::Current,
) -> anyhow::Result<()> {
    let count = process.options.shards;
    let renew_every = process.options.lease_duration / 3;
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, leader::Error)>();
    let member = leases.member();
    let membership = loop {
        match member.try_acquire().await {
            Ok(Some(membership)) => break membership,
            Ok(None) => anyhow::bail!(
                "another replica holds the member Lease {}: identities must differ",
                leases.member_name()
            ),
            Err(err) => {
                tracing::warn!(%err, "joining the shard members failed; retrying");
                tokio::time::sleep(renew_every).await;
            }
        }
    };
    // Membership is renewed, and taken again if it lapsed (a replica the
    // others counted out meanwhile only gets a smaller share).
    let member_renewal = tokio::spawn({
        let member = member.clone();
        async move {
            let mut membership = membership;
            loop {
                let err = member.hold(&membership).await;
                tracing::warn!(%err, "the member Lease lapsed; joining again");
                membership = loop {
                    match member.try_acquire().await {
                        Ok(Some(membership)) => break membership,
                        Ok(None) => {}
                        Err(err) => tracing::warn!(%err, "joining the shard members failed; retrying"),
                    }
                    tokio::time::sleep(renew_every).await;
                };
            }
        }
    });
    let (store, mut changes) = leases.watch();
    // The first survey must see every Lease: a replica that saw none would
    // take every free shard and give most of them back at once.
    {
        let listed = store.wait_until_ready();
        tokio::pin!(listed);
        loop {
            tokio::select! {
                _ = &mut listed => break,
                change = changes.next() => if change.is_none() { break },
            }
        }
    }
    let mut held: BTreeMap<u32, HeldShard> = BTreeMap::new();
    let mut controllers = generation.spawn_controllers();
    let mut tick = tokio::time::interval(renew_every);
    let mut stop = process.stop.clone();
    let outcome = loop {
        let lost = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break Ok(()),
            Some((i, err)) = lost_rx.recv() => Some((i, err)),
            _ = tick.tick() => None,
            Some(()) = changes.next() => None,
        };
        if let Some((i, _)) = &lost
            && !held.contains_key(i)
        {
            continue; // given up meanwhile
        }
        if let Some((i, err)) = lost {
            // Another replica may hold it now: stop reconciling at once (no
            // grace: what is still in flight is fenced by its conditional
            // writes), and go on with the other shards.
            tracing::warn!(%err, shard = i, "a shard Lease could not be renewed; no longer reconciling it");
            if let Some(shard) = held.remove(&i) {
                shard.renewal.abort();
            }
            if let Some(controllers) = controllers.take() {
                controllers.abort();
            }
        } else {
            let survey = leases.survey(&store);
            if held.contains_key(&0) {
                for stale in &survey.stale_members {
                    leases.delete(stale).await;
                }
            }
            let mine: BTreeSet<u32> = held.keys().copied().collect();
            let share = crate::shard::fair_share(count, &survey.members, &process.identity);
            match crate::shard::next_step(count, &mine, share, &survey.holders) {
                Step::Stay => continue,
                Step::Release(give) => {
                    tracing::info!(?give, share, "giving up shards");
                    generation.stop(controllers.take()).await;
                    for i in give {
                        if let Some(shard) = held.remove(&i) {
                            shard.renewal.abort();
                            if let Err(err) = shard.elector.release(&shard.leadership).await {
                                tracing::warn!(%err, shard = i, "releasing a shard Lease failed; it expires instead");
                            }
                        }
                    }
                }
                Step::Acquire(want) => {
                    let mut taken = Vec::new();
                    for i in want {
                        let elector = leases.shard(i);
                        match elector.try_acquire().await {
                            Ok(Some(leadership)) => {
                                let renewal = tokio::spawn({
                                    let (elector, leadership, lost) =
                                        (elector.clone(), leadership.clone(), lost_tx.clone());
                                    async move {
                                        let err = elector.hold(&leadership).await;
                                        let _ = lost.send((i, err));
                                    }
                                });
                                taken.push(i);
                                held.insert(
                                    i,
                                    HeldShard {
                                        elector,
                                        leadership,
                                        renewal,
                                    },
                                );
                            }
                            Ok(None) => {}
                            Err(err) => tracing::warn!(%err, shard = i, "taking a shard Lease failed"),
                        }
                    }
                    if taken.is_empty() {
                        continue;
                    }
                    tracing::info!(?taken, share, "took shards");
                    generation.stop(controllers.take()).await;
                }
            }
        }
        let tokens: BTreeMap<u32, String> = held
            .iter()
            .map(|(i, shard)| (*i, shard.leadership.fencing_token.clone()))
            .collect();
        let shards: BTreeSet<u32> = held.keys().copied().collect();
        process
            .metrics
            .shards_held
            .set(i64::try_from(shards.len()).unwrap_or(i64::MAX));
        process.metrics.leader.set(i64::from(!shards.is_empty()));
        tracing::info!(?shards, "reconciling shards");
        generation = match Generation::start(process, Held::some(count, shards), &tokens).await {
            Ok(next) => next,
            Err(err) => break Err(err),
        };
        *current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = generation.ctx.clone();
        controllers = generation.spawn_controllers();
    };
    // Stopping: no reconcile outlives the Leases it ran under for longer
    // than the grace; then every Lease is handed over now rather than when
    // it expires.
    if outcome.is_ok() {
        generation.stop(controllers.take()).await;
    } else if let Some(controllers) = controllers.take() {
        controllers.abort();
    }
    drop(generation);
    for (i, shard) in std::mem::take(&mut held) {
        shard.renewal.abort();
        if let Err(err) = shard.elector.release(&shard.leadership).await {
            tracing::warn!(%err, shard = i, "releasing a shard Lease failed; it expires instead");
        }
    }
    member_renewal.abort();
    leases.delete(&leases.member_name()).await;
    process.metrics.shards_held.set(0);
    process.metrics.leader.set(0);
    outcome
}

/// The caches, context and controllers of one set of held objects (all of
/// them, unsharded; or those of the held shards). Dropping it stops its
/// caches and tasks.
struct Generation {
    ctx: Arc<Context>,
    /// The controllers, not started yet: none when no shard is held.
    controllers: Option<futures::future::BoxFuture<'static, ()>>,
    /// Tells the controllers to stop gracefully.
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Generation {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Generation {
    /// Runs the controllers on a task of their own.
    fn spawn_controllers(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.controllers.take().map(tokio::spawn)
    }

    /// Stops the controllers gracefully: reconciles in flight finish, for
    /// [`GRACEFUL_STOP`] at most (what still runs then is fenced like a
    /// deposed leader's: its writes are conditional).
    async fn stop(&mut self, controllers: Option<tokio::task::JoinHandle<()>>) {
        let _ = self.stop.send(true);
        if let Some(mut controllers) = controllers
            && tokio::time::timeout(GRACEFUL_STOP, &mut controllers).await.is_err()
        {
            tracing::warn!(grace = ?GRACEFUL_STOP, "reconciles still running after the stop; not waiting for them");
            controllers.abort();
        }
    }

    /// Fills the caches of `held` (lookups whole; reconciled kinds as the
    /// scope and the held shards select them) and builds the controllers.
    async fn start(process: &Process, held: Held, tokens: &BTreeMap<u32, String>) -> anyhow::Result<Self> {
        let Process {
            client,
            options,
            scope,
            identity,
            metrics,
            egress,
            callback_base,
            stop: process_stop,
        } = process;
        let mut tasks = Vec::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = {
            let (process_stop, stop_rx) = (process_stop.clone(), stop_rx.clone());
            move || {
                let (mut a, mut b) = (process_stop.clone(), stop_rx.clone());
                async move {
                    tokio::select! {
                        _ = a.wait_for(|stop| *stop) => {}
                        _ = b.wait_for(|stop| *stop) => {}
                    }
                }
            }
        };
        // One cache per kind (src/cache.rs): every lookup and controller of a
        // kind reads the same lean store, fed by one watch. Secrets are known
        // by their metadata only (versions, for the registry's fingerprints).
        let everything = watcher::Config::default;
        let secrets_cache = Cache::<PartialObjectMeta<Secret>>::watch(scope, client, everything());
        let secrets = secrets_cache.store();
        let secrets_ready = secrets.clone();
        let registry =
            Arc::new(Registry::new(client.clone(), Some(secrets), metrics.clone()).with_egress(egress.clone()));
        if held.count > 1 {
            registry.set_shard_tokens(held.count, tokens.clone());
        }

        // One flag opens every cache's subscriptions: a standby keeps its
        // caches filled (its webhooks and callbacks read them) and its
        // controllers hear nothing until it leads.
        let (leading_tx, leading_rx) = watch::channel(false);
        // Reconciled kinds are cached as the scope and the held shards
        // select them; lookup kinds (a resource's TargetSystem, a run's
        // Workflow) whole, as a labelled resource may use an unlabelled
        // TargetSystem, and a webhook to any replica finds its Workflow.
        let reconciled = reconciled_config(scope, &held);
        let shard_only = held.selector().map(|s| watcher::Config::default().labels(&s));
        let adapter_api: Api<Adapter> = Api::all(client.clone());
        let mut resources_cache = reconciled.as_ref().map(|config| {
            Cache::<ExternalResource>::watch(scope, client, config.clone())
                .slimmed(ExternalResource::slim)
                .quiet_until(leading_rx.clone())
        });
        let mut runs_cache = reconciled
            .as_ref()
            .map(|config| Cache::<WorkflowRun>::watch(scope, client, config.clone()).quiet_until(leading_rx.clone()));
        let mut targets_cache =
            Cache::<TargetSystem>::watch(scope, client, everything()).quiet_until(leading_rx.clone());
        let mut adapters_cache = Cache::new(watcher(adapter_api, everything()).boxed()).quiet_until(leading_rx.clone());
        let mut workflows_cache = Cache::<Workflow>::watch(scope, client, everything()).quiet_until(leading_rx.clone());
        // Approvals are read only by the run controller: of its shards.
        let approvals_config = if held.count > 1 {
            shard_only.clone()
        } else {
            Some(everything())
        };
        let mut approvals_cache = approvals_config
            .map(|config| Cache::<Approval>::watch(scope, client, config).quiet_until(leading_rx.clone()));
        let (targets, adapters, workflows) = (targets_cache.store(), adapters_cache.store(), workflows_cache.store());
        let approvals = approvals_cache
            .as_ref()
            .map_or_else(|| reflector::store().0, Cache::store);

        // What each controller and watch hears, taken before the caches run.
        let resources_for_controller = resources_cache.as_mut().map(Cache::applied);
        let resources_for_references = resources_cache.as_mut().map(Cache::touched);
        let resources_for_runs = resources_cache.as_mut().map(Cache::touched);
        let resources_gone = resources_cache.as_mut().map(Cache::deleted);
        let runs_for_controller = runs_cache.as_mut().map(Cache::applied);
        let runs_for_workflows = runs_cache.as_mut().map(Cache::touched);
        let runs_gone = runs_cache.as_mut().map(Cache::deleted);
        let targets_for_resources = targets_cache.touched();
        let targets_gone = targets_cache.deleted();
        let adapters_for_resources = adapters_cache.touched();
        let adapters_for_controller = adapters_cache.applied();
        let adapters_gone = adapters_cache.deleted();
        let approvals_for_runs = approvals_cache.as_mut().map(Cache::touched);
        let (targets_for_controller, target_store) =
            reconciled_lookup(&mut targets_cache, scope, client, &leading_rx, &held, &mut tasks);
        let (workflows_for_controller, workflow_store) =
            reconciled_lookup(&mut workflows_cache, scope, client, &leading_rx, &held, &mut tasks);
        let resources = spawn_optional(resources_cache, &mut tasks);
        let runs = spawn_optional(runs_cache, &mut tasks);
        for task in [
            targets_cache.spawn().1,
            adapters_cache.spawn().1,
            workflows_cache.spawn().1,
            secrets_cache.spawn().1,
        ] {
            tasks.push(task);
        }
        let _ = spawn_optional(approvals_cache, &mut tasks);
        targets.wait_until_ready().await.context("TargetSystem cache")?;
        adapters.wait_until_ready().await.context("Adapter cache")?;
        workflows.wait_until_ready().await.context("Workflow cache")?;
        // Targets are fingerprinted by their Secrets' versions: know them before
        // the first target is built, or every target is built twice.
        secrets_ready
            .wait_until_ready()
            .await
            .context("Secret metadata cache")?;

        let reporter = Reporter {
            controller: "tether".into(),
            instance: Some(identity.clone()),
        };
        let config = controller::Config::default().concurrency(options.concurrency);
        // Signed resync pushes (webhook) wake resources through this stream.
        let (resync, resync_requests) = ctrl::Resync::channel();
        let ctx = Arc::new(Context {
            client: client.clone(),
            registry: registry.clone(),
            mappings: ctrl::MappingCache::default(),
            targets: targets.clone(),
            adapters: adapters.clone(),
            resources: resources.clone().unwrap_or_else(|| reflector::store().0),
            recorder: crate::events::Recorder::new(client.clone(), reporter),
            metrics: metrics.clone(),
            resource_memory: Default::default(),
            workflows: workflows.clone(),
            runs: runs.clone().unwrap_or_else(|| reflector::store().0),
            approvals,
            run_memory: Default::default(),
            callback_base: callback_base.clone(),
            keys: Default::default(),
            resync,
            leading: leading_tx.subscribe(),
            shards: held.clone(),
        });

        // What was kept per object goes with the object.
        let reference_index = Arc::new(ctrl::external_resource::references::ReferenceIndex::default());
        let target_generations = Arc::new(ctrl::GenerationFilter::default());
        let adapter_generations = Arc::new(ctrl::GenerationFilter::default());
        if let Some(resources_gone) = resources_gone {
            forget_on_delete(resources_gone, {
                let (ctx, index) = (ctx.clone(), reference_index.clone());
                move |er| {
                    ctx.forget_resource(&er);
                    index.forget(&er);
                }
            });
        }
        if let Some(runs_gone) = runs_gone {
            forget_on_delete(runs_gone, {
                let ctx = ctx.clone();
                move |run| ctx.forget_run(&run)
            });
        }
        forget_on_delete(targets_gone, {
            let (ctx, generations) = (ctx.clone(), target_generations.clone());
            move |ts| {
                ctx.forget_target(&ts);
                generations.forget(ts.as_ref());
            }
        });
        forget_on_delete(adapters_gone, {
            let (ctx, generations) = (ctx.clone(), adapter_generations.clone());
            move |adapter| {
                ctx.forget_adapter(&adapter);
                generations.forget(adapter.as_ref());
            }
        });
        tasks.push(gauges(
            ctx.clone(),
            reference_index.clone(),
            target_generations.clone(),
            adapter_generations.clone(),
        ));

        // Sharded, the holder of shard 0 labels what has no shard yet.
        if held.count > 1 && !held.none() && held.holds_cluster_scoped() {
            let labeller = crate::shard::labeller::run(client.clone(), scope.clone(), held.count);
            tasks.push(tokio::spawn(labeller).abort_handle());
        }

        let (
            Some(resources),
            Some(runs),
            Some(resources_for_controller),
            Some(resources_for_references),
            Some(resources_for_runs),
            Some(runs_for_controller),
            Some(runs_for_workflows),
            Some(approvals_for_runs),
        ) = (
            resources,
            runs,
            resources_for_controller,
            resources_for_references,
            resources_for_runs,
            runs_for_controller,
            runs_for_workflows,
            approvals_for_runs,
        )
        else {
            // No shard held: caches for the webhook endpoint, no controller.
            return Ok(Self {
                ctx,
                controllers: None,
                stop: stop_tx,
                tasks,
            });
        };

        let store = resources.clone();
        let by_target = move |ts: Arc<TargetSystem>| {
            if !target_generations.changed(ts.as_ref()) {
                return vec![];
            }
            ctrl::external_resource::referencing(&store.state(), &ts.namespace().unwrap_or_default(), &ts.name_any())
        };
        let (store, targets_for_adapters) = (resources.clone(), targets.clone());
        let by_adapter = move |adapter: Arc<Adapter>| -> Vec<ObjectRef<ExternalResource>> {
            if !adapter_generations.changed(adapter.as_ref()) {
                return vec![];
            }
            let resources = store.state();
            targets_for_adapters
                .state()
                .iter()
                .filter(|ts| ts.spec.adapter_ref.name == adapter.name_any())
                .flat_map(|ts| {
                    ctrl::external_resource::referencing(
                        &resources,
                        &ts.namespace().unwrap_or_default(),
                        &ts.name_any(),
                    )
                })
                .collect()
        };
        // A changed ExternalResource wakes those that reference it (its id or
        // readiness may be what they wait for), and, while it is deleted, those
        // it references (their deletion waits for it). The index learns the
        // references from the same events, so no event scans the store.
        let index = reference_index.clone();
        let by_reference = move |changed: Arc<ExternalResource>| index.affected(&changed);
        let external_resources = Controller::for_shared_stream(resources_for_controller, resources.clone())
            .with_config(config.clone())
            .reconcile_all_on(once_synced(&resources))
            .reconcile_on(resync_requests)
            .watches_shared_stream(resources_for_references, by_reference)
            .watches_shared_stream(targets_for_resources, by_target)
            .watches_shared_stream(adapters_for_resources, by_adapter)
            .graceful_shutdown_on(stopped())
            .run(
                |o, c| ctrl::guard::reconcile(o, c, "ExternalResource", ctrl::external_resource::reconcile),
                ctrl::external_resource::error_policy,
                ctx.clone(),
            )
            .for_each(|_| async {});
        // Long waits (in-sync resources' next polls) are booked outside the
        // controller's scheduler and wake it through its trigger stream.
        let booked_polls = {
            let ctx = ctx.clone();
            async move {
                let wake = |namespace: &str, name: &str| ctrl::external_resource::wake_booked(&ctx, namespace, name);
                ctx.resource_memory.polls.run(wake).await;
            }
        };
        let external_resources = async move {
            futures::future::select(Box::pin(external_resources), Box::pin(booked_polls)).await;
        };
        let target_systems = Controller::for_shared_stream(targets_for_controller, target_store.clone())
            .with_config(config.clone())
            .reconcile_all_on(once_synced(&target_store))
            .graceful_shutdown_on(stopped())
            .run(
                |o, c| ctrl::guard::reconcile(o, c, "TargetSystem", ctrl::target_system::reconcile),
                ctrl::target_system::error_policy,
                ctx.clone(),
            )
            .for_each(|_| async {});
        // Cluster-scoped Adapters belong to shard 0.
        let adapters_controller = held.holds_cluster_scoped().then(|| {
            Controller::for_shared_stream(adapters_for_controller, adapters.clone())
                .with_config(config.clone())
                .reconcile_all_on(once_synced(&adapters))
                .graceful_shutdown_on(stopped())
                .run(
                    |o, c| ctrl::guard::reconcile(o, c, "Adapter", ctrl::adapter::reconcile),
                    ctrl::adapter::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| async {})
        });

        // A decision wakes the run it names.
        let by_approval = |approval: Arc<Approval>| {
            Some(
                ObjectRef::<WorkflowRun>::new(&approval.spec.run_ref.name)
                    .within(&approval.namespace().unwrap_or_default()),
            )
        };
        let workflow_runs = Controller::for_shared_stream(runs_for_controller, runs.clone())
            .with_config(config.clone())
            .reconcile_all_on(once_synced(&runs))
            .owns_shared_stream(resources_for_runs)
            .watches_shared_stream(approvals_for_runs, by_approval)
            .graceful_shutdown_on(stopped())
            .run(
                |o, c| ctrl::guard::reconcile(o, c, "WorkflowRun", ctrl::workflow_run::reconcile),
                ctrl::workflow_run::error_policy,
                ctx.clone(),
            )
            .for_each(|_| async {});
        // A run that finishes wakes its workflow (retention, a schedule's
        // history limits and concurrency policy).
        let by_run = |run: Arc<WorkflowRun>| {
            let finished = run
                .status
                .as_ref()
                .is_some_and(|s| crate::workflow::engine::is_terminal(s.phase));
            finished.then(|| {
                ObjectRef::<Workflow>::new(&run.spec.workflow_ref.name).within(&run.namespace().unwrap_or_default())
            })
        };
        let workflows_controller = Controller::for_shared_stream(workflows_for_controller, workflow_store.clone())
            .with_config(config.clone())
            .reconcile_all_on(once_synced(&workflow_store))
            .watches_shared_stream(runs_for_workflows, by_run)
            .graceful_shutdown_on(stopped())
            .run(
                |o, c| ctrl::guard::reconcile(o, c, "Workflow", ctrl::workflow::reconcile),
                ctrl::workflow::error_policy,
                ctx.clone(),
            )
            .for_each(|_| async {});

        let (namespaces, selector, concurrency) =
            (scope.namespaces.clone(), scope.selector.clone(), options.concurrency);
        let shards = held.shards.clone();
        let controllers = async move {
            // The controllers hear events from here on; what their caches
            // hold already they reconcile once when they start.
            let _ = leading_tx.send(true);
            // The reference index learns from the events the cache passes
            // on: it learns what was cached while quiet from the store (the
            // store is never older than an event passed on after this point).
            for er in resources.state() {
                let _ = reference_index.affected(&er);
            }
            tracing::info!(?namespaces, ?selector, ?shards, concurrency, "controllers running");
            let adapters_controller = async move {
                if let Some(adapters_controller) = adapters_controller {
                    adapters_controller.await;
                }
            };
            tokio::join!(
                external_resources,
                target_systems,
                adapters_controller,
                workflow_runs,
                workflows_controller
            );
        };
        Ok(Self {
            ctx,
            controllers: Some(controllers.boxed()),
            stop: stop_tx,
            tasks,
        })
    }
}

/// The watcher configuration of the objects `held` reconciles: the scope's
/// selector and the held shards' (none when no shard is held).
fn reconciled_config(scope: &Scope, held: &Held) -> Option<watcher::Config> {
    if held.none() {
        return None;
    }
    let selectors: Vec<String> = scope.selector.iter().cloned().chain(held.selector()).collect();
    Some(if selectors.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(&selectors.join(","))
    })
}

/// Runs a cache, if there is one; its store.
fn spawn_optional<K>(cache: Option<Cache<K>>, tasks: &mut Vec<tokio::task::AbortHandle>) -> Option<reflector::Store<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    cache.map(|cache| {
        let (store, task) = cache.spawn();
        tasks.push(task);
        store
    })
}

/// Memory follows the objects: the gauges say so (every 5 s).
fn gauges(
    ctx: Arc<Context>,
    index: Arc<ctrl::external_resource::references::ReferenceIndex>,
    targets_ready: Arc<ctrl::GenerationFilter>,
    adapters_ready: Arc<ctrl::GenerationFilter>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            let cached = [
                ("ExternalResource", ctx.resources.len()),
                ("WorkflowRun", ctx.runs.len()),
                ("TargetSystem", ctx.targets.len()),
                ("Adapter", ctx.adapters.len()),
                ("Workflow", ctx.workflows.len()),
                ("Approval", ctx.approvals.len()),
            ];
            for (kind, count) in cached {
                ctx.metrics
                    .cached_objects
                    .get_or_create(&crate::metrics::KindLabels { kind })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            let (resources, runs) = ctx.remembered();
            let remembered = [
                ("ExternalResource", resources + index.len()),
                ("WorkflowRun", runs),
                ("TargetSystem", targets_ready.len()),
                ("Adapter", adapters_ready.len()),
            ];
            for (kind, count) in remembered {
                ctx.metrics
                    .remembered_objects
                    .get_or_create(&crate::metrics::KindLabels { kind })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    })
    .abort_handle()
}

/// The trigger and store of a lookup kind's own controller: the shared
/// cache when it selects what is reconciled (no selector, unsharded); else
/// a cache of its own of the objects the selector and the held shards
/// select (lookups still see the whole scope).
fn reconciled_lookup<K>(
    shared: &mut Cache<K>,
    scope: &Scope,
    client: &Client,
    leading: &watch::Receiver<bool>,
    held: &Held,
    tasks: &mut Vec<tokio::task::AbortHandle>,
) -> (BoxStream<'static, Arc<K>>, reflector::Store<K>)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let Some(config) = reconciled_config(scope, held) else {
        return (futures::stream::empty().boxed(), reflector::store().0);
    };
    if scope.selector.is_none() && held.shards.is_none() {
        return (shared.applied().boxed(), shared.store());
    }
    let mut selected = Cache::<K>::watch(scope, client, config).quiet_until(leading.clone());
    let trigger = selected.applied().boxed();
    let (store, task) = selected.spawn();
    tasks.push(task);
    (trigger, store)
}

/// Yields once, when `store` has its first listing: the trigger that
/// reconciles every cached object when a controller starts (its cache was
/// quiet until then; see [`Cache::quiet_until`]).
fn once_synced<K>(store: &reflector::Store<K>) -> impl futures::Stream<Item = ()> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let store = store.clone();
    futures::stream::once(async move {
        let _ = store.wait_until_ready().await;
    })
}

/// Calls `forget` with each object the cache reports deleted.
fn forget_on_delete<K, S>(deleted: S, forget: impl Fn(Arc<K>) + Send + 'static)
where
    K: Send + Sync + 'static,
    S: futures::Stream<Item = Arc<K>> + Send + 'static,
{
    tokio::spawn(deleted.for_each(move |object| {
        forget(object);
        async {}
    }));
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
