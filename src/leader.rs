//! Leader election on a `coordination.k8s.io` Lease, the way client-go does
//! it: a process acquires the Lease when it is free or expired, renews it
//! every `renew_every`, and every write is conditional on the Lease's
//! resourceVersion, so two processes can never both believe they hold it
//! for longer than one lease duration. A leader that cannot renew stops
//! (the caller exits), and its fencing token (`identity/transitions`) is no
//! longer the current one.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing Lease {name}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the Lease {name} to {holder}")]
    Lost { name: String, holder: String },
    #[error("the API server did not answer in time about Lease {name}")]
    Timeout { name: String },
}

/// Longest one attempt to release the Lease may take.
pub const RELEASE_ATTEMPT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// A held Lease: the token that fences calls made under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub fencing_token: String,
}

#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: Config,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The holder of a Lease while it is held (renewed within its duration),
/// as this process's clock sees it.
pub fn live_holder(lease: &Lease) -> Option<&str> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    (!expired(spec)).then_some(holder)
}

fn expired(lease: &LeaseSpec) -> bool {
    let Some(renewed) = lease.renew_time.as_ref() else {
        return true;
    };
    let duration = i64::from(lease.lease_duration_seconds.unwrap_or(15));
    let age = Timestamp::now().as_second() - renewed.0.as_second();
    age > duration
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, config: Config) -> Self {
        Self { api, config }
    }

    fn kube(&self) -> impl Fn(kube::Error) -> Error + '_ {
        |source| Error::Kube {
            name: self.config.name.clone(),
            source,
        }
    }

    /// Tries once to take or keep the Lease. `Ok(None)`: someone else holds it.
    pub async fn try_acquire(&self) -> Result<Option<Leadership>, Error> {
        let Config {
            name,
            identity,
            lease_duration,
            ..
        } = &self.config;
        let duration = i32::try_from(lease_duration.as_secs()).unwrap_or(15);
        let existing = self.api.get_opt(name).await.map_err(self.kube())?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Some(Leadership {
                    fencing_token: format!("{identity}/0"),
                })),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(self.kube()(e)),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let mine = spec.holder_identity.as_deref() == Some(identity.as_str());
        if !mine && !expired(spec) && spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty()) {
            return Ok(None);
        }
        let mut transitions = spec.lease_transitions.unwrap_or(0);
        if !mine {
            transitions += 1;
            spec.acquire_time = Some(now());
        }
        spec.holder_identity = Some(identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now());
        spec.lease_transitions = Some(transitions);
        // `replace` carries the resourceVersion we read: a concurrent writer
        // makes it fail with 409 instead of both winning.
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Some(Leadership {
                fencing_token: format!("{identity}/{transitions}"),
            })),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(self.kube()(e)),
        }
    }

    /// Waits until this process holds the Lease: tries again every
    /// `renew_every` (a holder that died lets it expire) and whenever the
    /// Lease changes, so a released Lease is taken at once — by a standby
    /// that was waiting, before a replacement pod has even started.
    pub async fn acquire(&self) -> Result<Leadership, Error> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.config.name));
        let mut changes = watcher(self.api.clone(), config).default_backoff().boxed();
        loop {
            match self.bounded_try_acquire().await {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "leader election attempt failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.renew_every) => {}
                // A failing watch is retried with backoff; the timer still
                // drives the attempts meanwhile.
                _ = changes.next() => {}
            }
        }
    }

    /// Gives the Lease up, when this process still holds it under
    /// `leadership`: the holder is cleared (conditional on the Lease's
    /// resourceVersion), so a standby takes over at its next attempt instead
    /// of waiting for the Lease to expire. Call it after [`hold`] has
    /// stopped, once nothing acts under the fencing token any more.
    ///
    /// [`hold`]: LeaderElector::hold
    ///
    /// Each of up to four attempts is bounded ([`RELEASE_ATTEMPT`]): a
    /// request on a pooled connection that died can hang far past the
    /// Lease's expiry (seen here: 17 s), and a dropped attempt drops its
    /// connection, so the next one takes another or opens a new one.
    pub async fn release(&self, leadership: &Leadership) -> Result<(), Error> {
        let mut last = None;
        for _ in 0..4 {
            match tokio::time::timeout(RELEASE_ATTEMPT, self.release_once(leadership)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) => last = Some(err),
                Err(_) => {}
            }
        }
        Err(last.unwrap_or_else(|| Error::Timeout {
            name: self.config.name.clone(),
        }))
    }

    async fn release_once(&self, leadership: &Leadership) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(self.kube())? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let token = format!("{}/{transitions}", self.config.identity);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) || token != leadership.fencing_token {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it first: it is no longer ours to release.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.kube()(e)),
        }
    }

    /// [`try_acquire`](Self::try_acquire) given at most `renew_every`.
    async fn bounded_try_acquire(&self) -> Result<Option<Leadership>, Error> {
        tokio::time::timeout(self.config.renew_every, self.try_acquire())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    name: self.config.name.clone(),
                })
            })
    }

    /// Renews the Lease until it cannot; returns why leadership ended.
    pub async fn hold(&self, leadership: &Leadership) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            // Each attempt is bounded (client-go's renew deadline): a request
            // stuck on a dead connection must not outlive the Lease while
            // this process still acts as its holder.
            match self.bounded_try_acquire().await {
                Ok(Some(renewed)) if renewed == *leadership => last_renewal = tokio::time::Instant::now(),
                Ok(_) => {
                    let holder = match self.api.get_opt(&self.config.name).await {
                        Ok(Some(lease)) => lease.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
                        _ => "unknown".into(),
                    };
                    return Error::Lost {
                        name: self.config.name.clone(),
                        holder,
                    };
                }
                Err(err) if last_renewal.elapsed() >= self.config.lease_duration => return err,
                Err(err) => tracing::warn!(%err, "renewing the Lease failed; retrying"),
            }
        }
    }
}
