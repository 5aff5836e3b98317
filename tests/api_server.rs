//! What users see at `kubectl apply` time, proven on a real kube-apiserver:
//! the CRDs install, the examples apply, malformed objects are refused with
//! a message that names the field, and status written with server-side
//! apply reads back.
mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{ControlPlane, assert_ok};
use tether::api::ExternalResource;
use tether::api::external_resource::ExternalResourceSpec;

#[test]
fn every_crd_installs_and_is_established() {
    let cp = ControlPlane::shared();
    let out = assert_ok(&cp.kubectl(&["get", "crd", "-l", "app.kubernetes.io/part-of=tether", "-o", "name"]));
    let mut names: Vec<&str> = out.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "customresourcedefinition.apiextensions.k8s.io/adapters.tether.dev",
            "customresourcedefinition.apiextensions.k8s.io/approvals.tether.dev",
            "customresourcedefinition.apiextensions.k8s.io/externalresources.tether.dev",
            "customresourcedefinition.apiextensions.k8s.io/targetsystems.tether.dev",
            "customresourcedefinition.apiextensions.k8s.io/workflowruns.tether.dev",
            "customresourcedefinition.apiextensions.k8s.io/workflows.tether.dev",
        ]
    );
}

#[test]
fn examples_apply_and_are_listed_by_the_tether_category() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("examples");
    let examples = cp.repo.join("examples");
    assert_ok(&cp.kubectl(&["apply", "-n", &ns, "-f", &examples.to_string_lossy()]));

    let listed = assert_ok(&cp.kubectl(&["get", "tether", "-n", &ns, "-o", "name"]));
    for object in [
        "adapter.tether.dev/saas-sim",
        "adapter.tether.dev/legacy-ledger",
        "targetsystem.tether.dev/crm",
        "externalresource.tether.dev/ada",
        "workflow.tether.dev/onboarding",
        "workflowrun.tether.dev/onboard-grace",
        "approval.tether.dev/onboard-grace-sign-off",
    ] {
        assert!(
            listed.lines().any(|l| l == object),
            "`kubectl get tether` misses {object}:\n{listed}"
        );
    }
}

#[test]
fn printer_columns_and_short_names_make_kubectl_get_useful() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("columns");
    let examples = cp.repo.join("examples");
    assert_ok(&cp.kubectl(&["apply", "-n", &ns, "-f", &examples.to_string_lossy()]));
    for (short, header) in [
        (
            "tts",
            ["NAME", "ADAPTER", "URL", "READY", "CIRCUIT", "REASON", "AGE"].as_slice(),
        ),
        (
            "xr",
            &[
                "NAME",
                "TARGET",
                "TYPE",
                "EXTERNAL-ID",
                "READY",
                "SYNCED",
                "REASON",
                "AGE",
            ],
        ),
        ("twf", &["NAME", "STEPS", "READY", "LAST-RUN", "AGE"]),
        ("twr", &["NAME", "WORKFLOW", "PHASE", "STEP", "PROGRESS", "AGE"]),
        ("tap", &["NAME", "RUN", "STEP", "DECISION", "BY", "AGE"]),
        ("tad", &["NAME", "FORM", "TYPES", "READY", "AGE"]),
    ] {
        let out = assert_ok(&cp.kubectl(&["get", short, "-n", &ns]));
        let first = out.lines().next().unwrap_or_default();
        let columns: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(columns, header, "columns of `kubectl get {short}`");
    }
}

/// One object the API server must refuse, and what its message must say.
struct Malformed {
    case: &'static str,
    manifest: String,
    expect: &'static [&'static str],
}

