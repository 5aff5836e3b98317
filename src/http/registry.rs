//! The shared `Target` of each TargetSystem. A Target is built from the
//! TargetSystem's spec and the Secrets it names, and rebuilt when either
//! changes (the fingerprint holds the spec generation and the Secrets'
//! resourceVersions, read from a metadata-only reflector, so an unchanged
//! target costs no API read). Everything that calls a target gets the same
//! instance, and so the same rate limit, concurrency limit and circuit.

use crate::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::auth::{Credentials, OAuth2};
use super::egress::EgressPolicy;
use super::{Limits, Target};
use crate::api::TargetSystem;
use crate::api::target_system::{Auth, MAX_CONNECT_TIMEOUT, MAX_REQUEST_TIMEOUT, MAX_RESPONSE_BYTES, TargetSystemSpec};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Secret {name:?} (named by the TargetSystem's {field}) does not exist")]
    SecretMissing { name: String, field: &'static str },
    #[error("Secret {name:?} has no key {key:?} (named by the TargetSystem's {field})")]
    KeyMissing {
        name: String,
        key: String,
        field: &'static str,
    },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("reading Secret {name:?}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl RegistryError {
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::SecretMissing { .. } | RegistryError::KeyMissing { .. } => "SecretNotFound",
            RegistryError::InvalidSpec(_) => "InvalidSpec",
            RegistryError::Kube { .. } => "KubernetesError",
        }
    }

    /// Fixed by creating or editing a Secret.
    pub fn awaits_secret(&self) -> bool {
        matches!(
            self,
            RegistryError::SecretMissing { .. } | RegistryError::KeyMissing { .. }
        )
    }

    /// Waiting on a Secret or a spec change, not on time.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RegistryError::Kube { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    uid: Option<String>,
    generation: Option<i64>,
    secrets: Vec<(String, Option<String>)>,
}

/// The fencing tokens calls carry: one per held shard, else one.
#[derive(Debug, Default)]
struct Fencing {
    token: String,
    count: u32,
    shards: std::collections::BTreeMap<u32, String>,
}

impl Fencing {
    fn for_namespace(&self, namespace: &str) -> String {
        if self.count > 1
            && let Some(token) = self.shards.get(&crate::shard::of(namespace, self.count))
        {
            return token.clone();
        }
        self.token.clone()
    }
}

