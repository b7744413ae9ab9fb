//! Fault injection for the crash tests of the commit path: a store built by a test can be told
//! to stop at a named point of a commit, either by failing there or by aborting the process
//! (a crash: no destructor, no checkpoint, nothing flushed). Outside `cfg(test)` the hooks are
//! empty inline functions.

#[cfg(test)]
use std::sync::Mutex;

/// A named point of the commit path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultPoint {
    /// A logged commit's entry is appended (and synced at D2); redb has not committed.
    LogAppended,
    /// redb committed a logged commit (non-durably); the caller has not been answered.
    RedbCommitted,
    /// A checkpoint's durable redb commit is done; the log is not truncated yet.
    CheckpointCommitted,
    /// Recovery applied the log's entries in its transaction; it has not committed.
    Replayed,
    /// Half of a log entry is written (then the rest would follow).
    TornAppend,
}

/// What happens at an armed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum FaultAction {
    /// The operation fails there with an I/O error.
    Fail,
    /// The process aborts there.
    Abort,
}

impl FaultAction {
    pub(crate) fn run(self, point: FaultPoint) -> std::io::Result<()> {
        match self {
            Self::Fail => Err(std::io::Error::other(format!(
                "injected fault at {point:?}"
            ))),
            Self::Abort => std::process::abort(),
        }
    }
}

/// The armed fault of a store, if any.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    #[cfg(test)]
    armed: Mutex<Option<(FaultPoint, FaultAction, u64)>>,
}

impl Faults {
    /// Arms `point`: the `skip + 1`-th time it is reached, `action` happens (once).
    #[cfg(test)]
    pub(crate) fn arm(&self, point: FaultPoint, action: FaultAction, skip: u64) {
        *self.armed.lock().unwrap() = Some((point, action, skip));
    }

    /// The action due at `point` now, disarming it.
    #[cfg(test)]
    pub(crate) fn fire(&self, point: FaultPoint) -> Option<FaultAction> {
        let mut armed = self.armed.lock().unwrap();
        match armed.as_mut() {
            Some((at, action, skip)) if *at == point => {
                if *skip == 0 {
                    let action = *action;
                    *armed = None;
                    Some(action)
                } else {
                    *skip -= 1;
                    None
                }
            }
            _ => None,
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn fire(&self, _point: FaultPoint) -> Option<FaultAction> {
        None
    }

    /// Fails or aborts when `point` is armed and due.
    #[inline]
    pub(crate) fn hit(&self, point: FaultPoint) -> std::io::Result<()> {
        match self.fire(point) {
            Some(action) => action.run(point),
            None => Ok(()),
        }
    }
}
