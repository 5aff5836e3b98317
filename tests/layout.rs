//! The layout holds what docs/architecture.md promises: the controller's
//! dependency tree is what runs in the cluster (no simulator, no test
//! control plane, no certificate generator), and the pure workflow domain
//! reaches for no Kubernetes client, HTTP client or async runtime.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_controller_crate_depends_on_no_development_tooling() {
    let out = Command::new(env!("CARGO"))
        .current_dir(repo())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "-p",
            "tether",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.lines().any(|l| l.starts_with("kube ")), "unexpected tree:\n{tree}");
    for dev_only in ["rcgen ", "tempfile ", "tether-sim ", "tether-harness "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(dev_only)),
            "`{}` is in the controller's dependencies:\n{tree}",
            dev_only.trim()
        );
    }
}
