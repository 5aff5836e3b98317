//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fixtures;
pub mod gone_proxy;
pub mod tether;

#[allow(unused_imports)]
pub use tether::KubectlExt;
pub use tether_harness::ControlPlane;

/// Asserts that a command succeeded, showing its output when it did not.
#[track_caller]
pub fn assert_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Binds `user` to the `tether-approver` ClusterRole in `namespace`.
pub fn bind_approver(cp: &ControlPlane, namespace: &str, user: &str) {
    assert_ok(&cp.kubectl(&[
        "create",
        "rolebinding",
        &format!("approver-{user}"),
        "-n",
        namespace,
        "--clusterrole=tether-approver",
        &format!("--user={user}"),
    ]));
}
