//! The act step of an ExternalResource: look the external object up
//! through the adapter port (by id, or by natural key), let the pure
//! [`plan::decide`] choose, and carry the decision out — with the create's
//! intent (its idempotency key) written to status before the request
//! leaves. Generic over the port and over its [`Effects`] (the status
//! write, Events, the other resources' claims), so the decision path is
//! tested with the fake adapter, without a cluster or a target.

use crate::api::common::event;
use serde_json::Value;

use super::plan::{self, Decision, Facts, Lookup};
use super::status::{self, How, Outcome};
use crate::adapter::{ExternalObject, ExternalSystem, ObjectRequest, Observation};
use crate::api::external_resource::{ExternalResourceSpec, ExternalResourceStatus, ManagementPolicy};
use crate::controller::{Error, Failure};

/// What the sync of one resource reads.
pub struct Input<'a> {
    /// The spec with `propertiesFrom` resolved.
    pub spec: &'a ExternalResourceSpec,
    /// The properties sent to the target (with the secret properties).
    pub sent: &'a Value,
    /// The natural key (`externalName`, default `<namespace>-<name>`).
    pub external_name: &'a str,
    pub status: Option<&'a ExternalResourceStatus>,
    pub generation: Option<i64>,
    /// The idempotency key a new create would carry.
    pub fresh_key: String,
}

/// Another resource's hold on an external object.
pub enum Claim<'a> {
    /// On the object with this id.
    Id(&'a str),
    /// On this external name (before a create).
    Name(&'a str),
}

/// The side effects of a sync besides the target: the reconciler writes
/// them to the API server; tests record them.
pub trait Effects: Send {
    /// The older resource that already manages the object, if another does.
    fn claimed_by(&self, claim: Claim<'_>) -> Option<String>;
    /// Writes `status` (a create's intent) before the create is sent.
    fn write_intent(&mut self, status: ExternalResourceStatus) -> impl Future<Output = Result<(), Error>> + Send;
    /// Publishes an Event on the resource.
    fn event(&self, note: Note) -> impl Future<Output = ()> + Send;
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub text: String,
}

impl Note {
    fn normal(reason: &'static str, action: &'static str, text: String) -> Self {
        Self {
            warning: false,
            reason,
            action,
            text,
        }
    }

    fn warning(reason: &'static str, action: &'static str, text: String) -> Self {
        Self {
            warning: true,
            reason,
            action,
            text,
        }
    }
}

/// What a successful sync ended with (owned, for status and events).
#[derive(Debug, PartialEq)]
pub enum Synced {
    Object {
        object: ExternalObject,
        how: How,
    },
    Drift {
        object: ExternalObject,
        drifted: Vec<String>,
    },
    NotFound,
    Conflict {
        id: String,
        owner: String,
    },
}

impl Synced {
    /// With the secret properties' values redacted from what was observed.
    pub fn redacted(mut self, hide: &crate::http::auth::Redactor) -> Self {
        if let Synced::Object { object, .. } | Synced::Drift { object, .. } = &mut self {
            hide.redact_json(&mut object.state, &[]);
        }
        self
    }

    pub fn outcome(&self) -> Outcome<'_> {
        match self {
            Synced::Object { object, how } => Outcome::Synced { object, how: *how },
            Synced::Drift { object, drifted } => Outcome::DriftReported { object, drifted },
            Synced::NotFound => Outcome::NotFound,
            Synced::Conflict { id, owner } => Outcome::Conflict { id, owner },
        }
    }

    /// A label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Synced::Object { how, .. } => how.reason(),
            Synced::Drift { .. } => "DriftReported",
            Synced::NotFound => "NotFound",
            Synced::Conflict { .. } => "Conflict",
        }
    }
}

