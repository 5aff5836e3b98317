//! The README's main command works: `tether sandbox` starts a control plane,
//! the simulator and the controller, applies examples/, and the example
//! ExternalResources converge (an order after the customer it references)
//! and the example workflow run finishes.

#[test]
fn the_sandbox_brings_the_examples_to_ready() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "sandbox",
            "--repo",
            env!("CARGO_MANIFEST_DIR"),
            "--exit-when-ready",
            "120",
        ])
        .output()
        .expect("tether sandbox runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "tether sandbox failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("externalresource.tether.dev/ada"), "{stdout}");
    assert!(stderr.contains("every ExternalResource is Ready"), "{stderr}");
    assert!(stderr.contains("every WorkflowRun settled after"), "{stderr}");
    assert!(stderr.contains("runs: Succeeded;"), "{stderr}");
    // Plain logs when not on a terminal (they go to files and CI logs).
    assert!(!stderr.contains('\u{1b}'), "colour codes in redirected logs:\n{stderr}");
    // Only what changed: the table is not printed again every 2 s as AGE moves.
    let shown = stdout
        .lines()
        .filter(|l| l.contains("externalresource.tether.dev/ada "))
        .count();
    assert!(shown <= 4, "ada's row was shown {shown} times:\n{stdout}");
    // The ExternalResource's contact and the one the workflow's resource step made.
    assert!(stderr.contains("simulator holds 2 contact(s)"), "{stderr}");
    // The customer and its order (examples/externalresource-customer-order.yaml):
    // the order was created with the id the CRM gave the customer.
    assert!(
        stdout.contains("externalresource.tether.dev/grace-first-order"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 customer(s), 1 order(s) of a known customer"),
        "{stderr}"
    );
}
