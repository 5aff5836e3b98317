//! `tether sandbox`: everything on one machine, for trying Tether and for
//! demos. It starts a real control plane ([`ControlPlane`]), the simulator
//! on `127.0.0.1:8090` (the examples' TargetSystem points there, bearer
//! token `demo-token`), and `tether run` in-process as the controller's
//! ServiceAccount identity; applies `examples/`; and shows `kubectl get
//! tether` as the resources converge, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use tether_harness::ControlPlane;

use crate::run::{RunOptions, run_with_client};
use tether_sim as sim;

/// Bearer token the sandbox's simulator accepts (the examples' Secret).
pub const DEMO_TOKEN: &str = "demo-token";

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxOptions {
    /// The Tether checkout (its crds/, deploy/, scripts/ and examples/).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Namespace the examples go to.
    #[arg(long, default_value = "tether-demo")]
    pub namespace: String,
    /// Address of the simulator (the examples expect 127.0.0.1:8090).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub sim_addr: SocketAddr,
    /// Exit (0) once every ExternalResource in the namespace is Ready and
    /// every WorkflowRun has succeeded or waits for an approval,
    /// instead of running until Ctrl-C; exit 1 if that takes longer than
    /// this many seconds.
    #[arg(long)]
    pub exit_when_ready: Option<u64>,
}

