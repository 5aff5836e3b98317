//! The `tether` binary: one command, several jobs.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tether", version, about = "Orchestrate external systems from Kubernetes")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TETHER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (Adapter, TargetSystem, ExternalResource,
    /// Workflow, WorkflowRun) and the webhook endpoint.
    Run(Box<tether::run::RunOptions>),
    /// Say what Tether would do at each target for these ExternalResources
    /// (manifests or the cluster's) — create, update field by field, adopt,
    /// nothing, delete — reading only. Exit code: 0 no changes, 2 changes
    /// pending, 1 error.
    Plan(tether::plan::cluster::PlanOptions),
    /// Inspect workflow runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Print every CustomResourceDefinition as YAML (or write one file per
    /// CRD into a directory).
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Write the API reference (Markdown, every field's description)
        /// to this file instead.
        #[arg(long, conflicts_with = "out_dir")]
        reference: Option<PathBuf>,
    },
    /// Start a local sandbox: control plane, simulator, controller, and the
    /// examples converging. Ctrl-C stops everything.
    #[cfg(feature = "dev")]
    Sandbox(tether::sandbox::SandboxOptions),
    /// Run the target simulator: a SaaS-like HTTP API with fault injection.
    #[cfg(feature = "dev")]
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090", env = "TETHER_SIM_LISTEN")]
        listen: std::net::SocketAddr,
        /// Accept `Authorization: Bearer <token>` (repeatable). With neither
        /// tokens nor keys the API is open.
        #[arg(long = "token")]
        tokens: Vec<String>,
        /// Accept `X-API-Key: <key>` (repeatable).
        #[arg(long = "api-key")]
        api_keys: Vec<String>,
    },
    /// Evaluate expressions for `tether run` (its sandbox starts these).
    #[command(hide = true)]
    ExprWorker {
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        memory_bytes: u64,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs: name, workflow, phase, start, duration, the step that
    /// failed.
    List {
        /// Only the runs of this Workflow.
        #[arg(short, long)]
        workflow: Option<String>,
        /// The namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Draw a run's DAG with the state and outputs of each step.
    Describe {
        /// The WorkflowRun's name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Draw a run's DAG again whenever it changes, until the run ends.
    Watch {
        /// The WorkflowRun's name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Retry a run that failed, was compensated or was cancelled: a new run
    /// (spec.retryOf) keeps the steps it finished and runs the others.
    Retry {
        /// The WorkflowRun to retry.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Cancel a run (spec.cancel): its completed steps are undone.
    Cancel {
        /// The WorkflowRun to cancel.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

/// The exit of a `tether plan` whose outcome is not "no changes".
#[derive(Debug)]
struct PlanExit(tether::plan::Outcome);

impl std::fmt::Display for PlanExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plan: {:?}", self.0)
    }
}

impl std::error::Error for PlanExit {}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs on stderr (`RUST_LOG`, default `info`) and, for `tether run
/// --otlp-endpoint`, the OTLP trace layer; without an endpoint no trace
/// layer exists. Trace spans stay out of the logs.
fn logs_and_traces(cli: &Cli) -> anyhow::Result<Option<tether::telemetry::Traces>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to a file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match cli.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let not_trace = filter_fn(|meta| meta.target() != tether::telemetry::TARGET);
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter.and(not_trace)));
    let endpoint = match &cli.command {
        Command::Run(options) => options.otlp_endpoint.as_deref(),
        _ => None,
    };
    let Some(endpoint) = endpoint else {
        registry.init();
        return Ok(None);
    };
    let (layer, traces) = tether::telemetry::layer(endpoint, tokio::runtime::Handle::current())
        .context("setting up the trace exporter (--otlp-endpoint)")?;
    let only_traces = filter_fn(|meta| meta.is_span() && meta.target() == tether::telemetry::TARGET);
    registry.with(layer.with_filter(only_traces)).init();
    tracing::info!("exporting traces over OTLP (--otlp-endpoint)");
    Ok(Some(traces))
}

/// `tether runs …`: each command with a client and a namespace.
async fn runs(command: RunsCommand) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let namespace = |n: Option<String>| n.unwrap_or_else(|| client.default_namespace().to_owned());
    use tether::runs;
    match command {
        RunsCommand::List { workflow, namespace: n } => {
            runs::list(client.clone(), &namespace(n), workflow.as_deref()).await
        }
        RunsCommand::Describe { name, namespace: n } => runs::describe(client.clone(), &namespace(n), &name).await,
        RunsCommand::Watch { name, namespace: n } => runs::watch(client.clone(), &namespace(n), &name).await,
        RunsCommand::Retry { name, namespace: n } => runs::retry(client.clone(), &namespace(n), &name).await,
        RunsCommand::Cancel { name, namespace: n } => runs::cancel(client.clone(), &namespace(n), &name).await,
    }
}

/// jemalloc, with the options `.cargo/config.toml` builds in.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    match main_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `tether plan` found changes (or could not plan one resource): its
        // plan is printed, the code says which.
        Err(error) if error.downcast_ref::<PlanExit>().is_some() => {
            std::process::ExitCode::from(error.downcast_ref::<PlanExit>().map_or(1, |e| e.0.code()))
        }
        Err(error) => {
            // What went wrong, cause by cause, for people: not a debug dump.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_result() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::ExprWorker {
        timeout_ms,
        memory_bytes,
    } = cli.command
    {
        // No runtime, no logger: a worker only evaluates (see expr::sandbox).
        tether::expr::sandbox::worker_main(std::time::Duration::from_millis(timeout_ms), memory_bytes)?;
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    tether::install_crypto_provider();
    let traces = logs_and_traces(&cli)?;
    match cli.command {
        Command::Run(options) => {
            let result = tether::run::run(*options).await;
            if let Some(traces) = traces {
                // The flush blocks on exports that run on this runtime.
                let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
            }
            result?
        }
        Command::Plan(options) => match tether::plan::cluster::main(options).await? {
            tether::plan::Outcome::NoChanges => {}
            outcome => return Err(PlanExit(outcome).into()),
        },
        #[cfg(feature = "dev")]
        Command::Sandbox(options) => tether::sandbox::run(options).await?,
        Command::Runs { command } => runs(command).await?,
        Command::Crd {
            reference: Some(path), ..
        } => std::fs::write(&path, tether::crd::reference()).with_context(|| format!("writing {}", path.display()))?,
        Command::Crd { out_dir: None, .. } => print!("{}", tether::crd::all_yaml()?),
        Command::Crd { out_dir: Some(dir), .. } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in tether::api::crds() {
                let path = dir.join(tether::crd::file_name(&crd));
                std::fs::write(&path, tether::crd::to_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        #[cfg(feature = "dev")]
        Command::Sim {
            listen,
            tokens,
            api_keys,
        } => tether::sandbox::simulator(listen, tokens, api_keys).await?,
        Command::ExprWorker { .. } => anyhow::bail!("expr-worker runs without a runtime"),
    }
    Ok(())
}
