//! `tether runs describe NAME`: a run's DAG drawn in the terminal, each step
//! with its state, kind, dependencies, timing and (for a fan-out) its item
//! counts, followed by what the run is waiting for or what is left to clean
//! up. Pure: it renders a `WorkflowRun` as read from the API server.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use crate::api::WorkflowRun;
use crate::api::workflow::{Step, WorkflowSpec};
use crate::api::workflow_run::{StepPhase, StepStatus};
use crate::workflow::engine::Dag;

fn symbol(phase: StepPhase) -> &'static str {
    match phase {
        StepPhase::Pending => "○",
        StepPhase::Running => "▶",
        StepPhase::Waiting => "⏸",
        StepPhase::Succeeded => "✔",
        StepPhase::Failed => "✘",
        StepPhase::Skipped => "⤼",
        StepPhase::Compensating => "↶",
        StepPhase::Compensated => "↺",
        StepPhase::CompensationFailed => "‼",
    }
}

fn kind(step: &Step) -> String {
    if let Some(call) = &step.call {
        let what = match (&call.action, &call.request) {
            (Some(action), _) => action.clone(),
            // The method in capitals, the path as written (paths are
            // case-sensitive).
            (None, Some(r)) => format!("{} {}", format!("{:?}", r.method).to_uppercase(), r.path),
            _ => String::new(),
        };
        let poll = if call.poll_until.is_some() { " (polls)" } else { "" };
        format!("call {}: {what}{poll}", call.target_ref.name)
    } else if let Some(r) = &step.resource {
        format!("resource {}/{}", r.target_ref.name, r.type_)
    } else if let Some(a) = &step.approval {
        format!("approval: {}", a.message.as_deref().unwrap_or("approve or reject"))
    } else if let Some(w) = &step.wait {
        format!("wait {}", w.duration.0)
    } else {
        String::new()
    }
}

