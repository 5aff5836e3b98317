//! Builders for what the integration tests set up again and again: a
//! simulator that accepts a token, and a tenant namespace with an Adapter,
//! Secrets and TargetSystems pointing at it, watched by a `tether run`.
//!
//! ```ignore
//! let sim = Simulator::accepting(TOKEN).start();
//! let (ns, controller) = Tenant::new(cp, "drift").target(&sim, TOKEN).start();
//! ```

use serde_json::{Map, Value, json};
use tether_sim::{Credentials, SimHandle};

use super::ControlPlane;
use super::tether::{Controller, KubectlExt};

/// A simulator to start on its own runtime thread, so it keeps answering
/// while the test blocks on `kubectl wait`.
pub struct Simulator {
    credentials: Credentials,
}

impl Simulator {
    /// Accepting the bearer token `token` (and nothing else).
    pub fn accepting(token: &str) -> Self {
        Self::with_credentials(Credentials {
            bearer_tokens: vec![token.into()],
            ..Credentials::default()
        })
    }

    /// Accepting exactly `credentials`.
    pub fn with_credentials(credentials: Credentials) -> Self {
        Simulator { credentials }
    }

    /// Also accepting the API key `key`.
    pub fn and_api_key(mut self, key: &str) -> Self {
        self.credentials.api_keys.push(key.into());
        self
    }

    /// Listens on a free port of 127.0.0.1.
    pub fn start(self) -> SimHandle {
        tether::install_crypto_provider();
        tether_sim::start_on_own_thread("127.0.0.1:0".parse().expect("address"), self.credentials)
            .expect("simulator starts")
    }
}

/// Where a TargetSystem points: a simulator, or any base URL.
pub trait Endpoint {
    fn url(&self) -> String;
}

impl Endpoint for SimHandle {
    fn url(&self) -> String {
        self.base_url()
    }
}

impl Endpoint for str {
    fn url(&self) -> String {
        self.to_owned()
    }
}

impl Endpoint for String {
    fn url(&self) -> String {
        self.clone()
    }
}

struct TargetSystem {
    name: String,
    base_url: String,
    spec: Map<String, Value>,
}

/// A namespace `<prefix>-…` set up by the admin (the platform team): an
/// Adapter `<adapter prefix>-<namespace>` (the contacts Adapter unless
/// [`Tenant::adapter`] says otherwise), then one list of the Secrets and
/// TargetSystems, then any further objects; [`Tenant::start`] adds a
/// `tether run` watching it.
pub struct Tenant<'a> {
    cp: &'a ControlPlane,
    prefix: String,
    adapter_prefix: &'static str,
    adapter: Box<dyn Fn(&str) -> Value + 'a>,
    bearer_secret: Option<String>,
    secrets: Vec<Value>,
    targets: Vec<TargetSystem>,
    spec: Map<String, Value>,
    objects: Vec<Value>,
    controller_args: Vec<String>,
    default_egress: bool,
}

impl<'a> Tenant<'a> {
    pub fn new(cp: &'a ControlPlane, prefix: &str) -> Self {
        Tenant {
            cp,
            prefix: prefix.to_owned(),
            adapter_prefix: "contacts",
            adapter: Box::new(contacts_adapter),
            bearer_secret: None,
            secrets: Vec::new(),
            targets: Vec::new(),
            spec: Map::new(),
            objects: Vec::new(),
            controller_args: Vec::new(),
            default_egress: false,
        }
    }

    /// The Adapter `<name>-<namespace>`, its manifest made by `manifest`
    /// from that name.
    pub fn adapter(mut self, name: &'static str, manifest: impl Fn(&str) -> Value + 'a) -> Self {
        self.adapter_prefix = name;
        self.adapter = Box::new(manifest);
        self
    }

    /// A Secret `name` holding `token` under the key `token`, which every
    /// TargetSystem of the tenant presents as its bearer token.
    pub fn bearer_token(mut self, name: &str, token: &str) -> Self {
        self.bearer_secret = Some(name.to_owned());
        self.secret(name, "token", token)
    }

