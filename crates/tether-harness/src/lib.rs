//! A real, local control plane — etcd and kube-apiserver built from their
//! upstream Go modules by `scripts/control-plane.sh` — for Tether's tests,
//! benchmarks and `tether sandbox`. Development tooling: the controller
//! crate depends on it only with its `dev` feature. It starts on free loopback ports in a temporary
//! directory, with generated certificates and static tokens for four
//! identities (admin, the controller's ServiceAccount user, and two
//! ordinary users), installs Tether's CRDs and the rendered chart with the
//! real `kubectl`, and hands out clients and kubeconfigs.
//!
//! Processes are stopped — and the directory removed — by a reaper process
//! that watches the process that started them, so cleanup happens however
//! that process ends (a panicking test, Ctrl-C, SIGKILL).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Token of the cluster admin (`system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token";
/// Token of the controller's identity, a ServiceAccount-like user bound to
/// the controller's ClusterRole (subject to API Priority and Fairness).
pub const CONTROLLER_TOKEN: &str = "controller-token";
/// User name of the controller identity.
pub const CONTROLLER_USER: &str = "system:serviceaccount:tether-system:tether";
/// Tokens of two ordinary users, for RBAC tests.
pub const ALICE_TOKEN: &str = "alice-token";
pub const BOB_TOKEN: &str = "bob-token";

