//! `Adapter` (cluster-scoped): how to talk to one *kind* of external API.
//!
//! Two forms with one contract: a declarative REST mapping (each operation a
//! method, a path template, a body template and extraction rules), or the URL
//! of an adapter service that speaks Tether's adapter protocol. Templates,
//! extraction and conditions are written in the expression language described
//! in `docs/expressions.md`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, conditions_schema};

/// How to talk to one kind of external API. Exactly one of `rest` and
/// `service` is set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "An Adapter (cluster-scoped) says how Tether talks to one kind of external API: a declarative REST mapping (each operation an HTTP request built from templates, each answer read with jq expressions) or an adapter service that speaks Tether's adapter protocol. TargetSystems name it in spec.adapterRef.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Adapter",
    status = "AdapterStatus",
    shortname = "tad",
    category = "tether",
    printcolumn = r#"{"name":"Form","type":"string","jsonPath":".status.form"}"#,
    printcolumn = r#"{"name":"Types","type":"string","jsonPath":".status.resourceTypes"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.rest) != has(self.service)").message("set exactly one of spec.rest (a declarative REST mapping) or spec.service (an adapter service URL)"))]
#[serde(rename_all = "camelCase")]
pub struct AdapterSpec {
    /// What this adapter talks to, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// A declarative mapping of resource types and actions onto REST calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestMapping>,

    /// An adapter service that implements Tether's adapter protocol
    /// (`docs/adapter-protocol.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<AdapterService>,
}

/// Resource types and actions mapped onto REST calls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestMapping {
    /// The kinds of object this API holds (contacts, invoices, buckets...).
    #[serde(default)]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub resource_types: Vec<RestResourceType>,

    /// Named operations that are not the lifecycle of an object (send an
    /// email, start a job, approve an invoice), used by workflow `call` steps.
    #[serde(default)]
    #[schemars(length(max = 128), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub actions: Vec<RestAction>,
}

/// How to observe, create, update, delete and find one type of object.
///
/// Expressions see `.properties` (the desired properties), `.id` (the
/// external id, once known), `.name` (the deterministic external name) and
/// `.idempotencyKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestResourceType {
    /// The type name that `ExternalResource.spec.type` refers to.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub name: String,

    /// Expression that extracts the external id from a create or read
    /// response body.
    #[serde(default = "default_id_expression")]
    #[schemars(length(min = 1, max = 1024))]
    pub id: String,

    /// Expression that extracts the observed properties from a read response
    /// body; compared with the desired properties to detect drift.
    #[serde(default = "default_observe_expression")]
    #[schemars(length(min = 1, max = 4096))]
    pub observe: String,

    /// Reads one object by its external id.
    pub read: HttpRequestTemplate,
    /// Creates one object; the response carries the new object.
    pub create: HttpRequestTemplate,
    /// Updates one object. Without it, drift can only be reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<HttpRequestTemplate>,
    /// Deletes one object. Without it, deletion orphans the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<HttpRequestTemplate>,
    /// Looks an object up by a natural key, to adopt one that already exists
    /// (or whose create answer was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<FindRequest>,

    /// Response statuses of `read` and `delete` that mean "no such object".
    #[serde(default = "default_not_found_statuses")]
    #[schemars(length(min = 1, max = 8), inner(range(min = 400, max = 599)))]
    pub not_found_statuses: Vec<i32>,

    /// Header that carries the idempotency key on create. Empty disables it.
    #[serde(default = "default_idempotency_header")]
    #[schemars(length(max = 128))]
    pub idempotency_key_header: String,

    /// Top-level fields of the answer (to a create, read or find) that are
    /// secret — a generated API key, a password. They are written to a
    /// Secret owned by the ExternalResource (`spec.writeSecretRef`) and
    /// removed from the observed state, so they never reach status, Events,
    /// logs or metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))
    )]
    pub secret_fields: Vec<String>,
}

fn default_id_expression() -> String {
    ".id".into()
}
fn default_observe_expression() -> String {
    ".".into()
}
fn default_not_found_statuses() -> Vec<i32> {
    vec![404, 410]
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}

