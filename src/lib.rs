//! Tether: a Kubernetes controller that orchestrates external systems.
//!
//! - [`api`]: the custom resources (`tether.dev/v1alpha1`).
//! - [`crd`]: CRD generation (`tether crd`).
//! - [`sim`]: the target simulator (`tether sim`), a SaaS-like API that fails
//!   on demand, used by the tests and the sandbox.
//! - [`expr`]: the expression language (jq).
//! - [`target`]: one shared client, rate limit, concurrency limit and circuit
//!   per TargetSystem.
//! - [`adapter`]: the port to external systems (REST mapping, adapter service).
//! - [`controller`]: the reconcilers; [`run`]: `tether run`; [`leader`]: Lease
//!   election; [`metrics`]: Prometheus metrics.
//! - [`engine`]: the workflow engine, a pure state machine; [`webhook`]: the
//!   signed endpoint that starts runs.
//! - [`describe`]: `tether runs describe`, a run's DAG in the terminal.
//! - [`sandbox`]: a local control plane for the tests and `tether sandbox`.
#![forbid(unsafe_code)]
// A byte index into a String panics when it splits a character: cut text
// with `text::prefix` instead.
#![deny(clippy::string_slice)]

pub mod adapter;
pub mod api;
pub mod cache;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod describe;
pub mod diff;
pub mod events;
pub mod expr;
#[cfg(test)]
pub(crate) mod fakes;
pub mod http;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod request;
pub mod run;
pub mod runs;
#[cfg(feature = "dev")]
pub mod sandbox;
pub mod scope;
pub mod shard;
pub mod signing;
pub mod telemetry;
pub mod text;
pub mod webhook;
pub mod workflow;

/// Selects ring as the process-wide TLS crypto provider (kube and reqwest
/// both use rustls). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Locks `mutex`, taking the data even if a panicking thread poisoned it:
/// every mutex here guards a cache whose entries are valid one by one.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