pub struct Registry {
    client: kube::Client,
    secrets: Option<Store<PartialObjectMeta<Secret>>>,
    metrics: Arc<Metrics>,
    egress: Arc<EgressPolicy>,
    fencing: Mutex<Fencing>,
    targets: Mutex<HashMap<String, (Fingerprint, Arc<Target>)>>,
    /// Held while a target is built, so that concurrent callers wait for
    /// one build instead of each making their own Target (each with its
    /// own rate limit: the limits would no longer be shared).
    building: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(client: kube::Client, secrets: Option<Store<PartialObjectMeta<Secret>>>, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            secrets,
            metrics,
            egress: Arc::new(EgressPolicy::default_list()),
            fencing: Mutex::new(Fencing::default()),
            targets: Mutex::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
        }
    }

    /// The operator's egress deny list, for every target built from now on
    /// (the default is [`EgressPolicy::default_list`]).
    pub fn with_egress(mut self, egress: Arc<EgressPolicy>) -> Self {
        self.egress = egress;
        self
    }

    /// The fencing token put on calls from now on (leader identity and
    /// Lease transitions). Targets built before keep theirs until rebuilt.
    pub fn set_fencing_token(&self, token: String) {
        lock(&self.fencing).token = token;
        lock(&self.targets).clear();
    }

    /// Sharded: the fencing token of each held shard (of `count`); calls to
    /// a TargetSystem carry the token of its namespace's shard.
    pub fn set_shard_tokens(&self, count: u32, tokens: std::collections::BTreeMap<u32, String>) {
        let mut fencing = lock(&self.fencing);
        fencing.count = count;
        fencing.shards = tokens;
        drop(fencing);
        lock(&self.targets).clear();
    }

    /// Drops the target of a TargetSystem that is gone (its connection
    /// pool, limits and circuit go with it).
    pub fn forget(&self, ts: &TargetSystem) {
        let key = format!("{}/{}", ts.namespace().unwrap_or_default(), ts.name_any());
        lock(&self.targets).remove(&key);
    }

    /// The target of a TargetSystem, built or reused.
    pub async fn get(&self, ts: &TargetSystem) -> Result<Arc<Target>, RegistryError> {
        let namespace = ts.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", ts.name_any());
        let fingerprint = Fingerprint {
            uid: ts.meta().uid.clone(),
            generation: ts.meta().generation,
            secrets: secret_names(&ts.spec)
                .into_iter()
                .map(|name| {
                    let version = self.secrets.as_ref().and_then(|store| {
                        store
                            .get(&ObjectRef::new(&name).within(&namespace))
                            .and_then(|s| s.metadata.resource_version.clone())
                    });
                    (name, version)
                })
                .collect(),
        };
        let cached = || {
            lock(&self.targets)
                .get(&key)
                .filter(|(known, _)| *known == fingerprint)
                .map(|(_, target)| target.clone())
        };
        if let Some(target) = cached() {
            return Ok(target);
        }
        let _building = self.building.lock().await;
        if let Some(target) = cached() {
            return Ok(target); // built by the caller we waited for
        }
        let target = Arc::new(self.build(&key, &namespace, &ts.spec).await?);
        lock(&self.targets).insert(key, (fingerprint, target.clone()));
        Ok(target)
    }

    async fn build(&self, key: &str, namespace: &str, spec: &TargetSystemSpec) -> Result<Target, RegistryError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let read = |name: String, key: String, field: &'static str| {
            let secrets = secrets.clone();
            async move { read_key(&secrets, &name, &key, field).await }
        };
        let base = super::url::parse_base(&spec.base_url).map_err(|e| RegistryError::InvalidSpec(e.to_string()))?;
        let credentials = match &spec.auth {
            None => Credentials::None,
            Some(Auth {
                bearer: Some(bearer), ..
            }) => {
                let r = &bearer.token_secret_ref;
                Credentials::Bearer(read(r.name.clone(), r.key.clone(), "auth.bearer.tokenSecretRef").await?)
            }
            Some(Auth { basic: Some(basic), .. }) => Credentials::Basic {
                username: read(basic.secret_ref.name.clone(), "username".into(), "auth.basic.secretRef").await?,
                password: read(basic.secret_ref.name.clone(), "password".into(), "auth.basic.secretRef").await?,
            },
            Some(Auth {
                api_key: Some(api_key), ..
            }) => Credentials::ApiKey {
                header: reqwest::header::HeaderName::from_bytes(api_key.header.as_bytes()).map_err(|_| {
                    RegistryError::InvalidSpec(format!("auth.apiKey.header {:?} is not a header name", api_key.header))
                })?,
                key: read(
                    api_key.key_secret_ref.name.clone(),
                    api_key.key_secret_ref.key.clone(),
                    "auth.apiKey.keySecretRef",
                )
                .await?,
            },
            Some(Auth {
                oauth2_client_credentials: Some(oauth),
                ..
            }) => {
                let token_url =
                    super::url::parse_base(&oauth.token_url).map_err(|e| RegistryError::InvalidSpec(e.to_string()))?;
                let name = oauth.secret_ref.name.clone();
                Credentials::OAuth2(OAuth2::new(
                    token_url,
                    read(
                        name.clone(),
                        "clientId".into(),
                        "auth.oauth2ClientCredentials.secretRef",
                    )
                    .await?,
                    read(name, "clientSecret".into(), "auth.oauth2ClientCredentials.secretRef").await?,
                    oauth.scopes.clone(),
                ))
            }
            Some(_) => return Err(RegistryError::InvalidSpec("auth sets no scheme".into())),
        };
        let timeout = |d: &crate::api::common::Duration, field: &str| {
            d.to_std()
                .ok_or_else(|| RegistryError::InvalidSpec(format!("{field} {:?} is not a duration", d.0)))
        };
        // The CRD refuses these; an object stored before the rule existed
        // gets the same answer here, so no tenant can turn a timeout off.
        let bounded = |d: &crate::api::common::Duration, field: &str, max: std::time::Duration| {
            let value = timeout(d, field)?;
            if value > max {
                return Err(RegistryError::InvalidSpec(format!(
                    "{field} {:?} is longer than the maximum of {}s",
                    d.0,
                    max.as_secs()
                )));
            }
            Ok(value)
        };
        let limits = Limits {
            requests_per_second: spec.rate_limit.as_ref().map(|r| r.requests_per_second),
            burst: spec.rate_limit.as_ref().map_or(1, |r| r.burst.max(1) as u32),
            max_concurrency: spec.max_concurrency.max(1) as u32,
            request_timeout: bounded(&spec.timeouts.request, "timeouts.request", MAX_REQUEST_TIMEOUT)?,
            connect_timeout: bounded(&spec.timeouts.connect, "timeouts.connect", MAX_CONNECT_TIMEOUT)?,
            failure_threshold: spec.circuit_breaker.failure_threshold.max(1) as u32,
            open_for: timeout(&spec.circuit_breaker.open_for, "circuitBreaker.openFor")?,
            max_response_bytes: u64::try_from(spec.max_response_bytes)
                .unwrap_or(1)
                .clamp(1, MAX_RESPONSE_BYTES),
            follow_redirects: spec.follow_redirects,
        };
        let mut http = super::client_builder(&limits, &base, &self.egress);
        if let Some(tls) = &spec.tls {
            if let Some(ca) = &tls.ca_secret_ref {
                let pem = read(ca.name.clone(), ca.key.clone(), "tls.caSecretRef").await?;
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|_| {
                    RegistryError::InvalidSpec(format!(
                        "Secret {:?} key {:?} holds no PEM certificate",
                        ca.name, ca.key
                    ))
                })?;
                for cert in certs {
                    http = http.add_root_certificate(cert);
                }
            }
            http = http.danger_accept_invalid_certs(tls.insecure_skip_verify);
        }
        let http = http
            .build()
            .map_err(|e| RegistryError::InvalidSpec(format!("cannot build an HTTP client: {e}")))?;
        let fencing = lock(&self.fencing).for_namespace(namespace);
        Ok(Target::new(
            key.to_owned(),
            base,
            super::EgressClient {
                http,
                egress: self.egress.clone(),
            },
            credentials,
            &limits,
            fencing,
            self.metrics.clone(),
        ))
    }
}

/// Names of the Secrets a TargetSystem reads.
pub fn secret_names(spec: &TargetSystemSpec) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(auth) = &spec.auth {
        names.extend(auth.bearer.as_ref().map(|b| b.token_secret_ref.name.clone()));
        names.extend(auth.basic.as_ref().map(|b| b.secret_ref.name.clone()));
        names.extend(auth.api_key.as_ref().map(|k| k.key_secret_ref.name.clone()));
        names.extend(
            auth.oauth2_client_credentials
                .as_ref()
                .map(|o| o.secret_ref.name.clone()),
        );
    }
    if let Some(ca) = spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        names.push(ca.name.clone());
    }
    names.sort();
    names.dedup();
    names
}

async fn read_key(secrets: &Api<Secret>, name: &str, key: &str, field: &'static str) -> Result<String, RegistryError> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| RegistryError::Kube {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| RegistryError::SecretMissing {
            name: name.to_owned(),
            field,
        })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).cloned())
        .ok_or_else(|| RegistryError::KeyMissing {
            name: name.to_owned(),
            key: key.to_owned(),
            field,
        })?;
    // `echo token > file` leaves a newline that no API expects.
    Ok(value.trim().to_owned())
}
