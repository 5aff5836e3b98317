//! Generated files are checked in (so users can `kubectl apply -f crds/`
//! without building anything) and must equal what their sources produce.
//! Regenerate with `scripts/generate.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/generate.sh", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn checked_in_crds_equal_the_rust_types() {
    let crds = tether::api::crds();
    let expected: Vec<String> = {
        let mut names: Vec<String> = crds.iter().map(tether::crd::file_name).collect();
        names.sort();
        names
    };
    for dir in [repo().join("crds"), repo().join("charts/tether/crds")] {
        assert_eq!(
            yaml_files(&dir),
            expected,
            "{} holds other files than the CRDs; run scripts/generate.sh",
            dir.display()
        );
        for crd in &crds {
            let path = dir.join(tether::crd::file_name(crd));
            let rendered = tether::crd::to_yaml(crd).expect("renders");
            assert!(
                read(&path) == rendered,
                "{} differs from the Rust types; run scripts/generate.sh",
                path.display()
            );
        }
    }
}

#[test]
fn tether_crd_prints_every_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("crd")
        .output()
        .expect("tether crd runs");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(printed, tether::crd::all_yaml().expect("renders"));
    assert_eq!(printed.matches("kind: CustomResourceDefinition").count(), 6);
}

#[test]
fn rendered_chart_equals_the_chart_and_lints() {
    let helm = Command::new("bash")
        .arg(repo().join("scripts/helm.sh"))
        .output()
        .expect("scripts/helm.sh runs");
    assert!(helm.status.success(), "building helm failed");
    let helm = String::from_utf8_lossy(&helm.stdout).trim().to_owned();
    let chart = repo().join("charts/tether");
    let lint = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(&chart)
        .output()
        .expect("helm lint runs");
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let rendered = Command::new(&helm)
        .args(["template", "tether"])
        .arg(&chart)
        .args(["--namespace", "tether-system"])
        .args([
            "--api-versions",
            "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
        ])
        .output()
        .expect("helm template runs");
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rendered.stdout) == read(&repo().join("deploy/tether.yaml")),
        "deploy/tether.yaml differs from charts/tether; run scripts/generate.sh"
    );
}

#[test]
fn the_chart_ships_the_argo_cd_health_checks_of_deploy() {
    let source = repo().join("deploy/argocd");
    let copy = repo().join("charts/tether/argocd");
    let mut kinds: Vec<String> = std::fs::read_dir(&source)
        .expect("deploy/argocd")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kinds.sort();
    assert!(kinds.len() >= 5, "{kinds:?}");
    for kind in kinds {
        let lua = |dir: &Path| read(&dir.join(&kind).join("health.lua"));
        assert!(
            lua(&source) == lua(&copy),
            "charts/tether/argocd/{kind} differs from deploy/argocd; run scripts/generate.sh"
        );
    }
}

/// The API reference is the CRDs' own descriptions: the docs link to it
/// instead of restating what a field means (day two: the CRD and the docs
/// disagreed on a step's `timeout` and on what `successWhen` reads).
#[test]
fn the_api_reference_is_generated_from_the_crds() {
    let checked_in = read(&repo().join("docs/reference.md"));
    assert!(
        checked_in == tether::crd::reference(),
        "docs/reference.md differs from the CRDs' descriptions; run scripts/generate.sh"
    );
    let workflows = read(&repo().join("docs/workflows.md"));
    assert!(
        workflows.contains("reference.md"),
        "docs/workflows.md links the reference"
    );
}
