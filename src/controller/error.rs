//! The one error type of every controller: what a reconcile could not turn
//! into a condition. Each variant has a stable [`Error::label`] (metrics,
//! logs, Events), and says whether it is a stale read (retry at once with
//! fresh data) rather than a failure.

use kube::runtime::finalizer;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of {kind} {name}: {source}")]
    WriteStatus {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A status that the API server would refuse for its size.
    #[error("the status of {name} would be {bytes} bytes, more than the {limit} bytes Tether writes")]
    StatusTooLarge { name: String, bytes: usize, limit: usize },
    #[error("reading {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing a finalizer, or the apply/cleanup behind it
    /// (kube-runtime's `finalizer()` helper).
    #[error(transparent)]
    Finalizer(#[from] Box<finalizer::Error<Error>>),
    /// A deleted run still undoes its steps: it lets go when it has ended.
    #[error("{name} is deleted once its compensation ends")]
    StillUndoing { name: String, wait: std::time::Duration },
    #[error("cannot delete the external object yet: {0}")]
    DeletionBlocked(String),
    /// Other ExternalResources still reference this one: it is deleted at
    /// its target after them.
    #[error("still referenced by {0}")]
    InUse(String),
    #[error("deleting the owned Secret: {0}")]
    SecretCleanup(String),
    #[error("starting a run of {name}: {source}")]
    CreateRun {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Stable label for metrics, logs and Events.
    pub fn label(&self) -> &'static str {
        match self {
            Error::WriteStatus { .. } => "WriteStatusFailed",
            Error::StatusTooLarge { .. } => "StatusTooLarge",
            Error::Read { .. } => "ReadFailed",
            Error::Finalizer(_) => "FinalizerFailed",
            Error::StillUndoing { .. } => "StillUndoing",
            Error::DeletionBlocked(_) => "DeletionBlocked",
            Error::InUse(_) => "InUse",
            Error::SecretCleanup(_) => "SecretCleanupFailed",
            Error::CreateRun { .. } => "CreateRunFailed",
        }
    }

    /// The write lost a race with a newer version of the object (409 on a
    /// conditional write, 422 on the finalizer's test-and-add patch): the
    /// cache was behind. Not a failure: retry soon with fresh data.
    pub fn is_stale_read(&self) -> bool {
        let code = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self {
            Error::WriteStatus { source, .. } => code(source),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => code(e),
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.is_stale_read(),
                _ => false,
            },
            Error::StatusTooLarge { .. }
            | Error::Read { .. }
            | Error::DeletionBlocked(_)
            | Error::InUse(_)
            | Error::SecretCleanup(_)
            | Error::CreateRun { .. }
            | Error::StillUndoing { .. } => false,
        }
    }

    /// A write that no retry can make succeed: the status is too large.
    pub fn is_too_large(&self) -> bool {
        match self {
            Error::StatusTooLarge { .. } => true,
            Error::WriteStatus {
                source: kube::Error::Api(s),
                ..
            } => s.code == 413 || s.message.contains("too large"),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.is_too_large(),
                _ => false,
            },
            _ => false,
        }
    }

    /// A deleted run that still compensates, and when to look again.
    pub fn still_undoing(&self) -> Option<std::time::Duration> {
        match self {
            Error::StillUndoing { wait, .. } => Some(*wait),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                finalizer::Error::CleanupFailed(inner) => inner.still_undoing(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Deletion waits for the resources that reference this one: the
    /// expected order, not a failure.
    pub fn waits_for_dependents(&self) -> bool {
        match self {
            Error::InUse(_) => true,
            Error::Finalizer(boxed) => matches!(boxed.as_ref(), finalizer::Error::CleanupFailed(Error::InUse(_))),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("conflict", "Conflict")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_lost_race_is_a_stale_read_wherever_it_surfaces_and_labels_are_stable() {
        let write = |code| Error::WriteStatus {
            kind: "ExternalResource",
            name: "a".into(),
            source: api(code),
        };
        assert!(write(409).is_stale_read());
        assert!(!write(500).is_stale_read());
        let nested = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(write(409))));
        assert!(nested.is_stale_read());
        assert!(Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(422)))).is_stale_read());
        assert_eq!(write(500).label(), "WriteStatusFailed");
        assert_eq!(nested.label(), "FinalizerFailed");
        let in_use = Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(Error::InUse("b".into()))));
        assert!(in_use.waits_for_dependents());
        assert!(write(413).is_too_large());
    }
}
