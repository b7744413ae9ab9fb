//! Which runs a page of the runs list holds ([`Store::runs_page`](super::Store::runs_page)).

use serde_json::Value;

use super::error::StoreError;
use super::types::{RunHead, RunStatus};
use crate::ids::{RunId, Timestamp};

/// How far a run's creation time (its head) may precede the time in its UUIDv7 id: the id is
/// made first, the head a moment later. Time bounds widen the key range by this much and then
/// check the head's own time.
const ID_SLACK_MS: u64 = 60_000;

/// The runs of one page, newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunQuery {
    /// Only runs older than this one (the last run of the previous page).
    pub before: Option<RunId>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after this time.
    pub created_after: Option<Timestamp>,
    /// Only runs created before this time.
    pub created_before: Option<Timestamp>,
    /// Only runs whose envelope `metadata` has each key with exactly this value.
    pub metadata: Vec<(String, Value)>,
    /// Most runs in the page (at least 1).
    pub limit: usize,
}

/// A page of runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunPage {
    /// Newest first.
    pub runs: Vec<(RunId, RunHead)>,
    /// Whether runs past the last one may match too.
    pub more: bool,
}

/// Builds a page from a downward scan of the runs: the stores feed it run after run.
pub(crate) struct Pager<'q> {
    query: &'q RunQuery,
    page: RunPage,
}

impl<'q> Pager<'q> {
    pub(crate) fn new(query: &'q RunQuery) -> Self {
        Self {
            query,
            page: RunPage::default(),
        }
    }

    /// Offers the scan's next run (its status is cheap; its head and envelope are read only
    /// when needed). Returns whether the scan should go on.
    pub(crate) fn offer(
        &mut self,
        run: RunId,
        status: impl FnOnce() -> Result<RunStatus, StoreError>,
        head: impl FnOnce() -> Result<RunHead, StoreError>,
        envelope: impl FnOnce() -> Result<Option<Value>, StoreError>,
    ) -> Result<bool, StoreError> {
        if self.query.past(run) {
            return Ok(false);
        }
        if let Some(wanted) = self.query.status
            && wanted != status()?
        {
            return Ok(true);
        }
        let head = head()?;
        if !self.query.keeps(&head, envelope)? {
            return Ok(true);
        }
        if self.page.runs.len() == self.query.limit.max(1) {
            self.page.more = true;
            return Ok(false);
        }
        self.page.runs.push((run, head));
        Ok(true)
    }

    pub(crate) fn finish(self) -> RunPage {
        self.page
    }
}

impl RunQuery {
    /// The exclusive upper bound of the key scan (scans go downwards from it).
    pub(crate) fn upper(&self) -> Option<RunId> {
        let by_time = self
            .created_before
            .map(|t| RunId::first_at(t.0.saturating_add(ID_SLACK_MS)));
        match (self.before, by_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a scan at `run` has passed every run the time bound keeps (before reading it).
    pub(crate) fn past(&self, run: RunId) -> bool {
        self.created_after
            .is_some_and(|t| run.created_millis().saturating_add(ID_SLACK_MS) < t.0)
    }

    /// Whether a run is kept, from its head and, only when metadata is asked for, its
    /// envelope.
    fn keeps(
        &self,
        head: &RunHead,
        envelope: impl FnOnce() -> Result<Option<Value>, StoreError>,
    ) -> Result<bool, StoreError> {
        if self.created_before.is_some_and(|t| head.created_at >= t)
            || self.created_after.is_some_and(|t| head.created_at < t)
        {
            return Ok(false);
        }
        if !self.metadata.is_empty() {
            let envelope = envelope()?.unwrap_or(Value::Null);
            let matches = self.metadata.iter().all(|(key, wanted)| {
                envelope["metadata"]
                    .get(key)
                    .is_some_and(|v| same(v, wanted))
            });
            if !matches {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// `stored` is `wanted`, or `wanted` is a string holding the JSON text of a stored number or
/// boolean (query strings carry text only).
fn same(stored: &Value, wanted: &Value) -> bool {
    stored == wanted
        || match (stored, wanted) {
            (Value::Number(n), Value::String(text)) => {
                text.parse::<serde_json::Number>().is_ok_and(|t| t == *n)
            }
            (Value::Bool(b), Value::String(text)) => text.parse::<bool>().is_ok_and(|t| t == *b),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_map_to_key_bounds_with_slack() {
        let run = RunId::new();
        let ms = run.created_millis();
        assert!(ms > 1_700_000_000_000, "a UUIDv7 carries Unix milliseconds");
        assert!(RunId::first_at(ms) <= run && run < RunId::first_at(ms + 1));
        let q = RunQuery {
            created_before: Some(Timestamp(ms)),
            ..RunQuery::default()
        };
        assert!(
            q.upper().unwrap() > run,
            "the key range is wider than the time range"
        );
        let q = RunQuery {
            created_after: Some(Timestamp(ms + 2 * ID_SLACK_MS)),
            ..RunQuery::default()
        };
        assert!(q.past(run));
        let q = RunQuery {
            created_after: Some(Timestamp(ms)),
            ..RunQuery::default()
        };
        assert!(!q.past(run));
    }
}