fn took(status: &StepStatus, now: DateTime<Utc>) -> String {
    let Some(start) = status.started_at else {
        return String::new();
    };
    let end = status.finished_at.unwrap_or(now);
    let ms = (end - start).num_milliseconds().max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// A step's outputs on one line, cut (on a character boundary) so that a
/// large answer does not flood the terminal.
fn outputs_line(outputs: &serde_json::Value) -> String {
    crate::text::shortened(&outputs.to_string(), 300)
}

/// The run drawn as text, as of `now`.
pub fn describe(run: &WorkflowRun, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let status = run.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "Run {}/{} of workflow {}",
        run.namespace().unwrap_or_default(),
        run.name_any(),
        run.spec.workflow_ref.name
    );
    let _ = writeln!(
        out,
        "Phase: {:?}   Progress: {}   Started: {}",
        status.phase,
        status.progress.as_deref().unwrap_or("-"),
        status.started_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
    );
    let Some(pinned) = &status.pinned else {
        let _ = writeln!(out, "\nNot started: no definition pinned yet.");
        conditions(&mut out, run);
        return out;
    };
    let _ = writeln!(
        out,
        "Pinned: workflow generation {} (spec hash {})",
        pinned.generation, pinned.hash
    );
    if let Some(trace) = &status.trace_id {
        let _ = writeln!(out, "Trace: {trace}");
    }
    let spec: WorkflowSpec = match serde_json::from_value(pinned.spec.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            let _ = writeln!(out, "\nThe pinned definition cannot be read: {e}");
            return out;
        }
    };
    let dag = match Dag::from_spec(&spec) {
        Ok(dag) => dag,
        Err(e) => {
            let _ = writeln!(out, "\n{e}");
            return out;
        }
    };
    // Depth: the longest chain of dependencies before a step.
    let mut depth = vec![0usize; dag.len()];
    for &i in &dag.order {
        depth[i] = dag.deps[i].iter().map(|&d| depth[d] + 1).max().unwrap_or(0);
    }
    let width = spec.steps.iter().map(|s| s.name.len()).max().unwrap_or(4);
    let _ = writeln!(out);
    for &i in &dag.order {
        let step = &spec.steps[i];
        let state = status
            .steps
            .iter()
            .find(|s| s.name == step.name)
            .cloned()
            .unwrap_or_else(|| StepStatus::pending(&step.name));
        let indent = "  ".repeat(depth[i]);
        let branch = if depth[i] == 0 { "" } else { "└─ " };
        let after = if dag.deps[i].is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = dag.deps[i].iter().map(|&d| dag.names[d].as_str()).collect();
            format!("  ← {}", names.join(", "))
        };
        let pad = width + 2usize.saturating_sub(0);
        let _ = writeln!(
            out,
            "{indent}{branch}{} {:<pad$} {:<18} {}{after}",
            symbol(state.phase),
            step.name,
            format!("{:?}", state.phase),
            kind(step),
        );
        let detail_indent = format!("{indent}{}   ", if depth[i] == 0 { "" } else { "   " });
        let mut details = Vec::new();
        if state.attempt > 1 {
            details.push(format!("attempt {}", state.attempt));
        }
        let time = took(&state, now);
        if !time.is_empty() {
            details.push(time);
        }
        if let Some(items) = &state.items {
            details.push(format!(
                "items {}/{} succeeded, {} running, {} failed",
                items.succeeded, items.total, items.running, items.failed
            ));
        }
        if !details.is_empty() {
            let _ = writeln!(out, "{detail_indent}{}", details.join(" · "));
        }
        if let Some(message) = &state.message {
            let _ = writeln!(out, "{detail_indent}{message}");
        }
        if let Some(from) = &state.kept_from {
            let _ = writeln!(out, "{detail_indent}kept from run {from} (not run again)");
        }
        if let Some(outputs) = state.outputs.as_ref().filter(|o| !o.is_null()) {
            let _ = writeln!(out, "{detail_indent}outputs: {}", outputs_line(outputs));
        }
    }
    if !status.left_to_clean_up.is_empty() {
        let _ = writeln!(out, "\nLeft to clean up:");
        for left in &status.left_to_clean_up {
            let _ = writeln!(out, "  - {left}");
        }
    }
    if !status.outputs.is_empty() {
        let _ = writeln!(out, "\nOutputs:");
        for (k, v) in &status.outputs {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    conditions(&mut out, run);
    out
}

fn conditions(out: &mut String, run: &WorkflowRun) {
    let Some(status) = &run.status else { return };
    if status.conditions.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nConditions:");
    for c in &status.conditions {
        let _ = writeln!(out, "  {:<10} {:<6} {:<20} {}", c.type_, c.status, c.reason, c.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workflow_run::{ItemCounts, PinnedDefinition, RunPhase, WorkflowRunSpec, WorkflowRunStatus};
    use serde_json::json;

    #[test]
    fn a_call_shows_its_method_in_capitals_and_its_path_as_written() {
        let step: Step = serde_json::from_value(json!({"name": "add", "call": {"targetRef": {"name": "crm"},
            "request": {"method": "POST", "path": "/v1/Contacts/\\(.Id)"}}}))
        .expect("a step");
        assert_eq!(kind(&step), "call crm: POST /v1/Contacts/\\(.Id)");
    }

    #[test]
    fn draws_each_step_under_its_dependencies_with_its_state() {
        let spec = json!({"steps": [
            {"name": "contact", "resource": {"targetRef": {"name": "crm"}, "type": "contact", "properties": "{}"}},
            {"name": "each", "dependsOn": ["contact"], "forEach": "[1,2]", "wait": {"duration": "1s"}},
            {"name": "gate", "dependsOn": ["each"], "approval": {"message": "Ship it?"}}
        ]});
        let mut run = WorkflowRun::new(
            "r1",
            WorkflowRunSpec {
                workflow_ref: crate::api::common::ObjectRef::new("wf"),
                parameters: json!({}),
                cancel: false,
                retry_of: None,
            },
        );
        let at = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let step = |name: &str, phase| StepStatus {
            phase,
            attempt: 1,
            started_at: Some(at),
            finished_at: Some(at + chrono::Duration::milliseconds(1500)),
            ..StepStatus::pending(name)
        };
        let mut contact = step("contact", StepPhase::Succeeded);
        contact.outputs = Some(json!({"externalId": "c-42"}));
        let mut each = step("each", StepPhase::Succeeded);
        each.items = Some(ItemCounts {
            total: 2,
            started: 2,
            succeeded: 2,
            ..ItemCounts::default()
        });
        run.status = Some(WorkflowRunStatus {
            phase: RunPhase::WaitingForApproval,
            pinned: Some(PinnedDefinition {
                generation: 2,
                hash: "abc".into(),
                spec,
            }),
            steps: vec![contact, each, step("gate", StepPhase::Waiting)],
            ..WorkflowRunStatus::default()
        });
        let text = describe(&run, at);
        assert!(text.contains("✔ contact"), "{text}");
        assert!(text.contains("  └─ ✔ each"), "{text}");
        assert!(text.contains("    └─ ⏸ gate"), "{text}");
        assert!(text.contains("← each"), "{text}");
        assert!(text.contains("items 2/2 succeeded"), "{text}");
        assert!(text.contains("approval: Ship it?"), "{text}");
        assert!(text.contains("generation 2"), "{text}");
        assert!(text.contains("1.5s"), "{text}");
    }

    #[test]
    fn describe_shows_each_steps_outputs_where_a_kept_step_ran_and_the_trace() {
        let spec = json!({"steps": [
            {"name": "contact", "resource": {"targetRef": {"name": "crm"}, "type": "contact", "properties": "{}"}},
            {"name": "big", "dependsOn": ["contact"], "wait": {"duration": "1s"}}
        ]});
        let mut run = WorkflowRun::new(
            "r2",
            WorkflowRunSpec {
                workflow_ref: crate::api::common::ObjectRef::new("wf"),
                parameters: json!({}),
                cancel: false,
                retry_of: Some("r1".into()),
            },
        );
        let contact = StepStatus {
            phase: StepPhase::Succeeded,
            outputs: Some(json!({"externalId": "c-42"})),
            kept_from: Some("r1".into()),
            ..StepStatus::pending("contact")
        };
        let big = StepStatus {
            phase: StepPhase::Succeeded,
            outputs: Some(json!({"blob": "é".repeat(1000)})),
            ..StepStatus::pending("big")
        };
        run.status = Some(WorkflowRunStatus {
            phase: RunPhase::Succeeded,
            pinned: Some(PinnedDefinition {
                generation: 1,
                hash: "abc".into(),
                spec,
            }),
            steps: vec![contact, big],
            ..WorkflowRunStatus::default()
        });
        let text = describe(&run, Utc::now());
        assert!(!text.contains("Trace:"), "no trace without one: {text}");
        if let Some(status) = run.status.as_mut() {
            status.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        }
        assert!(
            describe(&run, Utc::now()).contains("Trace: 4bf92f3577b34da6a3ce929d0e0e4736"),
            "the run's trace id is printed"
        );
        assert!(text.contains(r#"outputs: {"externalId":"c-42"}"#), "{text}");
        assert!(text.contains("kept from run r1"), "{text}");
        let long = text.lines().find(|l| l.contains("blob")).unwrap_or_default();
        assert!(long.chars().count() < 400, "{long}");
    }
}
