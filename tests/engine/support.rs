//! `TestEnv`: a real engine over a real redb file in a temp dir, with an event recorder.

use std::path::PathBuf;
use std::sync::Arc;

use flexrun::fsm::{EventBody, EventKind, RunEvent};
use flexrun::planner::Planner;
use flexrun::{Durability, Engine, EngineConfig, RedbStore, RunEnvelope, RunId, Store};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A guard against hangs (not a synchronisation sleep): a test waiting this long has failed.
pub const GUARD: std::time::Duration = std::time::Duration::from_secs(60);

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub rx: broadcast::Receiver<Arc<RunEvent>>,
}

impl TestEnv {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("flexrun.redb")
    }

    pub async fn start(planner: Option<Arc<dyn Planner>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path().join("flexrun.redb"), planner, |c| c).await;
        let rx = engine.subscribe();
        Self { dir, engine, rx }
    }

    /// Collects this run's published events up to and including `complete`; a run followed
    /// from its first event is held to the event contract (`flexrun::conformance`).
    pub async fn until_complete(&mut self, run: RunId) -> Vec<RunEvent> {
        let events = self.until(run, |e| e.kind() == EventKind::Complete).await;
        if events.first().is_some_and(|e| e.seq == 1) {
            let report = flexrun::conformance::check(&events);
            assert!(
                report.is_ok(),
                "the run breaks the event contract:\n{report}"
            );
        }
        events
    }

    /// Collects this run's published events up to and including the first matching one.
    pub async fn until(&mut self, run: RunId, stop: impl Fn(&RunEvent) -> bool) -> Vec<RunEvent> {
        let mut out = Vec::new();
        loop {
            let ev = tokio::time::timeout(GUARD, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no event within {GUARD:?}; got so far: {:?}", labels(&out))
                })
                .expect("event stream");
            if ev.run_id != run {
                continue;
            }
            let done = stop(&ev);
            out.push((*ev).clone());
            if done {
                return out;
            }
        }
    }

    pub fn stored_events(&self, run: RunId) -> Vec<RunEvent> {
        self.engine
            .store()
            .events_after(run, 0, usize::MAX)
            .unwrap()
    }
}

pub async fn open(
    path: PathBuf,
    planner: Option<Arc<dyn Planner>>,
    tweak: impl FnOnce(EngineConfig) -> EngineConfig,
) -> Engine {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(path, Durability::Fsync).unwrap());
    let mut config = flexrun::demo::config(store);
    if let Some(p) = planner {
        config.planner = p;
    }
    Engine::open(tweak(config)).await.unwrap()
}

pub fn kinds(events: &[RunEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind().as_str()).collect()
}

/// `kind` or `kind:node` labels, for asserting exact sequences.
pub fn labels(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.node_id {
            Some(n) => format!("{}:{n}", e.kind()),
            None => e.kind().as_str().to_owned(),
        })
        .collect()
}

pub fn assert_gap_free(events: &[RunEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "seq gap at index {i}: {:?}",
            labels(events)
        );
    }
}

pub fn envelope(value: Value) -> RunEnvelope {
    serde_json::from_value(value).unwrap()
}

pub fn copy_envelope(outputs: &[&str], policies: Value) -> RunEnvelope {
    envelope(json!({
        "objective": "tagline for a bakery",
        "inputs": {"objectiveBrief": "Fresh sourdough baked daily, for busy parents. Playful tone"},
        "outputContract": {"mode": "facets", "facets": outputs},
        "policies": policies,
    }))
}

pub fn complete_status(events: &[RunEvent]) -> Option<String> {
    events.iter().rev().find_map(|e| match &e.body {
        EventBody::Complete { status, .. } => Some(format!("{status:?}").to_lowercase()),
        _ => None,
    })
}

/// A file of the repository, by its path from the crate root.
pub fn repo_file(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced ```json block of a Markdown file.
pub struct JsonBlock {
    /// The last `#` heading above it.
    pub heading: String,
    /// The name of an `<!-- example: name -->` marker on the line above it.
    pub marker: Option<String>,
    pub value: Value,
}

/// Every ```json block of a Markdown text, parsed.
pub fn json_blocks(markdown: &str) -> Vec<JsonBlock> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut marker = None;
    let mut body: Option<(Option<String>, String)> = None;
    for line in markdown.lines() {
        match (&mut body, line.trim_end()) {
            (None, "```json") => body = Some((marker.take(), String::new())),
            (Some((name, text)), "```") => {
                let value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("a json block under `{heading}`: {e}\n{text}"));
                out.push(JsonBlock {
                    heading: heading.clone(),
                    marker: name.take(),
                    value,
                });
                body = None;
            }
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, l) => {
                if l.starts_with('#') {
                    heading = l.trim_start_matches('#').trim().to_owned();
                }
                marker = l
                    .strip_prefix("<!-- example: ")
                    .and_then(|m| m.strip_suffix(" -->"))
                    .map(str::to_owned);
            }
        }
    }
    out
}

/// The envelope of `examples/<name>.json`.
pub fn example(name: &str) -> Value {
    serde_json::from_str(&repo_file(&format!("examples/{name}.json"))).unwrap()
}
