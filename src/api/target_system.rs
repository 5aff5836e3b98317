//! `TargetSystem` (namespaced): one instance of an external API — which
//! adapter speaks to it, where it is, how to authenticate, and how hard it may
//! be driven. Every ExternalResource and workflow step that names a target
//! shares its rate limit, concurrency limit and circuit breaker.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, ObjectRef, SecretKeyRef, SecretRef, conditions_schema};

/// One instance of an external API.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "A TargetSystem (namespaced) is one instance of an external API: its base URL, its credentials (Secrets of the namespace), the Adapter that maps it, and the limits Tether keeps when calling it — rate, concurrency, timeouts, circuit breaker, largest answer.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "TargetSystem",
    namespaced,
    status = "TargetSystemStatus",
    shortname = "tts",
    category = "tether",
    printcolumn = r#"{"name":"Adapter","type":"string","jsonPath":".spec.adapterRef.name"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Circuit","type":"string","jsonPath":".status.circuit"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TargetSystemSpec {
    /// The cluster-scoped Adapter that knows how to talk to this API.
    pub adapter_ref: ObjectRef,

    /// Absolute base URL; every request path is resolved below it and can
    /// never reach another host.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))").message("baseUrl must be an absolute http:// or https:// URL, e.g. https://api.example.com/v2"))]
    pub base_url: String,

    /// How to authenticate. Omit for an API that needs no credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,

    /// TLS settings for HTTPS targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// Requests per second allowed to this target, shared by everything that
    /// uses it. Omit for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Requests in flight at once to this target.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: i32,

    /// Timeouts of calls to this target.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// Retries of failed calls.
    #[serde(default)]
    pub retry: RetryPolicy,

    /// When to stop calling a failing target for a while.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,

    /// A request that tells whether the target is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Longest answer body read from this target, in bytes; a longer one
    /// fails the call with reason `ResponseTooLarge`.
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_response_bytes: i64,

    /// Follow HTTP redirects, only to the same origin (scheme, host, port)
    /// and below the baseUrl. Off: a 3xx answer fails the call with reason
    /// `RedirectNotFollowed`.
    #[serde(default)]
    pub follow_redirects: bool,
}

fn default_max_concurrency() -> i32 {
    10
}

/// Default of `maxResponseBytes`: 4 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest `maxResponseBytes` the CRD accepts: 64 MiB.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest `timeouts.request` the CRD accepts.
pub const MAX_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Longest `timeouts.connect` the CRD accepts.
pub const MAX_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn default_max_response_bytes() -> i64 {
    DEFAULT_MAX_RESPONSE_BYTES as i64
}

/// Credentials, all read from Secrets in the TargetSystem's namespace. At
/// most one scheme is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.bearer) ? 1 : 0) + (has(self.basic) ? 1 : 0) + (has(self.apiKey) ? 1 : 0) + (has(self.oauth2ClientCredentials) ? 1 : 0) == 1").message("set exactly one of bearer, basic, apiKey or oauth2ClientCredentials"))]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// `Authorization: Basic ...` from the Secret's `username` and `password` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// A key sent in a header of your choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// OAuth2 client credentials grant; the token is cached and refreshed
    /// before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<OAuth2ClientCredentials>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// The Secret key that holds the token.
    pub token_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret with `username` and `password` keys.
    pub secret_ref: SecretRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Header that carries the key.
    #[serde(default = "default_api_key_header")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub header: String,
    /// The Secret key that holds the API key.
    pub key_secret_ref: SecretKeyRef,
}

fn default_api_key_header() -> String {
    "X-API-Key".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientCredentials {
    /// The token endpoint.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))").message("tokenUrl must be an absolute http:// or https:// URL"))]
    pub token_url: String,
    /// Scopes to request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// A Secret with `clientId` and `clientSecret` keys.
    pub secret_ref: SecretRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// A Secret key holding PEM CA certificates to trust instead of the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Skip certificate verification. For test systems only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A token bucket shared by every caller of the target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 0.001, max = 100000.0))]
    pub requests_per_second: f64,
    /// Requests allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: i32,
}

fn default_burst() -> i32 {
    1
}

/// Both have a maximum, so that no target can hold a call (and the
/// memory of its answer) open without end.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.request) || duration(self.request) <= duration('5m')").message("timeouts.request may be at most 5m"))]
#[x_kube(validation = Rule::new("!has(self.connect) || duration(self.connect) <= duration('1m')").message("timeouts.connect may be at most 1m"))]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time to open a connection (at most 1m).
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// Time for a whole request and its response, body included (at most 5m).
    #[serde(default = "default_request_timeout")]
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    "5s".into()
}
fn default_request_timeout() -> Duration {
    "30s".into()
}

/// Exponential backoff with full jitter between retries of a failed call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delay before the first retry.
    #[serde(default = "default_retry_base")]
    pub base_delay: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_retry_max")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: default_retry_base(),
            max_delay: default_retry_max(),
        }
    }
}

fn default_retry_base() -> Duration {
    "1s".into()
}
fn default_retry_max() -> Duration {
    "5m".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failed calls (5xx, timeouts, refused connections) that
    /// open the circuit.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 10000))]
    pub failure_threshold: i32,
    /// How long the circuit stays open before one trial call is let through.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            open_for: default_open_for(),
        }
    }
}

fn default_failure_threshold() -> i32 {
    5
}
fn default_open_for() -> Duration {
    "30s".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// A GET path below the base URL; any 2xx answer means healthy.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.startsWith('//') && !self.contains('://')").message("path must start with '/' and stay below the baseUrl"))]
    pub path: String,
    /// Time between probes.
    #[serde(default = "default_probe_interval")]
    pub interval: Duration,
}

fn default_probe_interval() -> Duration {
    "30s".into()
}

/// States of a target's circuit breaker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CircuitState {
    /// Calls flow.
    #[default]
    Closed,
    /// Calls are refused without reaching the target.
    Open,
    /// One trial call is allowed through.
    HalfOpen,
}

/// What Tether last saw of the target: its health probe, its circuit
/// breaker and whether its credentials work (Ready, Degraded).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSystemStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// State of the circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<CircuitState>,
    /// When a health probe last changed this status (health or circuit
    /// state). A probe that finds nothing new writes nothing, so it does
    /// not move this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<DateTime<Utc>>,
    /// `Ready`: the credentials are loaded, the health check (if any)
    /// answers and the circuit is closed; `False` with the reason that
    /// matters (`CircuitOpen`, `CircuitHalfOpen`, `HealthCheckFailed`, a
    /// missing Secret or Adapter). `Degraded`: calls fail or the circuit is
    /// not closed. `Reconciling` (present only while `True`): Tether keeps
    /// probing and recovers by itself (an open circuit, a failing probe).
    /// `Stalled` (present only while `True`): the Adapter or Secret must be
    /// fixed. Every status write sets `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