/// One pass against the target: `Err` only when the intent could not be
/// written (nothing was created); a failure of the target is `Ok(Err(_))`.
pub async fn sync(
    adapter: &impl ExternalSystem,
    input: Input<'_>,
    effects: &mut impl Effects,
) -> Result<Result<Synced, Failure>, Error> {
    let spec = input.spec;
    let status = input.status;
    let request = |id, key| ObjectRequest {
        resource_type: &spec.type_,
        external_id: id,
        external_name: input.external_name,
        properties: input.sent,
        idempotency_key: key,
    };
    let lookup = plan::lookup(spec, status, adapter.can_find(&spec.type_));
    let observation = match &lookup {
        Lookup::ById(id) => adapter.observe(&request(Some(id), None)).await,
        Lookup::Find => adapter.find(&request(None, None)).await,
        Lookup::ResendCreate(_) | Lookup::Nothing => Ok(Observation::Absent),
    };
    let observation = match observation {
        Ok(observation) => observation,
        Err(e) => return Ok(Err(e.into())),
    };
    let owned_id = status.and_then(|s| s.external_id.clone());
    let claimed_by = match &observation {
        Observation::Present(object) => effects.claimed_by(Claim::Id(&object.id)),
        Observation::Absent => effects.claimed_by(Claim::Name(input.external_name)),
    };
    let decision = plan::decide(
        spec,
        observation,
        Facts {
            status,
            claimed_by,
            can_update: adapter.can_update(&spec.type_),
            fresh_key: input.fresh_key.clone(),
        },
    );
    let adopted = |object: &ExternalObject| owned_id.as_deref() != Some(object.id.as_str());
    Ok(Ok(match decision {
        Decision::InSync { object } => {
            let how = if adopted(&object) { How::Adopted } else { How::InSync };
            if how == How::Adopted {
                let text = format!("adopted existing object {}", object.id);
                effects.event(Note::normal(event::ADOPTED, "Adopt", text)).await;
            }
            Synced::Object { object, how }
        }
        Decision::Correct { mut object, drifted } => {
            match adapter.update(&request(Some(&object.id), None)).await {
                Ok(state) => object.state = state.unwrap_or_else(|| spec.properties.clone()),
                Err(e) => return Ok(Err(e.into())),
            }
            let text = format!("corrected {} on {}", drifted.join(", "), object.id);
            let reason = if adopted(&object) {
                event::ADOPTED
            } else {
                event::DRIFT_CORRECTED
            };
            effects.event(Note::normal(reason, "Update", text)).await;
            Synced::Object {
                object,
                how: How::Updated,
            }
        }
        Decision::Report { object, drifted } => {
            let known = status.map(|s| s.drifted_fields.clone()).unwrap_or_default();
            if known != drifted {
                let text = format!("{} differs at {}", object.id, drifted.join(", "));
                effects
                    .event(Note::warning(event::DRIFT_DETECTED, "Observe", text))
                    .await;
            }
            Synced::Drift { object, drifted }
        }
        Decision::Create { idempotency_key } => {
            if spec.management_policy == ManagementPolicy::ObserveOnly {
                return Ok(Ok(Synced::NotFound));
            }
            // The intent goes to status before the request leaves.
            let intent = status::compute(
                status,
                spec,
                input.generation,
                &Outcome::Creating {
                    idempotency_key: &idempotency_key,
                },
                chrono::Utc::now(),
            );
            effects.write_intent(intent).await?;
            match adapter.create(&request(None, Some(&idempotency_key))).await {
                Ok(object) => {
                    let text = format!("created {}", object.id);
                    effects.event(Note::normal(event::CREATED, "Create", text)).await;
                    Synced::Object {
                        object,
                        how: How::Created,
                    }
                }
                Err(e) => {
                    let create_not_applied = e.certainly_not_applied();
                    return Ok(Err(Failure {
                        create_not_applied,
                        ..e.into()
                    }));
                }
            }
        }
        Decision::NotFound => Synced::NotFound,
        Decision::Conflict { id, owner } => {
            let previously = status.is_some_and(|s| crate::conditions::is_true(&s.conditions, status::CONFLICT));
            if !previously {
                let text = format!("the external object {id} is managed by ExternalResource {owner}");
                effects.event(Note::warning(event::CONFLICT, "Adopt", text)).await;
            }
            Synced::Conflict { id, owner }
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::adapter::AdapterError;
    use crate::api::external_resource::DriftPolicy;
    use crate::fakes::{Call, FakeSystem};
    use crate::request::CallError;

    /// Effects recorded in memory: the intents written and the Events.
    #[derive(Default)]
    struct Recorded {
        intents: Vec<ExternalResourceStatus>,
        notes: std::sync::Mutex<Vec<Note>>,
        claims: Vec<(String, String)>,
    }

    impl Effects for Recorded {
        fn claimed_by(&self, claim: Claim<'_>) -> Option<String> {
            let wanted = match claim {
                Claim::Id(id) => id,
                Claim::Name(name) => name,
            };
            self.claims
                .iter()
                .find(|(on, _)| on == wanted)
                .map(|(_, by)| by.clone())
        }

        async fn write_intent(&mut self, status: ExternalResourceStatus) -> Result<(), Error> {
            self.intents.push(status);
            Ok(())
        }

        async fn event(&self, note: Note) {
            crate::lock(&self.notes).push(note);
        }
    }

    fn spec(properties: Value) -> ExternalResourceSpec {
        serde_json::from_value(json!({
            "targetRef": {"name": "crm"},
            "type": "contact",
            "properties": properties,
        }))
        .expect("spec")
    }

    async fn pass(
        system: &FakeSystem,
        spec: &ExternalResourceSpec,
        status: Option<&ExternalResourceStatus>,
        effects: &mut Recorded,
    ) -> Result<Synced, Failure> {
        let input = Input {
            spec,
            sent: &spec.properties,
            external_name: "demo-ada",
            status,
            generation: Some(1),
            fresh_key: "key-1".into(),
        };
        sync(system, input, effects).await.expect("intent written")
    }

    #[tokio::test]
    async fn an_absent_object_is_created_once_with_its_intent_recorded_before_the_request() {
        let system = FakeSystem::new();
        let spec = spec(json!({"email": "ada@example.com"}));
        let mut effects = Recorded::default();
        let synced = pass(&system, &spec, None, &mut effects).await.expect("synced");
        let Synced::Object { object, how } = &synced else {
            panic!("{synced:?}")
        };
        assert_eq!(*how, How::Created);
        // Nothing was ever created and no externalName names an object
        // to adopt: one create, with the key.
        assert_eq!(
            system.calls(),
            vec![Call::Create {
                name: "demo-ada".into(),
                key: Some("key-1".into())
            }]
        );
        assert_eq!(effects.intents.len(), 1, "the intent is written before the create");
        assert_eq!(
            effects.intents[0]
                .pending_create
                .as_ref()
                .map(|p| p.idempotency_key.as_str()),
            Some("key-1")
        );
        // The next pass observes it by id: in sync, nothing sent.
        let next = status::compute(None, &spec, Some(1), &synced.outcome(), chrono::Utc::now());
        let again = pass(&system, &spec, Some(&next), &mut effects).await.expect("synced");
        assert!(matches!(again, Synced::Object { how: How::InSync, .. }), "{again:?}");
        assert_eq!(system.count(|c| matches!(c, Call::Create { .. })), 1);
        assert_eq!(system.calls().last(), Some(&Call::Observe(object.id.clone())));
    }

    #[tokio::test]
    async fn a_lost_create_answer_adopts_the_object_instead_of_creating_a_second() {
        // The create committed at the target, but its answer was lost: the
        // status holds only the intent.
        let system = FakeSystem::new().with_object("obj-9", "demo-ada", json!({"email": "ada@example.com"}));
        let spec = spec(json!({"email": "ada@example.com"}));
        let intent = status::compute(
            None,
            &spec,
            Some(1),
            &Outcome::Creating {
                idempotency_key: "key-0",
            },
            chrono::Utc::now(),
        );
        let synced = pass(&system, &spec, Some(&intent), &mut Recorded::default())
            .await
            .expect("synced");
        assert!(
            matches!(&synced, Synced::Object { object, .. } if object.id == "obj-9"),
            "{synced:?}"
        );
        assert_eq!(system.count(|c| matches!(c, Call::Create { .. })), 0);
    }

    #[tokio::test]
    async fn drift_is_corrected_with_an_update_or_only_reported_by_policy() {
        let system = FakeSystem::new().with_object("obj-1", "demo-ada", json!({"plan": "free"}));
        let mut desired = spec(json!({"plan": "pro"}));
        let owned = ExternalResourceStatus {
            external_id: Some("obj-1".into()),
            ..ExternalResourceStatus::default()
        };
        let synced = pass(&system, &desired, Some(&owned), &mut Recorded::default())
            .await
            .expect("synced");
        assert!(matches!(synced, Synced::Object { how: How::Updated, .. }), "{synced:?}");
        assert_eq!(system.count(|c| matches!(c, Call::Update(id) if id == "obj-1")), 1);

        let system = FakeSystem::new().with_object("obj-1", "demo-ada", json!({"plan": "free"}));
        desired.drift_policy = DriftPolicy::Report;
        let synced = pass(&system, &desired, Some(&owned), &mut Recorded::default())
            .await
            .expect("synced");
        assert_eq!(
            synced,
            Synced::Drift {
                object: ExternalObject {
                    id: "obj-1".into(),
                    state: json!({"plan": "free"}),
                    secrets: Default::default()
                },
                drifted: vec!["/plan".into()]
            }
        );
        assert_eq!(system.count(|c| matches!(c, Call::Update(_))), 0);
    }

    #[tokio::test]
    async fn an_object_another_resource_manages_is_a_conflict_not_an_adoption() {
        let system = FakeSystem::new().with_object("obj-1", "demo-ada", json!({"plan": "pro"}));
        let mut spec = spec(json!({"plan": "pro"}));
        // Named to adopt: found by natural key, but another resource holds it.
        spec.external_name = Some("demo-ada".into());
        let mut effects = Recorded {
            claims: vec![("obj-1".into(), "demo/first".into())],
            ..Recorded::default()
        };
        let synced = pass(&system, &spec, None, &mut effects).await.expect("synced");
        assert_eq!(
            synced,
            Synced::Conflict {
                id: "obj-1".into(),
                owner: "demo/first".into()
            }
        );
        assert_eq!(system.count(|c| matches!(c, Call::Update(_) | Call::Create { .. })), 0);
    }

    #[tokio::test]
    async fn a_create_refused_before_it_left_says_so_and_one_that_timed_out_does_not() {
        let spec = spec(json!({"plan": "pro"}));
        let system = FakeSystem::new();
        system.fail_next("create", AdapterError::Call(CallError::Throttled { retry_after: None }));
        let failure = pass(&system, &spec, None, &mut Recorded::default())
            .await
            .expect_err("throttled");
        assert!(failure.create_not_applied, "a 429 proves nothing was created");
        assert!(!failure.permanent);

        let system = FakeSystem::new();
        system.fail_next(
            "create",
            AdapterError::Call(CallError::Unavailable {
                message: "timed out".into(),
                sent: true,
            }),
        );
        let failure = pass(&system, &spec, None, &mut Recorded::default())
            .await
            .expect_err("timed out");
        assert!(
            !failure.create_not_applied,
            "a timeout may follow a create that happened"
        );
    }
}
