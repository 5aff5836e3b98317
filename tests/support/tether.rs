//! Running the real `tether run` binary against the test control plane, as
//! the controller's ServiceAccount identity, and `kubectl` helpers that fail
//! the test with diagnostics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ControlPlane;

/// The egress deny list of test controllers: the default without
/// loopback, where the simulators listen. The API server's own socket
/// stays refused (always on).
pub const TEST_EGRESS_DENY: &str = "169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128,::1/128";

/// A `tether run` process, killed when dropped.
pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub webhook_port: u16,
    args: Vec<String>,
    /// How it reaches the API server (default: the controller identity's).
    kubeconfig: Option<PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Controller {
    /// Starts `tether run --namespace <namespace> <extra>`, with
    /// [`TEST_EGRESS_DENY`] unless `extra` sets `--egress-deny`.
    pub fn start(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Self {
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.iter().any(|a| a.starts_with("--egress-deny")) {
            args.push("--egress-deny");
            args.push(TEST_EGRESS_DENY);
        }
        Self::start_exactly(cp, namespace, &args)
    }

    /// Starts `tether run --namespace <namespace> <extra>` with nothing
    /// added: the controller's own egress default (loopback denied).
    pub fn start_with_default_egress(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Self {
        Self::start_exactly(cp, namespace, extra)
    }

    /// [`Self::start`] reaching the API server through `kubeconfig` (a
    /// proxy's).
    pub fn start_with_kubeconfig(cp: &ControlPlane, namespace: &str, extra: &[&str], kubeconfig: PathBuf) -> Self {
        let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), namespace.into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(["--egress-deny".to_owned(), TEST_EGRESS_DENY.to_owned()]);
        let mut controller = Self::unstarted(cp, namespace, args);
        controller.kubeconfig = Some(kubeconfig);
        controller.restart(cp);
        controller
    }

    fn start_exactly(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), namespace.into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut controller = Self::unstarted(cp, namespace, args);
        controller.restart(cp);
        controller
    }

    fn unstarted(cp: &ControlPlane, namespace: &str, args: Vec<String>) -> Self {
        let log = cp
            .dir
            .join(format!("tether-{namespace}-{}.log", uuid::Uuid::new_v4().simple()));
        Controller {
            child: None,
            log,
            metrics_port: 0,
            webhook_port: 0,
            args,
            kubeconfig: None,
        }
    }

    /// Starts the process again (after `kill`), appending to the same log.
    pub fn restart(&mut self, cp: &ControlPlane) {
        self.metrics_port = free_port();
        self.webhook_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        // setpriv --pdeathsig: the controller dies with the test thread that
        // started it, even if the test binary is killed.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(env!("CARGO_BIN_EXE_tether"))
            .args(&self.args)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.metrics_port)])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", self.webhook_port)])
            .env(
                "KUBECONFIG",
                self.kubeconfig.clone().unwrap_or_else(|| cp.kubeconfig("controller")),
            )
            .env("RUST_LOG", "info,tether=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("tether run starts");
        self.child = Some(child);
    }

    /// SIGKILL: no graceful shutdown, no last status write.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The pid of the `tether run` process (setpriv execs it in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of `/metrics`, waiting for the server to come up.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reqwest::get(&url).await {
                Ok(r) => return r.text().await.unwrap_or_default(),
                Err(e) if Instant::now() > deadline => panic!("no /metrics: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kubectl` helpers that fail the test with diagnostics.
pub trait KubectlExt {
    fn apply_json(&self, namespace: &str, manifest: &Value);
    fn wait_for(&self, namespace: &str, object: &str, condition: &str, timeout: &str, controller: Option<&Controller>);
    fn wait_all(
        &self,
        namespace: &str,
        kind: &str,
        condition: &str,
        timeout: &str,
        controller: Option<&Controller>,
    ) -> usize;
    fn jsonpath(&self, namespace: &str, object: &str, path: &str) -> String;
}

impl KubectlExt for ControlPlane {
    /// `kubectl apply` of a JSON manifest as the admin.
    fn apply_json(&self, namespace: &str, manifest: &Value) {
        super::assert_ok(&self.apply_as("admin", namespace, &manifest.to_string()));
    }

    /// `kubectl wait --for=<condition> <object>`, failing the test with
    /// the object's YAML and the controller's log when it times out.
    fn wait_for(&self, namespace: &str, object: &str, condition: &str, timeout: &str, controller: Option<&Controller>) {
        wait(self, namespace, &[object], condition, timeout, controller);
    }

    /// `kubectl wait --all` for every object of a kind, with the same
    /// diagnostics. Returns how many objects met the condition.
    fn wait_all(
        &self,
        namespace: &str,
        kind: &str,
        condition: &str,
        timeout: &str,
        controller: Option<&Controller>,
    ) -> usize {
        wait(self, namespace, &["--all", kind], condition, timeout, controller)
    }

    /// One field of an object, by JSONPath.
    fn jsonpath(&self, namespace: &str, object: &str, path: &str) -> String {
        let out = self.kubectl(&["get", "-n", namespace, object, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The last `max_bytes` (or a little less) of `text`, cut on a char boundary.
fn tail(text: &str, max_bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(max_bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default()
}

/// Runs `kubectl wait`; on failure panics with what was waited for, the
/// objects' YAML and the controller's log (both cut to 6,000 bytes).
fn wait(
    cp: &ControlPlane,
    namespace: &str,
    what: &[&str],
    condition: &str,
    timeout: &str,
    controller: Option<&Controller>,
) -> usize {
    let (for_, timeout_) = (format!("--for={condition}"), format!("--timeout={timeout}"));
    let mut args = vec!["wait", "-n", namespace, for_.as_str(), timeout_.as_str()];
    args.extend_from_slice(what);
    let out = cp.kubectl(&args);
    if !out.status.success() {
        let object = what.last().copied().unwrap_or_default();
        let yaml = cp.kubectl(&["get", "-n", namespace, object, "-o", "yaml"]);
        let yaml = String::from_utf8_lossy(&yaml.stdout);
        let log = controller.map(Controller::logs).unwrap_or_default();
        panic!(
            "{} did not reach {condition} within {timeout}: {}\n--- objects ---\n{}\n--- controller log ---\n{}",
            what.join(" "),
            String::from_utf8_lossy(&out.stderr),
            ::tether::text::prefix(&yaml, 6000),
            tail(&log, 6000)
        );
    }
    String::from_utf8_lossy(&out.stdout).lines().count()
}
