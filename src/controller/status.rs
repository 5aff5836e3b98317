//! The one way Tether writes a status: server-side apply on `/status` with
//! Tether's field manager, skipped when nothing changed, counted, and —
//! for the kinds whose progress must never go back (ExternalResources,
//! runs) — conditional on the resourceVersion last read or written, so a
//! stale cache or a deposed leader gets 409 Conflict instead of
//! overwriting newer progress.

use kube::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error};

/// Writes the status of one object, remembering what it last wrote.
pub struct StatusWriter<'a, K, S> {
    api: Api<K>,
    name: String,
    kind: &'static str,
    /// `Some`: writes are conditional on it (and it follows each write).
    resource_version: Option<String>,
    conditional: bool,
    /// The status as last read or written.
    pub current: Option<S>,
    ctx: &'a Context,
}

impl<'a, K, S> StatusWriter<'a, K, S>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    /// A writer for `object` (reached through `api`) whose status is
    /// `current`; its writes are conditional on the object's
    /// resourceVersion.
    pub fn new(ctx: &'a Context, api: Api<K>, object: &K, kind: &'static str, current: Option<S>) -> Self {
        Self {
            api,
            name: object.meta().name.clone().unwrap_or_default(),
            kind,
            resource_version: object.meta().resource_version.clone(),
            conditional: true,
            current,
            ctx,
        }
    }

    /// Writes that need no fence: a status that only reflects the spec and
    /// the last probe, which a later write replaces whole.
    pub fn unconditional(mut self) -> Self {
        self.conditional = false;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// After another write of this process (a finalizer patch) moved it.
    pub fn set_resource_version(&mut self, resource_version: Option<String>) {
        self.resource_version = resource_version;
    }

    /// Writes `next` unless it equals the current status; true when written.
    pub async fn write(&mut self, next: S) -> Result<bool, Error> {
        if self.current.as_ref() == Some(&next) {
            return Ok(false);
        }
        let fence = if self.conditional {
            self.resource_version.as_deref()
        } else {
            None
        };
        let written = self
            .ctx
            .apply_status_at(&self.api, &self.name, self.kind, fence, &next)
            .await
            .map_err(|source| Error::WriteStatus {
                kind: self.kind,
                name: self.name.clone(),
                source,
            })?;
        self.resource_version = written;
        self.current = Some(next);
        Ok(true)
    }
}