    /// A Secret `name` holding `value` under `key`.
    pub fn secret(mut self, name: &str, key: &str, value: &str) -> Self {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                            "stringData": {key: value}});
        self.secrets.push(secret);
        self
    }

    /// A TargetSystem `name` on `endpoint`, with the tenant's bearer token.
    pub fn target_system(self, name: &str, endpoint: &(impl Endpoint + ?Sized)) -> Self {
        self.add_target(name, endpoint.url(), Map::new())
    }

    /// The usual single target: the TargetSystem `target` on `endpoint`,
    /// its bearer token `token` in the Secret `target-token`, with
    /// connect and request timeouts of 2 s and 10 s.
    pub fn target(self, endpoint: &(impl Endpoint + ?Sized), token: &str) -> Self {
        let timeouts = json!({"connect": "2s", "request": "10s"});
        self.bearer_token("target-token", token).add_target(
            "target",
            endpoint.url(),
            Map::from_iter([("timeouts".to_owned(), timeouts)]),
        )
    }

    fn add_target(mut self, name: &str, base_url: String, spec: Map<String, Value>) -> Self {
        self.targets.push(TargetSystem {
            name: name.to_owned(),
            base_url,
            spec,
        });
        self
    }

    /// Fields set in the spec of every TargetSystem (replacing the
    /// defaults of [`Tenant::target`] they name).
    pub fn spec(mut self, fields: Value) -> Self {
        if let Value::Object(fields) = fields {
            self.spec.extend(fields);
        }
        self
    }

    /// An object applied after the TargetSystems, before the controller
    /// starts.
    pub fn with_object(mut self, manifest: Value) -> Self {
        self.objects.push(manifest);
        self
    }

    /// Arguments added to `tether run --namespace <namespace>`.
    pub fn controller_args(mut self, args: &[&str]) -> Self {
        self.controller_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The controller keeps its own egress default (loopback denied)
    /// instead of the tests' list.
    pub fn default_egress(mut self) -> Self {
        self.default_egress = true;
        self
    }

    /// Creates the namespace and applies the objects; no controller.
    /// Returns the namespace.
    pub fn create(&self) -> String {
        let Tenant {
            cp,
            prefix,
            adapter_prefix,
            adapter,
            bearer_secret,
            secrets,
            targets,
            spec,
            objects,
            controller_args: _,
            default_egress: _,
        } = self;
        let ns = cp.namespace(prefix);
        let adapter_name = format!("{adapter_prefix}-{ns}");
        cp.apply_json(&ns, &adapter(&adapter_name));
        let mut items = secrets.clone();
        for target in targets {
            let mut fields = json!({"adapterRef": {"name": adapter_name}, "baseUrl": target.base_url});
            if let Some(secret) = bearer_secret {
                fields["auth"] = json!({"bearer": {"tokenSecretRef": {"name": secret, "key": "token"}}});
            }
            if let Value::Object(fields) = &mut fields {
                fields.extend(target.spec.clone());
                fields.extend(spec.clone());
            }
            items.push(json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem",
                              "metadata": {"name": target.name}, "spec": fields}));
        }
        if !items.is_empty() {
            cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": items}));
        }
        for object in objects {
            cp.apply_json(&ns, object);
        }
        ns
    }

    /// Creates the namespace, applies the objects and starts a controller
    /// watching it.
    pub fn start(self) -> (String, Controller) {
        let ns = self.create();
        let args: Vec<&str> = self.controller_args.iter().map(String::as_str).collect();
        let controller = if self.default_egress {
            Controller::start_with_default_egress(self.cp, &ns, &args)
        } else {
            Controller::start(self.cp, &ns, &args)
        };
        (ns, controller)
    }
}

/// An Adapter for the simulator's `contacts` collection.
pub fn contacts_adapter(name: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
        "spec": {"rest": {"resourceTypes": [{
            "name": "contact",
            "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
            "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties + {externalName: .name}"},
            "update": {"method": "PATCH", "path": "/v1/contacts/\\(.id)", "body": ".properties"},
            "delete": {"method": "DELETE", "path": "/v1/contacts/\\(.id)"},
            "find": {"method": "GET", "path": "/v1/contacts", "query": {"externalName": "\\(.name)"}, "select": ".items[0]"}
        }]}}
    })
}

/// The contacts Adapter with `field` of its `create` mapping set to
/// `value`, for [`Tenant::adapter`].
pub fn contacts_adapter_with_create(field: &'static str, value: Value) -> impl Fn(&str) -> Value {
    move |name| {
        let mut adapter = contacts_adapter(name);
        adapter["spec"]["rest"]["resourceTypes"][0]["create"][field] = value.clone();
        adapter
    }
}

/// An ExternalResource of type `contact` on `target`.
pub fn contact(name: &str, properties: Value, extra_spec: Value) -> Value {
    let mut spec = json!({"targetRef": {"name": "target"}, "type": "contact", "properties": properties});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra_spec) {
        spec.extend(extra);
    }
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": name}, "spec": spec})
}