fn target(name: &str, spec: serde_json::Value) -> String {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

fn resource(name: &str, spec: serde_json::Value) -> String {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

fn workflow(name: &str, steps: serde_json::Value) -> String {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": {"steps": steps}}).to_string()
}

fn adapter(name: &str, spec: serde_json::Value) -> String {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

fn wait_step(name: &str) -> serde_json::Value {
    json!({"name": name, "wait": {"duration": "1s"}})
}

fn malformed_objects() -> Vec<Malformed> {
    let adapter_ref = json!({"name": "saas-sim"});
    let good_target = || json!({"adapterRef": adapter_ref, "baseUrl": "https://crm.example.com"});
    let good_resource = || json!({"targetRef": {"name": "crm"}, "type": "contact", "properties": {"email": "a@b"}});
    let rest_with_path = |path: &str| {
        json!({"rest": {"resourceTypes": [{"name": "thing",
        "read": {"method": "GET", "path": path}, "create": {"method": "POST", "path": "/things"}}]}})
    };
    let with = |mut base: serde_json::Value, key: &str, value: serde_json::Value| {
        base[key] = value;
        base
    };
    let without = |mut base: serde_json::Value, key: &str| {
        if let Some(map) = base.as_object_mut() {
            map.remove(key);
        }
        base
    };
    vec![
        Malformed {
            case: "target base URL without a scheme",
            manifest: target("t1", with(good_target(), "baseUrl", json!("crm.example.com/api"))),
            expect: &["spec.baseUrl", "baseUrl must be an absolute http:// or https:// URL"],
        },
        Malformed {
            case: "target base URL with another scheme",
            manifest: target("t2", with(good_target(), "baseUrl", json!("ftp://crm.example.com"))),
            expect: &["spec.baseUrl", "absolute http:// or https://"],
        },
        Malformed {
            case: "negative rate limit",
            manifest: target("t3", with(good_target(), "rateLimit", json!({"requestsPerSecond": -5}))),
            expect: &["spec.rateLimit.requestsPerSecond", "should be greater than or equal to"],
        },
        Malformed {
            case: "zero concurrency",
            manifest: target("t4", with(good_target(), "maxConcurrency", json!(0))),
            expect: &["spec.maxConcurrency", "greater than or equal to 1"],
        },
        Malformed {
            case: "two auth schemes at once",
            manifest: target(
                "t5",
                with(
                    good_target(),
                    "auth",
                    json!({
                "bearer": {"tokenSecretRef": {"name": "s", "key": "token"}},
                "apiKey": {"keySecretRef": {"name": "s", "key": "key"}}}),
                ),
            ),
            expect: &[
                "spec.auth",
                "set exactly one of bearer, basic, apiKey or oauth2ClientCredentials",
            ],
        },
        Malformed {
            case: "target without an adapter",
            manifest: target("t6", without(good_target(), "adapterRef")),
            expect: &["spec.adapterRef", "Required value"],
        },
        Malformed {
            case: "resource without a type",
            manifest: resource("r1", without(good_resource(), "type")),
            expect: &["spec.type", "Required value"],
        },
        Malformed {
            case: "properties that are not an object",
            manifest: resource("r2", with(good_resource(), "properties", json!("email=a@b"))),
            expect: &["spec.properties", "must be of type object"],
        },
        Malformed {
            case: "poll interval in words",
            manifest: resource("r3", with(good_resource(), "pollInterval", json!("5 minutes"))),
            expect: &["spec.pollInterval", "should match"],
        },
        Malformed {
            // Used to be accepted and silently read as the 5-minute default.
            case: "poll interval too large to represent",
            manifest: resource("r3b", with(good_resource(), "pollInterval", json!("99999999999h"))),
            expect: &["spec.pollInterval", "should match"],
        },
        Malformed {
            case: "unknown deletion policy",
            manifest: resource("r4", with(good_resource(), "deletionPolicy", json!("Destroy"))),
            expect: &["spec.deletionPolicy", "Unsupported value: \"Destroy\""],
        },
        Malformed {
            case: "unknown field",
            manifest: resource("r5", with(good_resource(), "replicas", json!(3))),
            expect: &["unknown field \"spec.replicas\""],
        },
        Malformed {
            case: "duplicate step names",
            manifest: workflow("w1", json!([wait_step("a"), wait_step("a")])),
            expect: &["spec.steps[1]", "Duplicate value"],
        },
        Malformed {
            case: "step depends on itself",
            manifest: workflow(
                "w3",
                json!([{"name": "a", "dependsOn": ["a"], "wait": {"duration": "1s"}}]),
            ),
            expect: &["spec.steps[0]", "a step cannot depend on itself"],
        },
        Malformed {
            case: "step of two kinds",
            manifest: workflow("w4", json!([{"name": "a", "wait": {"duration": "1s"}, "approval": {}}])),
            expect: &[
                "spec.steps[0]",
                "a step sets exactly one of call, resource, approval or wait",
            ],
        },
        Malformed {
            case: "zero parallelism",
            manifest: workflow(
                "w5",
                json!([{"name": "a", "forEach": "[1,2]", "parallelism": 0, "wait": {"duration": "1s"}}]),
            ),
            expect: &["spec.steps[0].parallelism", "greater than or equal to 1"],
        },
        Malformed {
            case: "step name with spaces",
            manifest: workflow("w6", json!([wait_step("Step One")])),
            expect: &["spec.steps[0].name", "should match"],
        },
        Malformed {
            case: "workflow without steps",
            manifest: workflow("w7", json!([])),
            expect: &["spec.steps", "should have at least 1 items"],
        },
        Malformed {
            case: "approval with an unknown decision",
            manifest: json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": "a1"},
                "spec": {"runRef": {"name": "r"}, "step": "gate", "decision": "Maybe"}})
            .to_string(),
            expect: &["spec.decision", "Unsupported value: \"Maybe\""],
        },
        Malformed {
            case: "adapter path that names another host",
            manifest: adapter("malformed-host-path", rest_with_path("https://evil.example.com/steal")),
            expect: &["spec.rest.resourceTypes[0].read.path", "must not name a scheme or host"],
        },
        Malformed {
            case: "adapter path that is network-path relative",
            manifest: adapter("malformed-netpath", rest_with_path("//evil.example.com/steal")),
            expect: &["spec.rest.resourceTypes[0].read.path", "must not name a scheme or host"],
        },
        Malformed {
            case: "adapter with both forms",
            manifest: adapter("malformed-both", {
                let mut spec = rest_with_path("/things/\\(.id)");
                spec["service"] = json!({"url": "http://adapter.local"});
                spec
            }),
            expect: &["spec", "set exactly one of spec.rest"],
        },
    ]
}

#[test]
fn malformed_objects_are_refused_with_a_message_naming_the_field() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("malformed");
    let mut failures = Vec::new();
    for Malformed { case, manifest, expect } in malformed_objects() {
        let out = cp.apply_as("admin", &ns, &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{case}: accepted, but must be refused"));
        } else if let Some(missing) = expect.iter().find(|e| !stderr.contains(*e)) {
            failures.push(format!("{case}: message lacks {missing:?}: {stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Changes that the API server must refuse on an existing object.
#[test]
fn immutable_fields_cannot_change_after_creation() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("immutable");
    let cases = [
        (
            resource("moved", json!({"targetRef": {"name": "crm"}, "type": "contact"})),
            resource("moved", json!({"targetRef": {"name": "billing"}, "type": "contact"})),
            ["spec.targetRef", "targetRef is immutable"],
        ),
        (
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "run"},
                "spec": {"workflowRef": {"name": "wf"}, "cancel": true}})
            .to_string(),
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "run"},
                "spec": {"workflowRef": {"name": "wf"}, "cancel": false}})
            .to_string(),
            ["spec.cancel", "a cancelled run cannot be resumed"],
        ),
        (
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": "gate"},
                "spec": {"runRef": {"name": "run"}, "step": "gate", "decision": "Reject"}})
            .to_string(),
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": "gate"},
                "spec": {"runRef": {"name": "run"}, "step": "gate", "decision": "Approve"}})
            .to_string(),
            ["spec", "an Approval cannot be changed once made"],
        ),
    ];
    for (original, changed, expect) in cases {
        assert_ok(&cp.apply_as("admin", &ns, &original));
        let out = cp.apply_as("admin", &ns, &changed);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "change accepted: {changed}");
        for e in expect {
            assert!(stderr.contains(e), "message lacks {e:?}: {stderr}");
        }
    }
}

