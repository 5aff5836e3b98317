//! `tether runs`: what a user does with runs from a terminal — `list` (a
//! table), `describe` and `watch` (the DAG of `describe`, redrawn when the
//! run changes), `retry` (a new run with `spec.retryOf`) and `cancel`
//! (`spec.cancel`). Reads and writes WorkflowRuns through the API server;
//! the rendering ([`table`], [`retry_run`]) is pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::WorkflowRun;
use crate::api::workflow_run::{StepPhase, WorkflowRunSpec};
use crate::workflow::engine::is_terminal;

/// Label a retry carries: the run it retries.
pub const RETRY_OF_LABEL: &str = "tether.dev/retry-of";

fn api(client: Client, namespace: &str) -> Api<WorkflowRun> {
    Api::namespaced(client, namespace)
}

/// The run, or a sentence saying it does not exist.
async fn get(api: &Api<WorkflowRun>, namespace: &str, name: &str) -> anyhow::Result<WorkflowRun> {
    api.get_opt(name)
        .await
        .with_context(|| format!("reading WorkflowRun {namespace}/{name}"))?
        .ok_or_else(|| anyhow::anyhow!("WorkflowRun {name:?} not found in namespace {namespace:?}"))
}

/// `tether runs describe NAME`.
pub async fn describe(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let run = get(&api(client, namespace), namespace, name).await?;
    print!("{}", crate::describe::describe(&run, Utc::now()));
    Ok(())
}

/// `tether runs list`: the namespace's runs, oldest first (of one workflow
/// when `workflow` is set).
pub async fn list(client: Client, namespace: &str, workflow: Option<&str>) -> anyhow::Result<()> {
    let params = match workflow {
        Some(w) => ListParams::default().fields(&format!("spec.workflowRef.name={w}")),
        None => ListParams::default(),
    };
    let runs = api(client, namespace)
        .list(&params)
        .await
        .with_context(|| format!("listing WorkflowRuns in namespace {namespace}"))?;
    if runs.items.is_empty() {
        println!("No runs in namespace {namespace}.");
        return Ok(());
    }
    print!("{}", table(&runs.items, Utc::now()));
    Ok(())
}