pub struct ControlPlane {
    pub dir: PathBuf,
    pub server: String,
    pub bin_dir: PathBuf,
    pub repo: PathBuf,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The Tether checkout this crate is part of (`crates/tether-harness` is
/// two levels below it): its scripts, CRDs and chart.
pub fn checkout() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/control-plane.sh").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

impl ControlPlane {
    /// One control plane per process, started on first use: what a test
    /// binary shares between its tests (each takes its own namespace).
    /// Panics when it cannot start, with the reason: tests cannot go on.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            ControlPlane::start(&checkout()).unwrap_or_else(|e| panic!("control plane did not start: {e}"))
        })
    }

    /// Starts a control plane with the CRDs and chart of the checkout at
    /// `repo` installed.
    pub fn start(repo: &Path) -> Result<ControlPlane, String> {
        let cp = Self::start_empty(repo)?;
        cp.install_crds()?;
        Ok(cp)
    }

    /// Starts a control plane with nothing of Tether's installed: what a
    /// cluster looks like before `helm install`.
    pub fn start_empty(repo: &Path) -> Result<ControlPlane, String> {
        let repo = repo.to_path_buf();
        let bin_dir = build_binaries(&repo)?;
        let dir = tempfile::Builder::new()
            .prefix("tether-cp-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        write_credentials(&dir)?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn(
            &bin_dir.join("etcd"),
            &[
                "--data-dir",
                &dir.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            &dir.join("etcd.log"),
        )?;
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let apiserver = spawn(
            &bin_dir.join("kube-apiserver"),
            &[
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
                "--cert-dir",
                &d("certs"),
                "--tls-cert-file",
                &d("serving.crt"),
                "--tls-private-key-file",
                &d("serving.key"),
                "--token-auth-file",
                &d("tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://tether.test",
                "--service-account-key-file",
                &d("sa.pub"),
                "--service-account-signing-key-file",
                &d("sa.key"),
                "--service-cluster-ip-range",
                "10.96.0.0/24",
                "--disable-admission-plugins",
                "ServiceAccount",
                "--v",
                "1",
            ],
            &dir.join("kube-apiserver.log"),
        )?;
        start_reaper(&dir, &[etcd, apiserver])?;

        let server = format!("https://127.0.0.1:{api_port}");
        for (name, token) in [
            ("admin", ADMIN_TOKEN),
            ("controller", CONTROLLER_TOKEN),
            ("alice", ALICE_TOKEN),
            ("bob", BOB_TOKEN),
        ] {
            write_kubeconfig(
                &dir.join(format!("{name}.kubeconfig")),
                &server,
                &dir.join("ca.crt"),
                token,
            )?;
        }
        let cp = ControlPlane {
            dir,
            server,
            bin_dir,
            repo,
        };
        cp.wait_ready()?;
        Ok(cp)
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready after 120s: {}\n--- apiserver log tail ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail(&self.dir.join("kube-apiserver.log"))
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn install_crds(&self) -> Result<(), String> {
        let crds = self.repo.join("crds");
        let apply = self.kubectl(&["apply", "--server-side", "-f", &crds.to_string_lossy()]);
        if !apply.status.success() {
            return Err(format!("installing CRDs: {}", String::from_utf8_lossy(&apply.stderr)));
        }
        let wait = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=tether",
        ]);
        if !wait.status.success() {
            return Err(format!(
                "CRDs not established: {}",
                String::from_utf8_lossy(&wait.stderr)
            ));
        }
        // The rendered chart, as a user would install it: its ServiceAccount
        // and RBAC are what the controller identity (a static token with the
        // ServiceAccount's user name) is allowed to do in every test.
        let ns = self.kubectl(&["create", "namespace", "tether-system"]);
        if !ns.status.success() {
            return Err(format!(
                "creating tether-system: {}",
                String::from_utf8_lossy(&ns.stderr)
            ));
        }
        let chart = self.repo.join("deploy/tether.yaml");
        let chart = self.kubectl(&["apply", "-f", &chart.to_string_lossy()]);
        if !chart.status.success() {
            return Err(format!(
                "applying deploy/tether.yaml: {}",
                String::from_utf8_lossy(&chart.stderr)
            ));
        }
        self.wait_for_approval_policy()
    }

    /// The chart's MutatingAdmissionPolicy is loaded, and resolves the
    /// Approval kind by its own discovery, a few seconds after it and the
    /// CRD are created (meanwhile an Approval passes unmutated, or fails
    /// with 503). Waits until a server-side dry run of an Approval comes
    /// back with `decidedBy` set.
    fn wait_for_approval_policy(&self) -> Result<(), String> {
        let approval = r#"{"apiVersion": "tether.dev/v1alpha1", "kind": "Approval",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {"runRef": {"name": "none"}, "step": "none", "decision": "Approve"}}"#;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let probe = self.kubectl_as(
                "admin",
                &[
                    "create",
                    "--dry-run=server",
                    "-o",
                    "jsonpath={.spec.decidedBy}",
                    "-f",
                    "-",
                ],
                Some(approval),
            );
            // Passing admission is not enough: before the policy is loaded an
            // Approval passes unmutated. Ready means the policy set decidedBy.
            if probe.status.success() && !probe.stdout.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the Approval admission policy is not ready: {}",
                    String::from_utf8_lossy(&probe.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kubeconfig of the cluster admin.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Kubeconfig of a named identity: `admin`, `controller`, `alice`, `bob`.
    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.kubeconfig"))
    }

    /// Runs the real `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as("admin", args, None)
    }

    /// Runs the real `kubectl` as `who`, with `stdin` piped in if given.
    pub fn kubectl_as(&self, who: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig(who))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let failed = |e: std::io::Error| Output {
            status: std::process::ExitStatus::default(),
            stdout: vec![],
            stderr: format!("running kubectl: {e}").into_bytes(),
        };
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => return failed(e),
        };
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            if let Err(e) = pipe.write_all(input.as_bytes()) {
                return failed(e);
            }
        }
        child.wait_with_output().unwrap_or_else(failed)
    }

    /// `kubectl apply -f -` of a manifest as `who`.
    pub fn apply_as(&self, who: &str, namespace: &str, manifest: &str) -> Output {
        self.kubectl_as(who, &["apply", "-n", namespace, "-f", "-"], Some(manifest))
    }

    /// Grants the controller identity the RBAC of the chart rendered with
    /// `--set shards=<shards>` (this control plane has the default
    /// rendering, `shards: 1`): the label patches of the holder of shard
    /// 0 and the deletion of member Leases that replicas running
    /// `--shards` above 1 need. Renders the ClusterRole and the
    /// leader-election Role with the checkout's chart (`scripts/helm.sh`
    /// builds helm once) and applies them as the admin; returns the
    /// rendered manifest.
    pub fn grant_sharding_rbac(&self, shards: u32) -> Result<String, String> {
        let helm = Command::new("bash")
            .arg(self.repo.join("scripts/helm.sh"))
            .output()
            .map_err(|e| format!("running scripts/helm.sh: {e}"))?;
        if !helm.status.success() {
            return Err(format!("scripts/helm.sh: {}", String::from_utf8_lossy(&helm.stderr)));
        }
        let helm = String::from_utf8_lossy(&helm.stdout).trim().to_owned();
        let rendered = Command::new(&helm)
            .arg("template")
            .arg("tether")
            .arg(self.repo.join("charts/tether"))
            .args(["--namespace", "tether-system", "--set", &format!("shards={shards}")])
            .args(["--show-only", "templates/clusterrole.yaml"])
            .args(["--show-only", "templates/leader-election.yaml"])
            .args(["--show-only", "templates/shard-label-policy.yaml"])
            .output()
            .map_err(|e| format!("running {helm}: {e}"))?;
        if !rendered.status.success() {
            return Err(format!("helm template: {}", String::from_utf8_lossy(&rendered.stderr)));
        }
        let rendered = String::from_utf8_lossy(&rendered.stdout).into_owned();
        let applied = self.apply_as("admin", "tether-system", &rendered);
        if !applied.status.success() {
            return Err(format!(
                "applying the sharded RBAC: {}",
                String::from_utf8_lossy(&applied.stderr)
            ));
        }
        Ok(rendered)
    }

    /// A client for `who` (`admin`, `controller`, `alice`, `bob`).
    pub async fn try_client(&self, who: &str) -> Result<kube::Client, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(who)).map_err(|e| e.to_string())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }

    /// A client for `who`, for tests: panics with the reason.
    pub async fn client(&self, who: &str) -> kube::Client {
        self.try_client(who)
            .await
            .unwrap_or_else(|e| panic!("client for {who}: {e}"))
    }

    /// Creates a fresh namespace `<prefix>-<random>` (one per test); panics
    /// with kubectl's message when it cannot.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(8)
                .collect::<String>()
        );
        let out = self.kubectl(&["create", "namespace", &name]);
        assert!(
            out.status.success(),
            "creating namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        name
    }
}

