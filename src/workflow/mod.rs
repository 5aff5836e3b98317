//! The workflow domain, pure: no Kubernetes client, no HTTP client, no
//! async runtime (tests/layout.rs keeps it so).
//!
//! - [`engine`]: the state machine — (definition, status, now,
//!   observations) -> (status, actions) — and its DAG ([`engine::dag`]).
//! - [`compile`]: a Workflow's spec with every expression compiled and
//!   checked, each error naming its field; parameters and their defaults.
//! - [`vars`]: the variables every workflow expression sees (`$params`,
//!   `$steps`, `$item`, `$index`, `$run`, `$callback`).
//! - [`steps`]: the decisions of each step kind that need no I/O (when a
//!   wait ends, what an approval or a resource's `Ready` means for the
//!   step, whether a poll or a callback finished it).
//! - [`callback`]: the callback protocol (token, URL path, signed record).
//! - [`approval`]: which Approval decides a gate of a run.

pub mod approval;
pub mod callback;
pub mod compile;
pub mod engine;
pub mod steps;
pub mod vars;