/// HTTP methods an adapter may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    /// The method as HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// One HTTP request, relative to the TargetSystem's base URL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestTemplate {
    /// The HTTP method.
    pub method: HttpMethod,
    /// Path template below the base URL, with `\(expression)`
    /// interpolations, e.g. `/contacts/\(.id)`. Interpolated values are
    /// percent-encoded, so a value can never leave the base URL's host.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must start with '/': it is relative to the TargetSystem's baseUrl"))]
    #[x_kube(validation = Rule::new("!self.contains('://') && !self.startsWith('//')").message("path must not name a scheme or host: it is relative to the TargetSystem's baseUrl"))]
    pub path: String,
    /// Query parameters: name to value template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub query: BTreeMap<String, String>,
    /// Extra headers: name to value template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: BTreeMap<String, String>,
    /// Expression whose value is sent as the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub body: Option<String>,
}

/// A lookup by natural key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindRequest {
    /// The list or search request.
    #[serde(flatten)]
    pub request: HttpRequestTemplate,
    /// Expression over the response body that yields the matching object
    /// (or `null` when there is none), e.g.
    /// `.items[] | select(.email == $desired.properties.email)`.
    #[schemars(length(min = 1, max = 4096))]
    pub select: String,
    /// How to read the next page of a paginated list. Without it only the
    /// first page is read, so an object beyond it is not adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<FindPagination>,
}

/// Pagination of a `find`: each page is read in turn until `select` finds
/// the object, the target says there is no next page, or `maxPages` pages
/// were read (then `find` fails rather than conclude the object is absent
/// and create a duplicate).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindPagination {
    /// Expression over a page's response body that yields the next page's
    /// token — a cursor (`.nextCursor`), a page number (`if .page <
    /// .totalPages then .page + 1 else null end`) — or `null`, `""` or
    /// `false` on the last page.
    #[schemars(length(min = 1, max = 1024))]
    pub next: String,
    /// The query parameter that carries the token on the next request
    /// (`cursor`, `page`, `page_token`); the find's other query parameters
    /// are sent again with it.
    #[schemars(length(min = 1, max = 128))]
    pub query_param: String,
    /// Most pages read by one `find`.
    #[serde(default = "default_max_pages")]
    #[schemars(range(min = 1, max = 100))]
    pub max_pages: i32,
}

/// Default of `find.pagination.maxPages`.
pub const DEFAULT_FIND_MAX_PAGES: i32 = 20;

fn default_max_pages() -> i32 {
    DEFAULT_FIND_MAX_PAGES
}

/// A named operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestAction {
    /// The action name that workflow `call` steps refer to.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub name: String,
    /// The request that performs the action.
    #[serde(flatten)]
    pub request: HttpRequestTemplate,
    /// Condition over the answer `{status, body}` that means success; by
    /// default any 2xx status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub success_when: Option<String>,
    /// Outputs: name to expression over the response body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub outputs: BTreeMap<String, String>,
}

/// An adapter service reached over HTTP(S).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterService {
    /// Base URL of the service; Tether POSTs to `<url>/v1/observe`,
    /// `/v1/create`, `/v1/update`, `/v1/delete` and `/v1/action`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))").message("url must be an absolute http:// or https:// URL"))]
    pub url: String,
    /// Protocol version the service speaks.
    #[serde(default)]
    pub protocol_version: ProtocolVersion,
    /// Timeout of one call to the service (at most 5m), instead of the
    /// TargetSystem's `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('5m')").message("service.timeout must be longer than 0s and at most 5m"))]
    pub timeout: Option<Duration>,
}

/// Versions of the adapter protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProtocolVersion {
    #[default]
    #[serde(rename = "v1")]
    V1,
}

/// What the controller found when it checked the adapter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Rest` or `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// Names of the resource types the adapter offers, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_types: Option<String>,
    /// `Ready`: every expression compiles and the mapping is usable (or the
    /// service URL is valid). `Stalled` (present only while `True`): the spec
    /// must be fixed; the reason and message say where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
