//! Helpers shared by the benchmarks: the raw write ceiling, API-server
//! write counts, process figures, the machine line; the simulator comes
//! from the integration tests' fixtures.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tether::api::ExternalResource;
use tether_harness::ControlPlane;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The integration tests' helpers: the simulator fixture and the egress
/// list that lets a controller reach it on loopback.
#[path = "../../tests/support/mod.rs"]
pub mod support;

/// The raw write ceiling: a plain client patching /status of small custom
/// resources, as the controller's identity (same API Priority and Fairness
/// treatment as the controller), at concurrency 1, 8 and 32.
pub async fn write_ceilings(
    controller: &kube::Client,
    admin: &kube::Client,
    namespace: &str,
) -> Result<std::collections::BTreeMap<usize, f64>> {
    let api: Api<ExternalResource> = Api::namespaced(controller.clone(), namespace);
    let admin_api: Api<ExternalResource> = Api::namespaced(admin.clone(), namespace);
    for i in 0..32 {
        let object: ExternalResource = serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
            "metadata": {"name": format!("ceiling-{i}")},
            "spec": {"targetRef": {"name": "none"}, "type": "contact", "properties": {}}}))?;
        admin_api.create(&PostParams::default(), &object).await?;
    }
    let mut ceiling = std::collections::BTreeMap::new();
    for concurrency in [1usize, 8, 32] {
        let rate = write_ceiling(&api, concurrency, Duration::from_secs(5)).await;
        println!("ceiling: {rate:.0} status writes/s at concurrency {concurrency}");
        ceiling.insert(concurrency, rate);
    }
    for i in 0..32 {
        admin_api.delete(&format!("ceiling-{i}"), &Default::default()).await?;
    }
    Ok(ceiling)
}

pub async fn write_ceiling(api: &Api<ExternalResource>, concurrency: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + window;
    let workers = (0..concurrency).map(|i| {
        let (api, done) = (api.clone(), done.clone());
        async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let patch = json!({"status": {"observedGeneration": n}});
                if api
                    .patch_status(&format!("ceiling-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    done.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
}

#[derive(Default, Clone, Copy)]
pub struct Writes {
    /// Successful PATCH/PUT/APPLY of externalresources (object and status).
    pub status_and_object: u64,
    /// Those refused with 409 Conflict (stale reads, retried).
    pub conflicts: u64,
    /// Event writes.
    pub events: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.status_and_object + self.events
    }
}

impl std::ops::Sub for Writes {
    type Output = Writes;
    fn sub(self, o: Writes) -> Writes {
        Writes {
            status_and_object: self.status_and_object - o.status_and_object,
            conflicts: self.conflicts - o.conflicts,
            events: self.events - o.events,
        }
    }
}

/// Write requests (PATCH, PUT) the API server has served for
/// externalresources (object and status), and Event writes (POST, PATCH).
pub fn apiserver_writes(cp: &ControlPlane, resource: &str) -> Result<Writes> {
    let out = cp.kubectl(&["get", "--raw", "/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut writes = Writes::default();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        let write_verb =
            line.contains("verb=\"PATCH\"") || line.contains("verb=\"PUT\"") || line.contains("verb=\"APPLY\"");
        if line.contains(&format!("resource=\"{resource}\"")) && write_verb && line.contains("code=\"409\"") {
            writes.conflicts += value;
        } else if line.contains(&format!("resource=\"{resource}\"")) && write_verb && line.contains("code=\"20") {
            writes.status_and_object += value;
        } else if line.contains("resource=\"events\"") && (write_verb || line.contains("verb=\"POST\"")) {
            writes.events += value;
        }
    }
    Ok(writes)
}

pub async fn http_text(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub async fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(url).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is
    // the 14th field, stime the 15th; clock ticks are 100 per second.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu}), Kubernetes v1.36.3, etcd v3.6.16 (--unsafe-no-fsync)")
}

pub fn ok(out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned().into())
    }
}

/// Creates `objects` (32 at a time), then waits until `count` objects whose
/// name starts with `prefix` satisfy `done`; returns the time from the
/// first create.
pub async fn create_and_wait<K>(
    api: &Api<K>,
    objects: Vec<K>,
    prefix: &str,
    count: usize,
    done: impl Fn(&K) -> bool,
) -> Result<Duration>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use futures::StreamExt;
    let started = Instant::now();
    futures::stream::iter(objects)
        .map(|object| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &object).await }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
        })
        .await;
    loop {
        let list = api.list(&kube::api::ListParams::default()).await?;
        let finished = list
            .items
            .iter()
            .filter(|o| o.meta().name.as_deref().is_some_and(|n| n.starts_with(prefix)))
            .filter(|o| done(o))
            .count();
        if finished >= count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("only {finished} of {count} done after 30 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
