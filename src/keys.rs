//! A cache of the HMAC keys that webhooks and callbacks verify against, so
//! that a request with a bad signature or token costs no API call: a key is
//! read from its Secret at most once per [`KeyCache::ttl`], and a signature
//! that does not verify under a cached key refetches it (a rotated key) at
//! most once per [`KeyCache::refresh_after`]. Every read is counted in
//! `tether_key_reads_total{purpose}`. Touches the API server (Secrets, get).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::api::common::SecretKeyRef;
use crate::metrics::{Metrics, PurposeLabels};

/// Which endpoint wants the key (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Webhook,
    Callback,
}

impl Purpose {
    pub fn label(self) -> &'static str {
        match self {
            Purpose::Webhook => "webhook",
            Purpose::Callback => "callback",
        }
    }
}

#[derive(Clone)]
struct Entry {
    key: Option<Vec<u8>>,
    fetched: Instant,
    /// A read that failed (not a missing Secret) is retried sooner.
    failed: bool,
}

/// Keys by `(namespace, secret, key)`; a missing key is cached too.
pub struct KeyCache {
    entries: Mutex<HashMap<(String, String, String), Entry>>,
    /// Serialises reads of the API, so a cold cache under a flood reads
    /// each Secret once, not once per request.
    fetching: tokio::sync::Mutex<()>,
    /// How long a key is used before it is read again.
    pub ttl: Duration,
    /// Shortest time between two reads of one key forced by a signature
    /// that did not verify.
    pub refresh_after: Duration,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            ttl: Duration::from_secs(60),
            refresh_after: Duration::from_secs(5),
        }
    }
}

/// Whether a cached entry may be used, or must be read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Younger than the TTL.
    Cached,
    /// A verification failed: read again unless read very recently.
    Refresh,
}

impl KeyCache {
    fn cached(&self, id: &(String, String, String), want: Freshness) -> Option<Option<Vec<u8>>> {
        let entries = crate::lock(&self.entries);
        let entry = entries.get(id)?;
        let age = entry.fetched.elapsed();
        let limit = match want {
            Freshness::Cached if !entry.failed => self.ttl,
            _ => self.refresh_after,
        };
        (age < limit).then(|| entry.key.clone())
    }

    /// The bytes of `secret`'s key in `namespace` (None when the Secret or
    /// the key is missing or empty), from the cache when it is fresh enough.
    pub async fn get(
        &self,
        client: &kube::Client,
        metrics: &Metrics,
        purpose: Purpose,
        namespace: &str,
        secret: &SecretKeyRef,
        want: Freshness,
    ) -> Option<Vec<u8>> {
        let id = (namespace.to_owned(), secret.name.clone(), secret.key.clone());
        if let Some(hit) = self.cached(&id, want) {
            return hit;
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Another request may have read it while this one waited.
        if let Some(hit) = self.cached(&id, Freshness::Refresh) {
            return hit;
        }
        metrics
            .key_reads
            .get_or_create(&PurposeLabels {
                purpose: purpose.label(),
            })
            .inc();
        let (key, failed) = match read(client, namespace, secret).await {
            Ok(key) => (key, false),
            Err(err) => {
                tracing::warn!(%err, secret = %secret.name, "reading a key Secret");
                (None, true)
            }
        };
        crate::lock(&self.entries).insert(
            id,
            Entry {
                key: key.clone(),
                fetched: Instant::now(),
                failed,
            },
        );
        key
    }
}

async fn read(client: &kube::Client, namespace: &str, secret: &SecretKeyRef) -> Result<Option<Vec<u8>>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(secrets.get_opt(&secret.name).await?.and_then(|found| {
        found
            .data
            .and_then(|mut d| d.remove(&secret.key))
            .map(|b| b.0)
            .filter(|k| !k.is_empty())
    }))
}