#[tokio::test]
async fn status_written_with_server_side_apply_reads_back_and_merges_conditions_by_type() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("status");
    let client = cp.client("controller").await;
    let admin: Api<ExternalResource> = Api::namespaced(cp.client("admin").await, &ns);
    let spec: ExternalResourceSpec =
        serde_json::from_value(json!({"targetRef": {"name": "crm"}, "type": "contact"})).expect("a valid spec");
    admin
        .create(&PostParams::default(), &ExternalResource::new("ada", spec))
        .await
        .expect("creating the resource");

    let api: Api<ExternalResource> = Api::namespaced(client, &ns);
    let condition = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "reason": "Testing", "message": "written by a test",
               "lastTransitionTime": "2026-11-23T00:00:00Z", "observedGeneration": 1})
    };
    let status = |conditions: serde_json::Value| {
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
               "status": {"observedGeneration": 1, "externalId": "contact-000001", "conditions": conditions}})
    };
    api.patch_status(
        "ada",
        &PatchParams::apply("tether").force(),
        &Patch::Apply(status(json!([condition("Ready", "True")]))),
    )
    .await
    .expect("the controller identity may apply status");
    // A second field manager owning another condition type must not remove
    // the first: conditions are a list map keyed by type.
    api.patch_status(
        "ada",
        &PatchParams::apply("another-manager").force(),
        &Patch::Apply(json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
                              "status": {"conditions": [condition("Synced", "False")]}})),
    )
    .await
    .expect("a second manager may apply its own condition");

    let read = assert_ok(&cp.kubectl(&["get", "xr", "ada", "-n", &ns, "-o",
        "jsonpath={.status.externalId} {.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Synced\")].status}"]));
    assert_eq!(read, "contact-000001 True False");
    let columns = assert_ok(&cp.kubectl(&["get", "xr", "ada", "-n", &ns, "--no-headers"]));
    let fields: Vec<&str> = columns.split_whitespace().collect();
    assert_eq!(
        &fields[..6],
        ["ada", "crm", "contact", "contact-000001", "True", "False"]
    );
}

