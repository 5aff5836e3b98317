//! The Leases of sharding, in the Lease namespace: one per live replica
//! (`<name>-member-<identity>`, renewed while it runs: who shares the
//! shards) and one per shard (`<name>-shard-<i>`: who reconciles it; its
//! fencing token is what calls for that shard's objects carry). Both are
//! [`LeaderElector`] Leases: conditional writes, renewal every third of the
//! duration, expiry after it.
//!
//! Touches: the API server (Leases only).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};

use crate::leader::{self, LeaderElector};

/// A member Lease this much older than its duration belongs to a replica
/// that died without releasing it: it is deleted.
const STALE_MEMBER: u32 = 10;

/// The Leases of one sharded deployment (one `--lease-name`).
#[derive(Clone)]
pub struct Leases {
    api: Api<Lease>,
    /// `--lease-name`: the prefix of every Lease of the deployment.
    prefix: String,
    identity: String,
    count: u32,
    duration: Duration,
}

/// Who is alive and who holds what, as the Lease watch last saw it.
#[derive(Debug, Default)]
pub struct Survey {
    /// Identities of the replicas whose member Lease is live.
    pub members: BTreeSet<String>,
    /// The live holder of each held shard.
    pub holders: BTreeMap<u32, String>,
    /// Member Leases long expired (replicas that died).
    pub stale_members: Vec<String>,
}

impl Leases {
    pub fn new(api: Api<Lease>, prefix: &str, identity: &str, count: u32, duration: Duration) -> Self {
        Self {
            api,
            prefix: prefix.to_owned(),
            identity: identity.to_owned(),
            count,
            duration,
        }
    }

    fn member_prefix(&self) -> String {
        format!("{}-member-", self.prefix)
    }

    fn shard_prefix(&self) -> String {
        format!("{}-shard-", self.prefix)
    }

    fn elector(&self, name: String) -> LeaderElector {
        LeaderElector::new(
            self.api.clone(),
            leader::Config {
                name,
                identity: self.identity.clone(),
                lease_duration: self.duration,
                renew_every: self.duration / 3,
            },
        )
    }

    /// This replica's member Lease.
    pub fn member(&self) -> LeaderElector {
        self.elector(format!("{}{}", self.member_prefix(), self.identity))
    }

    /// The Lease of shard `i`.
    pub fn shard(&self, i: u32) -> LeaderElector {
        self.elector(format!("{}{i}", self.shard_prefix()))
    }

    /// A store of the Leases of the namespace and the stream that fills it
    /// (one item per change: poll it, and survey again).
    pub fn watch(&self) -> (Store<Lease>, BoxStream<'static, ()>) {
        let writer: Writer<Lease> = Writer::default();
        let store = writer.as_reader();
        let changes = reflector::reflector(writer, watcher(self.api.clone(), watcher::Config::default()))
            .default_backoff()
            .filter_map(|event| async move { event.ok().map(|_| ()) })
            .boxed();
        (store, changes)
    }

    /// Members and holders as `store` holds them.
    pub fn survey(&self, store: &Store<Lease>) -> Survey {
        let (members, shards) = (self.member_prefix(), self.shard_prefix());
        let mut survey = Survey::default();
        for lease in store.state() {
            let name = lease.name_any();
            if let Some(identity) = name.strip_prefix(&members) {
                match leader::live_holder(&lease) {
                    Some(_) => {
                        survey.members.insert(identity.to_owned());
                    }
                    None if stale(&lease, self.duration * STALE_MEMBER) => survey.stale_members.push(name),
                    None => {}
                }
            } else if let Some(i) = name.strip_prefix(&shards).and_then(|i| i.parse::<u32>().ok())
                && i < self.count
                && let Some(holder) = leader::live_holder(&lease)
            {
                survey.holders.insert(i, holder.to_owned());
            }
        }
        survey
    }

    /// Deletes a member Lease (this replica's on a graceful stop, or a dead
    /// one's); a Lease already gone is fine.
    pub async fn delete(&self, name: &str) {
        if let Err(err) = self.api.delete(name, &DeleteParams::default()).await {
            tracing::debug!(%err, lease = name, "deleting a member Lease");
        }
    }

    /// The name of this replica's member Lease.
    pub fn member_name(&self) -> String {
        format!("{}{}", self.member_prefix(), self.identity)
    }
}

/// Not renewed for `age` (or never).
fn stale(lease: &Lease, age: Duration) -> bool {
    let renewed = lease
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0.as_second());
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    renewed.is_none_or(|at| now - at > i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
}
