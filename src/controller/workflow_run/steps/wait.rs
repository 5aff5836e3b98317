//! A `wait` step: it waits until its delay has passed since it started.

use std::time::Duration;

use serde_json::json;

use super::{Do, Scope, Step};
use crate::workflow::engine::Observation;
use crate::workflow::steps::after_std;

pub fn perform(scope: &Scope<'_>, step: &Step<'_>, delay: Duration, what: Do<'_>) -> Observation {
    match what {
        Do::Start { .. } | Do::Compensate { .. } => step.waiting(Some(after_std(step.started(scope.now), delay)), None),
        // The engine checks a waiting step once its `until` has passed.
        Do::Check => Observation::Succeeded {
            step: step.name.to_owned(),
            item: None,
            outputs: json!({}),
        },
    }
}