/// Approval gates are only as good as the RBAC behind them: the chart's
/// `tether-approver` role lets its subjects create Approvals; nobody else
/// can, not even the controller. Who decided is what the API server
/// authenticated, whatever the client claims, and it cannot be edited.
#[test]
fn only_subjects_bound_to_the_approver_role_can_create_approvals() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("approvers");
    support::bind_approver(cp, &ns, "bob");
    let approval = |name: &str| {
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": name},
               "spec": {"runRef": {"name": "run"}, "step": "gate", "decision": "Approve", "decidedBy": "mallory"}})
        .to_string()
    };
    assert_ok(&cp.apply_as("bob", &ns, &approval("by-bob")));
    let decided_by = cp.kubectl(&[
        "get",
        "approval",
        "by-bob",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.decidedBy}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&decided_by.stdout),
        "bob",
        "the authenticated user, not the claim"
    );
    let edit = cp.kubectl(&[
        "patch",
        "approval",
        "by-bob",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"decidedBy":"mallory"}}"#,
    ]);
    assert!(!edit.status.success(), "decidedBy cannot be edited");
    for who in ["alice", "controller"] {
        let out = cp.apply_as(who, &ns, &approval(&format!("by-{who}")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("forbidden"),
            "{who} must not create Approvals: {stderr}"
        );
    }
}