fn build_binaries(repo: &Path) -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(repo.join("scripts/control-plane.sh"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running scripts/control-plane.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/control-plane.sh failed ({})", out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn spawn(binary: &Path, args: &[&str], log: &Path) -> Result<u32, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    Ok(child.id())
}

/// Stops the processes and removes the directory once this test binary has
/// exited, however it exited.
fn start_reaper(dir: &Path, pids: &[u32]) -> Result<(), String> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill {pids} 2>/dev/null; sleep 2; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
        parent = std::process::id(),
        pids = pids.join(" "),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("starting the reaper: {e}"))
}

fn write_credentials(dir: &Path) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tether-test-ca");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().map_err(e)?;
    let mut serving = CertificateParams::new(vec!["localhost".to_owned()]).map_err(e)?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().map_err(|_| "ip")?));
    let serving_cert = serving.signed_by(&serving_key, &issuer).map_err(e)?;

    let sa_key = KeyPair::generate().map_err(e)?;
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("serving.crt", serving_cert.pem()),
        ("serving.key", serving_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
        (
            "tokens.csv",
            format!(
                "{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n\
                 {CONTROLLER_TOKEN},{CONTROLLER_USER},uid-controller,\"system:serviceaccounts,system:serviceaccounts:tether-system\"\n\
                 {ALICE_TOKEN},alice,uid-alice,\"\"\n\
                 {BOB_TOKEN},bob,uid-bob,\"\"\n"
            ),
        ),
    ];
    for (name, content) in files {
        std::fs::write(dir.join(name), content).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(dir.join("certs")).map_err(|e| e.to_string())
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<(), String> {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: tether-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: tether-test\n  context:\n    cluster: tether-test\n    user: user\n\
         current-context: tether-test\n",
        ca = ca.display()
    );
    std::fs::write(path, config).map_err(|e| e.to_string())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