/// The runs as a table: name, workflow, phase, started, duration and the
/// step that failed. Pure.
pub fn table(runs: &[WorkflowRun], now: DateTime<Utc>) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "NAME".into(),
        "WORKFLOW".into(),
        "PHASE".into(),
        "STARTED".into(),
        "DURATION".into(),
        "FAILED STEP".into(),
    ]];
    let mut sorted: Vec<&WorkflowRun> = runs.iter().collect();
    sorted.sort_by_key(|r| (r.creation_timestamp(), r.name_any()));
    for run in sorted {
        let status = run.status.clone().unwrap_or_default();
        let started = status
            .started_at
            .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let duration = status
            .started_at
            .map_or_else(|| "-".to_owned(), |s| human(status.finished_at.unwrap_or(now) - s));
        let failed = status
            .steps
            .iter()
            .find(|s| s.phase == StepPhase::Failed)
            .map_or_else(|| "-".to_owned(), |s| s.name.clone());
        rows.push([
            run.name_any(),
            run.spec.workflow_ref.name.clone(),
            format!("{:?}", status.phase),
            started,
            duration,
            failed,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// A duration as people read it: `850ms`, `12s`, `3m04s`, `2h05m`.
fn human(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `tether runs watch NAME`: the run's DAG, redrawn whenever the run
/// changes (and only then), until it ends.
pub async fn watch(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api = api(client, namespace);
    // Not found is a sentence, before any watch starts.
    get(&api, namespace, name).await?;
    let clear = std::io::stdout().is_terminal();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut last = String::new();
    while let Some(event) = events.next().await {
        let run = match event.context("watching the run")? {
            watcher::Event::Apply(run) | watcher::Event::InitApply(run) => run,
            watcher::Event::Delete(_) => anyhow::bail!("WorkflowRun {name:?} was deleted"),
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        let drawn = crate::describe::describe(&run, Utc::now());
        if drawn != last {
            if clear {
                print!("\x1b[2J\x1b[H");
            } else if !last.is_empty() {
                println!("---");
            }
            print!("{drawn}");
            last = drawn;
        }
        if run.status.as_ref().is_some_and(|s| is_terminal(s.phase)) {
            return Ok(());
        }
    }
    anyhow::bail!("the watch of WorkflowRun {name:?} ended")
}

/// The run that retries `old`: same workflow and parameters, `retryOf`
/// and a label naming `old`, a generated name after it. Pure.
pub fn retry_run(old: &WorkflowRun) -> WorkflowRun {
    let old_name = old.name_any();
    let mut run = WorkflowRun::new(
        "",
        WorkflowRunSpec {
            workflow_ref: old.spec.workflow_ref.clone(),
            parameters: old.spec.parameters.clone(),
            cancel: false,
            retry_of: Some(old_name.clone()),
        },
    );
    run.metadata.name = None;
    run.metadata.namespace = old.namespace();
    // Room for the generated suffix and the step names a run's
    // ExternalResources append to it.
    let prefix = crate::text::prefix(&old_name, 40).trim_end_matches(['-', '.']);
    run.metadata.generate_name = Some(format!("{prefix}-retry-"));
    let mut labels: BTreeMap<String, String> = old
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() == crate::controller::workflow::WORKFLOW_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A label value is at most 63 characters.
    if old_name.len() <= 63 {
        labels.insert(RETRY_OF_LABEL.to_owned(), old_name);
    }
    run.metadata.labels = Some(labels);
    run
}

/// `tether runs retry NAME`: a new run that keeps what `NAME` finished and
/// runs the rest.
pub async fn retry(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api = api(client, namespace);
    let old = get(&api, namespace, name).await?;
    let retry = retry_run(&old);
    if let Some(why) = crate::workflow::retry::refuse(&old, &retry) {
        anyhow::bail!("cannot retry: {why}");
    }
    let created = api
        .create(&PostParams::default(), &retry)
        .await
        .with_context(|| format!("creating the retry of WorkflowRun {namespace}/{name}"))?;
    let new = created.name_any();
    println!(
        "workflowrun/{new} created: it retries {name}, keeping the steps {name} finished; \
         follow it with `tether runs watch {new} -n {namespace}`"
    );
    Ok(())
}

/// `tether runs cancel NAME`: sets `spec.cancel`; the run undoes its
/// completed steps (by its `onFailure`).
pub async fn cancel(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api = api(client, namespace);
    let run = get(&api, namespace, name).await?;
    if let Some(status) = run.status.as_ref().filter(|s| is_terminal(s.phase)) {
        println!(
            "WorkflowRun {name:?} has already ended ({:?}): nothing to cancel",
            status.phase
        );
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"cancel": true}})),
    )
    .await
    .with_context(|| format!("cancelling WorkflowRun {namespace}/{name}"))?;
    println!("workflowrun/{name} cancelled: completed steps are being undone");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::ObjectRef;
    use crate::api::workflow_run::{PinnedDefinition, RunPhase, StepStatus, WorkflowRunStatus};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap_or_default()
    }

    fn run(name: &str, phase: RunPhase, failed: Option<&str>, took: Option<i64>) -> WorkflowRun {
        let mut run = WorkflowRun::new(
            name,
            WorkflowRunSpec {
                workflow_ref: ObjectRef::new("ship"),
                parameters: json!({"env": "prod"}),
                cancel: false,
                retry_of: None,
            },
        );
        run.metadata.namespace = Some("team".into());
        run.status = Some(WorkflowRunStatus {
            phase,
            started_at: Some(at(0)),
            finished_at: took.map(at),
            pinned: Some(PinnedDefinition {
                generation: 1,
                hash: "h".into(),
                spec: json!({}),
            }),
            steps: failed
                .map(|f| StepStatus {
                    phase: StepPhase::Failed,
                    ..StepStatus::pending(f)
                })
                .into_iter()
                .collect(),
            ..WorkflowRunStatus::default()
        });
        run
    }

    #[test]
    fn the_list_shows_phase_duration_and_the_failing_step_of_each_run() {
        let runs = [
            run("ship-1", RunPhase::Compensated, Some("charge"), Some(185)),
            run("ship-2", RunPhase::Running, None, None),
        ];
        let text = table(&runs, at(12));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[0].contains("FAILED STEP"), "{text}");
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(first[0], "ship-1");
        assert_eq!(first[1], "ship");
        assert_eq!(first[2], "Compensated");
        assert!(lines[1].contains("3m05s") && lines[1].ends_with("charge"), "{text}");
        assert!(lines[2].contains("Running") && lines[2].contains("12s"), "{text}");
        assert!(lines[2].trim_end().ends_with('-'), "{text}");
    }

    #[test]
    fn a_retry_runs_the_same_workflow_and_parameters_and_names_the_old_run() {
        let old = run("ship-1", RunPhase::Failed, Some("charge"), Some(3));
        let retry = retry_run(&old);
        assert_eq!(retry.spec.retry_of.as_deref(), Some("ship-1"));
        assert_eq!(retry.spec.parameters, json!({"env": "prod"}));
        assert_eq!(retry.spec.workflow_ref.name, "ship");
        assert_eq!(retry.metadata.generate_name.as_deref(), Some("ship-1-retry-"));
        assert_eq!(retry.labels().get(RETRY_OF_LABEL).map(String::as_str), Some("ship-1"));
        assert_eq!(crate::workflow::retry::refuse(&old, &retry), None);
    }
}
