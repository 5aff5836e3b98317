//! The endpoints' protocol: the path of a workflow's webhook trigger, and
//! the callback protocol of a step that waits for one: the one-time URL
//! and token a target is given (`$callback`), and the record the callback
//! endpoint leaves in the run's annotation, MAC-bound to the run's UID,
//! step and attempt under the step's key. Pure: the endpoint (`webhook`)
//! and the step (`controller::workflow_run`) both use it, neither owns it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::signing::{mac_hex, verify_hex};

/// The path at which a signed webhook starts a run of a workflow.
pub fn trigger_path(namespace: &str, workflow: &str) -> String {
    format!("/webhooks/{namespace}/{workflow}")
}

/// The annotation in which the callback endpoint leaves a step's callback.
pub fn annotation(step: &str) -> String {
    format!("callback.tether.dev/{step}")
}

/// The path of one attempt's callback.
pub fn callback_path(namespace: &str, run: &str, step: &str, attempt: i32) -> String {
    format!("/callbacks/{namespace}/{run}/{step}/{attempt}")
}

/// The one-time token of one attempt's callback (hex).
pub fn callback_token(key: &[u8], run_uid: &str, step: &str, attempt: i32) -> String {
    mac_hex(key, &[format!("{run_uid}/{step}/{attempt}").as_bytes()])
}

pub fn verify_callback_token(key: &[u8], run_uid: &str, step: &str, attempt: i32, token: &str) -> bool {
    verify_hex(key, &[format!("{run_uid}/{step}/{attempt}").as_bytes()], token)
}

/// What the callback endpoint records in the run's annotation: the
/// attempt, the body and a MAC binding both to the run's UID and step
/// under the step's key (domain-separated from the token).
pub fn callback_record(key: &[u8], run_uid: &str, step: &str, attempt: i32, body: &Value) -> Value {
    let mac = record_mac(key, run_uid, step, attempt, body);
    json!({ "attempt": attempt, "body": body, "mac": mac })
}

fn record_message(run_uid: &str, step: &str, attempt: i32, body: &Value) -> String {
    let digest = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    format!("tether-callback-record\n{run_uid}/{step}/{attempt}\n{digest}")
}

fn record_mac(key: &[u8], run_uid: &str, step: &str, attempt: i32, body: &Value) -> String {
    mac_hex(key, &[record_message(run_uid, step, attempt, body).as_bytes()])
}

/// Whether a recorded callback was written by the callback endpoint for
/// this run, step and attempt: its MAC verifies under the step's key.
pub fn verify_callback_record(key: &[u8], run_uid: &str, step: &str, attempt: i32, record: &Value) -> bool {
    let recorded_attempt = record.get("attempt").and_then(Value::as_i64);
    let (Some(mac), Some(body)) = (record.get("mac").and_then(Value::as_str), record.get("body")) else {
        return false;
    };
    recorded_attempt == Some(i64::from(attempt))
        && verify_hex(key, &[record_message(run_uid, step, attempt, body).as_bytes()], mac)
}
