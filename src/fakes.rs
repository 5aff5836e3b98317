//! Hand-written fakes of the two ports, for unit tests of the reconcilers'
//! and steps' logic without a cluster or a target: [`FakeSystem`] (the
//! adapter port, an in-memory external system that records every call) and
//! [`FakeTarget`] (the request port, answering from a script).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::adapter::{
    ActionOutcome, AdapterError, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation, Result,
    SecretValues,
};
use crate::api::target_system::CircuitState;
use crate::lock;
use crate::request::{CallError, HttpAnswer, HttpCall, TargetRequests};

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Observe(String),
    Find(String),
    Create { name: String, key: Option<String> },
    Update(String),
    Delete(String),
    Act { action: String, input: Value, key: String },
}

/// An external system in memory: objects by id, with a natural key (the
/// external name), and failures queued per operation.
#[derive(Default)]
pub struct FakeSystem {
    pub objects: Mutex<BTreeMap<String, (String, Value)>>,
    pub calls: Mutex<Vec<Call>>,
    /// Errors the next calls of an operation return, in order.
    pub failures: Mutex<BTreeMap<&'static str, VecDeque<AdapterError>>>,
    /// Outcomes the next actions return, in order (default: success, no
    /// outputs).
    pub actions: Mutex<VecDeque<ActionOutcome>>,
    pub can_find: bool,
    pub can_update: bool,
    next_id: Mutex<u32>,
}

impl FakeSystem {
    pub fn new() -> Self {
        Self {
            can_find: true,
            can_update: true,
            ..Self::default()
        }
    }

    /// An object the system already holds, under `name`.
    pub fn with_object(self, id: &str, name: &str, state: Value) -> Self {
        lock(&self.objects).insert(id.into(), (name.into(), state));
        self
    }

    /// The next call of `operation` fails with `error`.
    pub fn fail_next(&self, operation: &'static str, error: AdapterError) {
        lock(&self.failures).entry(operation).or_default().push_back(error);
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// How many calls of one kind were made.
    pub fn count(&self, kind: fn(&Call) -> bool) -> usize {
        lock(&self.calls).iter().filter(|c| kind(c)).count()
    }

    fn record(&self, call: Call, operation: &'static str) -> Result<()> {
        lock(&self.calls).push(call);
        match lock(&self.failures).get_mut(operation).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn object(id: &str, state: &Value) -> ExternalObject {
        ExternalObject {
            id: id.into(),
            state: state.clone(),
            secrets: SecretValues::default(),
        }
    }
}

impl ExternalSystem for FakeSystem {
    async fn observe(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        let id = request.external_id.unwrap_or_default().to_owned();
        self.record(Call::Observe(id.clone()), "observe")?;
        Ok(match lock(&self.objects).get(&id) {
            Some((_, state)) => Observation::Present(Self::object(&id, state)),
            None => Observation::Absent,
        })
    }

    fn can_find(&self, _: &str) -> bool {
        self.can_find
    }

    async fn find(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        self.record(Call::Find(request.external_name.into()), "find")?;
        Ok(lock(&self.objects)
            .iter()
            .find(|(_, (name, _))| name == request.external_name)
            .map_or(Observation::Absent, |(id, (_, state))| {
                Observation::Present(Self::object(id, state))
            }))
    }

    async fn create(&self, request: &ObjectRequest<'_>) -> Result<ExternalObject> {
        self.record(
            Call::Create {
                name: request.external_name.into(),
                key: request.idempotency_key.map(str::to_owned),
            },
            "create",
        )?;
        let id = {
            let mut next = lock(&self.next_id);
            *next += 1;
            format!("obj-{next}")
        };
        lock(&self.objects).insert(id.clone(), (request.external_name.into(), request.properties.clone()));
        Ok(Self::object(&id, request.properties))
    }

    fn can_update(&self, _: &str) -> bool {
        self.can_update
    }

    async fn update(&self, request: &ObjectRequest<'_>) -> Result<Option<Value>> {
        let id = request.external_id.unwrap_or_default().to_owned();
        self.record(Call::Update(id.clone()), "update")?;
        if let Some((_, state)) = lock(&self.objects).get_mut(&id) {
            *state = request.properties.clone();
        }
        Ok(Some(request.properties.clone()))
    }

    async fn delete(&self, request: &ObjectRequest<'_>) -> Result<Deletion> {
        let id = request.external_id.unwrap_or_default().to_owned();
        self.record(Call::Delete(id.clone()), "delete")?;
        Ok(match lock(&self.objects).remove(&id) {
            Some(_) => Deletion::Deleted,
            None => Deletion::AlreadyGone,
        })
    }

    async fn act(&self, action: &str, input: &Value, idempotency_key: &str) -> Result<ActionOutcome> {
        self.record(
            Call::Act {
                action: action.into(),
                input: input.clone(),
                key: idempotency_key.into(),
            },
            "act",
        )?;
        Ok(lock(&self.actions).pop_front().unwrap_or(ActionOutcome {
            status: 200,
            body: json!({}),
            succeeded: true,
            outputs: BTreeMap::new(),
        }))
    }
}

/// A target that answers from a script and records every call it gets.
#[derive(Default)]
pub struct FakeTarget {
    pub answers: Mutex<VecDeque<Result<HttpAnswer, CallError>>>,
    pub sent: Mutex<Vec<HttpCall>>,
}

impl FakeTarget {
    /// A target whose next answers are `answers`, in order (then 404s).
    pub fn answering(answers: Vec<Result<HttpAnswer, CallError>>) -> Self {
        Self {
            answers: Mutex::new(answers.into()),
            sent: Mutex::default(),
        }
    }

    pub fn sent(&self) -> Vec<HttpCall> {
        lock(&self.sent).clone()
    }
}

/// An answer with `status` and `body`.
pub fn answer(status: u16, body: Value) -> Result<HttpAnswer, CallError> {
    Ok(HttpAnswer { status, body })
}

impl TargetRequests for FakeTarget {
    async fn send(&self, call: HttpCall) -> Result<HttpAnswer, CallError> {
        lock(&self.sent).push(call);
        lock(&self.answers).pop_front().unwrap_or(Ok(HttpAnswer {
            status: 404,
            body: json!({"message": "no scripted answer"}),
        }))
    }

    fn redact(&self, text: &str) -> String {
        text.replace("s3cret", "[redacted]")
    }

    fn base_url(&self) -> &str {
        "https://fake.example/"
    }

    fn circuit_state(&self) -> CircuitState {
        CircuitState::Closed
    }
}