pub async fn run(options: SandboxOptions) -> anyhow::Result<()> {
    let repo = options
        .repo
        .canonicalize()
        .with_context(|| format!("{} is not a Tether checkout", options.repo.display()))?;
    eprintln!("==> starting a local control plane (first run builds it: several minutes)");
    let cp = tokio::task::spawn_blocking({
        let repo = repo.clone();
        move || ControlPlane::start(&repo)
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    eprintln!("    export KUBECONFIG={}", cp.admin_kubeconfig().display());
    eprintln!("    kubectl: {}", cp.bin_dir.join("kubectl").display());

    eprintln!(
        "==> starting the simulator on {} (token {DEMO_TOKEN})",
        options.sim_addr
    );
    let simulator = sim::start(
        options.sim_addr,
        sim::Credentials {
            bearer_tokens: vec![DEMO_TOKEN.into()],
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("binding the simulator to {}", options.sim_addr))?;

    let ns = options.namespace.clone();
    check(&cp.kubectl(&["create", "namespace", &ns]), "creating the namespace")?;
    eprintln!(
        "==> starting tether run (namespace {ns}) as {}",
        tether_harness::CONTROLLER_USER
    );
    let client = cp.try_client("controller").await.map_err(anyhow::Error::msg)?;
    let run_options = RunOptions {
        namespace: vec![ns.clone()],
        selector: None,
        concurrency: 16,
        metrics_addr: "127.0.0.1:0".parse()?,
        webhook_addr: "127.0.0.1:0".parse()?,
        callback_url: None,
        webhook_tolerance: crate::webhook::DEFAULT_TOLERANCE,
        leader_election: false,
        lease_name: "tether-controller".into(),
        lease_namespace: None,
        lease_duration: Duration::from_secs(15),
        shards: 1,
        identity: Some("sandbox".into()),
        expr_timeout: Duration::from_secs(1),
        expr_memory_mib: 256,
        expr_workers: 2,
        expr_worker_exe: None,
        // The simulator runs on loopback: the default list without it.
        egress_deny: Some(crate::http::egress::DenyList(
            crate::http::egress::default_deny()
                .into_iter()
                .filter(|net| !net.contains(&std::net::IpAddr::from([127, 0, 0, 1])))
                .collect(),
        )),
        otlp_endpoint: None,
        api_server_url: Some(cp.server.clone()),
    };
    let controller = tokio::spawn(run_with_client(client, run_options));

    // Approvals last: an Approval without `runRef.uid` counts only for a
    // run created no later than itself (docs/workflows.md, Approvals).
    let (approvals, manifests) = examples(&repo.join("examples"))?;
    for (what, files) in [("examples/", manifests), ("examples/approval-*", approvals)] {
        eprintln!("==> kubectl apply -f {what}");
        let mut args: Vec<String> = vec!["apply".into(), "-n".into(), ns.clone()];
        for file in &files {
            args.push("-f".into());
            args.push(file.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !files.is_empty() {
            check(&cp.kubectl(&args), "applying examples/")?;
        }
    }

    let started = Instant::now();
    let mut shown = Rows::default();
    let mut converged = false;
    eprintln!("==> kubectl get tether -n {ns}, then only what changes:");
    loop {
        let table = String::from_utf8_lossy(&cp.kubectl(&["get", "tether", "-n", &ns]).stdout).into_owned();
        for line in shown.changed(&table) {
            println!("{:>4}s  {line}", started.elapsed().as_secs());
        }
        if !converged && let Some(summary) = settled(&cp, &ns, &simulator) {
            converged = true;
            eprintln!(
                "==> every ExternalResource is Ready and every WorkflowRun settled after {}s; {summary}",
                started.elapsed().as_secs()
            );
            if options.exit_when_ready.is_some() {
                return Ok(());
            }
            eprintln!(
                "==> next: in another terminal, `export KUBECONFIG={}`, then follow README.md's tutorials \
                 (drift and deletion, objects that depend on each other, a workflow with an approval). Ctrl-C stops.",
                cp.admin_kubeconfig().display()
            );
        }
        if let Some(limit) = options.exit_when_ready
            && started.elapsed() > Duration::from_secs(limit)
        {
            let details = cp.kubectl(&["get", "tts,xr,twr", "-n", &ns, "-o", "yaml"]);
            eprintln!("{}", String::from_utf8_lossy(&details.stdout));
            anyhow::bail!("ExternalResources not Ready or WorkflowRuns not settled after {limit}s");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if controller.is_finished() {
            anyhow::bail!("the controller stopped");
        }
    }
    eprintln!("==> stopping (the control plane is removed once this process exits)");
    Ok(())
}

/// When everything has settled, what the simulator holds: every
/// ExternalResource Ready, every WorkflowRun succeeded or waiting at a gate
/// nobody has decided yet.
fn settled(cp: &ControlPlane, ns: &str, simulator: &sim::SimHandle) -> Option<String> {
    let ready = cp.kubectl(&["wait", "-n", ns, "--for=condition=Ready", "--all", "xr", "--timeout=1s"]);
    if !ready.status.success() {
        return None;
    }
    let runs = cp.kubectl(&[
        "get",
        "twr",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{' '}{end}",
    ]);
    let runs = String::from_utf8_lossy(&runs.stdout).into_owned();
    let approved = cp.kubectl(&[
        "get",
        "approvals",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[*].spec.runRef.name}",
    ]);
    let approved = String::from_utf8_lossy(&approved.stdout).into_owned();
    // A run settles when it succeeded, or waits at a gate nobody has
    // decided yet (one the examples approve goes on).
    let phases: Vec<&str> = runs
        .split_whitespace()
        .map(|entry| entry.split_once('=').unwrap_or((entry, "")))
        .map(|(name, phase)| {
            let waits_for_nobody = phase == "WaitingForApproval" && !approved.split_whitespace().any(|a| a == name);
            if phase == "Succeeded" || waits_for_nobody {
                Some(phase)
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    Some(format!(
        "runs: {}; simulator holds {} contact(s), {} customer(s), {} order(s) of a known customer",
        if phases.is_empty() {
            "none".to_owned()
        } else {
            phases.join(" ")
        },
        simulator.objects("contacts").len(),
        simulator.objects("customers").len(),
        orders_of_known_customers(&simulator.objects("customers"), &simulator.objects("orders")),
    ))
}

/// The rows of `kubectl get` last shown, by object, without their AGE: a
/// row is shown again only when something else in it changed.
#[derive(Default)]
struct Rows {
    seen: std::collections::HashMap<String, String>,
}

impl Rows {
    /// The lines of `table` that are new or changed (headers once).
    fn changed(&mut self, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in table.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            let Some(key) = fields.first().map(|k| (*k).to_owned()) else {
                continue;
            };
            if fields.last().is_some_and(|age| is_age(age)) {
                fields.pop();
            }
            let content = fields.join(" ");
            let header = key == "NAME";
            let key = if header { content.clone() } else { key };
            if self.seen.get(&key) != Some(&content) {
                self.seen.insert(key, content);
                out.push(line.trim_end().to_owned());
            }
        }
        out
    }
}

/// `12s`, `3m4s`, `2d5h`: kubectl's AGE column.
fn is_age(text: &str) -> bool {
    !text.is_empty()
        && text.chars().next().is_some_and(|c| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, 's' | 'm' | 'h' | 'd' | 'y'))
}

/// Orders whose `customerId` is the id of a customer: the example's order
/// was created with the id its reference resolved to.
fn orders_of_known_customers(customers: &[serde_json::Value], orders: &[serde_json::Value]) -> usize {
    orders
        .iter()
        .filter(|o| {
            customers
                .iter()
                .any(|c| c.get("id").is_some() && c.get("id") == o.get("customerId"))
        })
        .count()
}

fn check(out: &std::process::Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        anyhow::bail!("{what}: {}", String::from_utf8_lossy(&out.stderr))
    }
}

/// The manifests of `examples/` (YAML files, sorted), Approvals apart.
fn examples(dir: &std::path::Path) -> anyhow::Result<(Vec<std::path::PathBuf>, Vec<std::path::PathBuf>)> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
        .collect();
    files.sort();
    Ok(files.into_iter().partition(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("approval-"))
    }))
}

/// `tether sim`: the simulator on its own, until Ctrl-C. With neither
/// `tokens` nor `api_keys` its API is open.
pub async fn simulator(listen: SocketAddr, tokens: Vec<String>, api_keys: Vec<String>) -> anyhow::Result<()> {
    let credentials = sim::Credentials {
        bearer_tokens: tokens,
        api_keys,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let state = std::sync::Arc::new(sim::SimState::new(credentials));
    tracing::info!(addr = %listener.local_addr()?, "simulator listening");
    sim::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_that_changed_are_shown_again_and_age_alone_is_no_change() {
        let mut rows = Rows::default();
        let first = "NAME   READY   AGE\nexternalresource.tether.dev/ada   False   3s\n";
        assert_eq!(rows.changed(first).len(), 2);
        // Two seconds later only the AGE moved: nothing to show.
        assert!(
            rows.changed("NAME   READY   AGE\nexternalresource.tether.dev/ada   False   5s\n")
                .is_empty()
        );
        let ready = rows.changed("NAME   READY   AGE\nexternalresource.tether.dev/ada   True   7s\n");
        assert_eq!(ready, vec!["externalresource.tether.dev/ada   True   7s"]);
        assert!(is_age("1m30s") && is_age("2d") && !is_age("True") && !is_age("contact-000001"));
    }
}
