//! The layout holds what docs/architecture.md promises: the controller's
//! dependency tree is what runs in the cluster (no simulator, no test
//! control plane, no certificate generator), and the pure workflow domain
//! reaches for no Kubernetes client, HTTP client or async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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

/// Every `.rs` file under `dir`, with its module path (`controller::guard`).
fn modules(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let nested = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}::{name}")
            };
            modules(&path, &nested, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let module = match (prefix.is_empty(), stem) {
                (_, "mod") => prefix.to_owned(),
                (true, _) => stem.to_owned(),
                (false, _) => format!("{prefix}::{stem}"),
            };
            let source = std::fs::read_to_string(&path).unwrap_or_default();
            out.push((module, production_code(&source)));
        }
    }
}

/// The source without comments and without its `#[cfg(test)]` tests.
fn production_code(source: &str) -> String {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules each module's code names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn modules_import_one_way_without_cycles() {
    let mut files = Vec::new();
    modules(&repo().join("src"), "", &mut files);
    // fakes.rs exists only in unit tests; lib and main are the roots.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &files {
        let from = top(module);
        if matches!(from, "lib" | "main" | "fakes") {
            continue;
        }
        let entry = graph.entry(from.to_owned()).or_default();
        for to in imports(code) {
            if to != from && to != "lock" && to != "install_crypto_provider" {
                entry.insert(to);
            }
        }
    }
    // A cycle is a module that reaches itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = graph[start].iter().map(String::as_str).collect();
        while let Some(next) = stack.pop() {
            assert_ne!(next, start, "module {start} reaches itself: {graph:#?}");
            if seen.insert(next) {
                stack.extend(graph.get(next).into_iter().flatten().map(String::as_str));
            }
        }
    }
    // The direction: api <- pure domain <- controllers -> ports -> runtime.
    let forbidden: &[(&str, &[&str])] = &[
        (
            "api",
            &["controller", "workflow", "adapter", "request", "http", "webhook", "run"],
        ),
        (
            "workflow",
            &["controller", "adapter", "http", "webhook", "run", "keys", "metrics"],
        ),
        ("request", &["http", "adapter", "controller", "workflow"]),
        ("adapter", &["controller", "workflow", "webhook", "run"]),
        ("http", &["adapter", "controller", "workflow", "webhook"]),
        ("controller", &["webhook", "run"]),
        ("metrics", &["controller"]),
    ];
    for (from, never) in forbidden {
        for to in *never {
            assert!(
                !graph.get(*from).is_some_and(|s| s.contains(*to)),
                "{from} imports {to}: {:?}",
                graph.get(*from)
            );
        }
    }
}

#[test]
fn the_workflow_domain_is_pure_and_the_adapter_port_has_no_transport() {
    let mut files = Vec::new();
    modules(&repo().join("src"), "", &mut files);
    for (module, code) in &files {
        if top(module) == "workflow" {
            for runtime in ["kube::", "reqwest", "tokio", "hyper", "crate::http"] {
                assert!(!code.contains(runtime), "{module} uses {runtime}");
            }
        }
        if module == "adapter" || module == "request" {
            for transport in ["reqwest", "hyper", "crate::http", "kube::"] {
                assert!(!code.contains(transport), "the port {module} uses {transport}");
            }
        }
    }
    assert!(
        files.iter().any(|(m, _)| m == "workflow::engine"),
        "the walk found the engine"
    );
}
