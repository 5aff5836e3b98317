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
    /// Draw a run's DAG with the state of each step.
    Describe {
        /// The WorkflowRun's name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    match main_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to a file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Run(options) => tether::run::run(*options).await?,
        #[cfg(feature = "dev")]
        Command::Sandbox(options) => tether::sandbox::run(options).await?,
        Command::Runs {
            command: RunsCommand::Describe { name, namespace },
        } => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let api: kube::Api<tether::api::WorkflowRun> = kube::Api::namespaced(client, &namespace);
            let run = api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading WorkflowRun {namespace}/{name}"))?
                .ok_or_else(|| anyhow::anyhow!("WorkflowRun {name:?} not found in namespace {namespace:?}"))?;
            print!("{}", tether::describe::describe(&run, chrono::Utc::now()));
        }
        Command::Crd { out_dir: None } => print!("{}", tether::crd::all_yaml()?),
        Command::Crd { out_dir: Some(dir) } => {
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
