//! Publishing Kubernetes Events (`events.k8s.io/v1`) with a bounded memory.
//!
//! kube-runtime's `Recorder` keeps every Event it published for six minutes
//! (to turn a repeat into a series) and scans all of them on each publish:
//! with 100,000 resources created in a few minutes that is 100,000 Events
//! held in memory and a quadratic scan. This recorder keeps the same
//! series behaviour (a repeat of the same type, reason and action on the
//! same object within six minutes patches the first Event's `series`
//! instead of creating a new one) in a map of at most [`MAX_REMEMBERED`]
//! small entries; the oldest go first.
//!
//! Touches: the API server (Event create and patch).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published Event can still become a series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Events remembered for series at most.
pub const MAX_REMEMBERED: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    /// The object's UID (or kind/namespace/name when it has none).
    regarding: String,
}

#[derive(Clone, Debug)]
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    published: Mutex<HashMap<Key, Published>>,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            published: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `event` about `regarding`: a new Event, or one more of a
    /// series when the same one was published within [`SERIES_WINDOW`].
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = Key {
            warning: matches!(event.type_, EventType::Warning),
            reason: event.reason.clone(),
            action: event.action.clone(),
            regarding: regarding.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}/{}",
                    regarding.kind.as_deref().unwrap_or_default(),
                    regarding.namespace.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                )
            }),
        };
        let now = Instant::now();
        let repeat = self.remembered(&key, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let time = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let published = match repeat {
            Some(mut first) => {
                first.count = first.count.saturating_add(1);
                first.at = now;
                let patch = serde_json::json!({
                    "series": EventSeries { count: first.count, last_observed_time: time },
                });
                events
                    .patch(&first.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                first
            }
            None => {
                let name = format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.reporter.controller),
                    rand::random::<u64>()
                );
                let object = K8sEvent {
                    action: Some(event.action.clone()),
                    reason: Some(event.reason.clone()),
                    event_time: Some(time),
                    regarding: Some(regarding.clone()),
                    note: event.note.clone(),
                    metadata: ObjectMeta {
                        namespace: Some(namespace.clone()),
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    reporting_controller: Some(self.reporter.controller.clone()),
                    reporting_instance: Some(
                        self.reporter
                            .instance
                            .clone()
                            .unwrap_or_else(|| self.reporter.controller.clone()),
                    ),
                    type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
                    related: event.secondary.clone(),
                    ..K8sEvent::default()
                };
                events.create(&PostParams::default(), &object).await?;
                Published {
                    name,
                    count: 1,
                    at: now,
                }
            }
        };
        self.remember(key, published, now);
        Ok(())
    }

    /// Events remembered for series now.
    pub fn remembered_len(&self) -> usize {
        crate::lock(&self.published).len()
    }

    fn remembered(&self, key: &Key, now: Instant) -> Option<Published> {
        crate::lock(&self.published)
            .get(key)
            .filter(|p| now.duration_since(p.at) < SERIES_WINDOW)
            .cloned()
    }

    fn remember(&self, key: Key, published: Published, now: Instant) {
        let mut map = crate::lock(&self.published);
        map.insert(key, published);
        if map.len() > MAX_REMEMBERED {
            // Amortised: expired entries go, then the oldest until half
            // the room is free again.
            map.retain(|_, p| now.duration_since(p.at) < SERIES_WINDOW);
            if map.len() > MAX_REMEMBERED / 2 {
                let mut ages: Vec<Instant> = map.values().map(|p| p.at).collect();
                ages.sort_unstable_by(|a, b| b.cmp(a));
                if let Some(cut) = ages.get(MAX_REMEMBERED / 2 - 1).copied() {
                    map.retain(|_, p| p.at >= cut);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Recorder {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        Recorder::new(
            kube::Client::try_from(config).expect("client"),
            Reporter {
                controller: "tether".into(),
                instance: None,
            },
        )
    }

    fn key(i: usize) -> Key {
        Key {
            warning: false,
            reason: "Created".into(),
            action: "Create".into(),
            regarding: format!("uid-{i}"),
        }
    }

    fn published(at: Instant) -> Published {
        Published {
            name: "e".into(),
            count: 1,
            at,
        }
    }

    #[tokio::test]
    async fn events_remembered_for_series_stay_bounded_however_many_objects_publish() {
        let recorder = recorder();
        let now = Instant::now();
        for i in 0..(3 * MAX_REMEMBERED) {
            recorder.remember(key(i), published(now + Duration::from_millis(i as u64)), now);
        }
        assert!(recorder.remembered_len() <= MAX_REMEMBERED);
        let newest = now + Duration::from_millis((3 * MAX_REMEMBERED - 1) as u64);
        assert!(
            recorder.remembered(&key(3 * MAX_REMEMBERED - 1), newest).is_some(),
            "the newest stay"
        );
        assert!(recorder.remembered(&key(0), newest).is_none(), "the oldest go first");
    }

    #[tokio::test]
    async fn an_event_older_than_the_series_window_starts_a_new_event() {
        let recorder = recorder();
        let then = Instant::now();
        recorder.remember(key(1), published(then), then);
        assert!(recorder.remembered(&key(1), then + Duration::from_secs(60)).is_some());
        assert!(recorder.remembered(&key(1), then + SERIES_WINDOW).is_none());
    }
}
