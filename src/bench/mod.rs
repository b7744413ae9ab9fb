//! The benchmark workload of `WORKLOAD.md`: linear, replan and fanout scenarios over
//! no-op steps, printing one JSON object of figures.
//!
//! A step is a plan node whose capability is the builtin `noop` handler; the plan is a chain.
//! Every node completion is its own round of its run: one commit, then its events. Fan-out
//! runs share one engine and one store; their commits are grouped across runs by the
//! committer (group commit), which the output reports as `groupCommit: true`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::catalog::{
    AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec, Facet, FacetDirection,
};
use crate::engine::{Engine, EngineConfig, HitlAnswer};
use crate::envelope::RunEnvelope;
use crate::fsm::{EventBody, HitlDecision, PlannerOutput};
use crate::graph::{DeltaOp, PlanDelta, PlanDraft, PlanEdge, PlanNode};
use crate::planner::{PlanRequest, PlanResponse, Planner, PlannerError, Purpose};
use crate::store::{Durability, MemoryStore, RedbStore, Store};

#[cfg(feature = "postgres")]
mod cluster;
pub mod guard;
pub mod sweep;

/// Allocations and allocated bytes counted so far by the process's allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocTotals {
    /// Allocation calls (reallocations included).
    pub allocs: u64,
    /// Bytes those calls asked for.
    pub bytes: u64,
}

/// Reads the allocator's running totals; the benchmark takes the difference over its timed
/// region. The binary supplies it from its counting allocator.
pub type AllocCounter = fn() -> AllocTotals;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Plan, then N steps.
    Linear,
    /// Like linear, with one replan at the middle step.
    Replan,
    /// R linear runs at once on one engine.
    Fanout,
}

/// How the replan's hold is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// A HITL hold answered by the client, then the delta.
    Interrupt,
    /// The engine asks the planner itself.
    Route,
}

/// Store durability level of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// D0: the in-memory store (`MemoryStore`).
    Memory,
    /// D1: written to the OS on every commit, no fsync.
    D1,
    /// D2: fsync per commit.
    D2,
    /// The PostgreSQL store ([`BenchOptions::postgres`]), with the server's own durability
    /// (synchronous commit unless the server is configured otherwise).
    Postgres,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenario.
    pub scenario: Scenario,
    /// Plan size N.
    pub nodes: usize,
    /// Runs R.
    pub runs: usize,
    /// Durability.
    pub level: Level,
    /// Replan variant.
    pub variant: Variant,
    /// Run a warm-up (N=8, R=1) on a separate store first.
    pub warmup: bool,
    /// Directory for store files (a temp dir when absent).
    pub dir: Option<PathBuf>,
    /// How the client waits for events.
    pub consumer: Consumer,
    /// Counts allocations over the timed region when given (`allocs_per_step`).
    pub alloc_counter: Option<AllocCounter>,
    /// Runs the workload on the PostgreSQL store at this URL instead, with this many engines
    /// (instances) sharing it in this process; `level` is then [`Level::Postgres`].
    pub postgres: Option<PostgresBench>,
}

/// The PostgreSQL variant of the workload: several engines on one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresBench {
    /// `postgres://…` of a database the benchmark may fill (runs are left in it).
    pub url: String,
    /// Engines sharing the database, each with its own connections and instance id; runs
    /// are created round-robin on them.
    pub instances: usize,
    /// Their lease, which bounds the takeover time measured after the workload.
    pub lease: Duration,
}

/// How the benchmark's client waits for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consumer {
    /// Awaits the next event: its worker parks when idle, so each step pays a cross-core
    /// wake-up (the usual subscriber).
    Park,
    /// Polls the channel and yields to the runtime when it is empty, keeping its worker
    /// awake: measures the engine without the wake-up.
    Poll,
}

/// The facet every step outputs.
pub const STEP_FACET: &str = "stepResult";
const STEP_CAP: &str = "bench.noop";

/// The workload's fake planner: N chained steps for a plan, D = max(1, N/4) for a replan,
/// inserted at the cursor.
#[derive(Debug, Clone, Copy)]
pub struct BenchPlanner {
    nodes: usize,
}

fn step(id: String) -> PlanNode {
    PlanNode {
        id,
        stage: "step".to_owned(),
        capability_id: STEP_CAP.to_owned(),
        kind: CapabilityKind::Execution,
        input_facets: Vec::new(),
        output_facets: vec![STEP_FACET.to_owned()],
        instructions: Vec::new(),
        rationale: String::new(),
    }
}

#[async_trait]
impl Planner for BenchPlanner {
    fn name(&self) -> &str {
        "bench"
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let n = self.nodes;
        match request.purpose {
            Purpose::Initial => {
                let nodes: Vec<PlanNode> = (0..n).map(|i| step(format!("s{i:05}"))).collect();
                let edges = (1..n)
                    .map(|i| PlanEdge::new(format!("s{:05}", i - 1), format!("s{i:05}")))
                    .collect();
                Ok(PlanResponse::new(PlannerOutput::Draft(PlanDraft {
                    nodes,
                    edges,
                    system_instructions: String::new(),
                    rationale: "chain".to_owned(),
                })))
            }
            Purpose::Replan => {
                let plan = request
                    .current_plan
                    .ok_or_else(|| PlannerError::Fatal("no current plan".to_owned()))?;
                let cursor = request.completed.len();
                let d = (n / 4).max(1);
                let before = format!("s{:05}", cursor - 1);
                let after = format!("s{cursor:05}");
                let mut operations: Vec<DeltaOp> = (0..d)
                    .map(|i| DeltaOp::AddNode {
                        node: step(format!("r{i:05}")),
                    })
                    .collect();
                operations.push(DeltaOp::AddEdge {
                    from: before.clone(),
                    to: "r00000".to_owned(),
                });
                for i in 1..d {
                    operations.push(DeltaOp::AddEdge {
                        from: format!("r{:05}", i - 1),
                        to: format!("r{i:05}"),
                    });
                }
                if cursor < n {
                    operations.push(DeltaOp::RemoveEdge {
                        from: before,
                        to: after.clone(),
                    });
                    operations.push(DeltaOp::AddEdge {
                        from: format!("r{:05}", d - 1),
                        to: after,
                    });
                }
                Ok(PlanResponse::new(PlannerOutput::Delta(PlanDelta {
                    base_version: plan.version,
                    rationale: "insert the delta at the cursor".to_owned(),
                    operations,
                })))
            }
        }
    }
}

/// The engine configuration of the workload: the [`BenchPlanner`] for `nodes` steps, the
/// no-op step capability and its facet, over `store`.
pub fn bench_config(store: Arc<dyn Store>, nodes: usize) -> EngineConfig {
    let mut config = EngineConfig::new(store, Arc::new(BenchPlanner { nodes }));
    config.executors = crate::demo::executors();
    config.event_buffer = 1 << 18;
    config.facets = vec![Facet {
        name: STEP_FACET.to_owned(),
        title: "Step result".to_owned(),
        description: String::new(),
        direction: FacetDirection::Output,
        schema: json!({"type": "object", "properties": {"step": {"type": "string"}, "ok": {"type": "boolean"}}, "required": ["step", "ok"]}),
        instructions: String::new(),
        required_by_default: true,
    }];
    config.capabilities = vec![Capability {
        capability_id: STEP_CAP.to_owned(),
        version: "1.0.0".to_owned(),
        display_name: "no-op step".to_owned(),
        summary: "returns {step, ok}".to_owned(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: Vec::new(),
        output_facets: vec![STEP_FACET.to_owned()],
        cost: 0.0,
        timeout_ms: 60_000,
        max_attempts: 1,
        fallback: None,
        executor: ExecutorSpec::Builtin {
            handler: "noop".to_owned(),
        },
        status: CapabilityStatus::Active,
    }];
    config
}

fn envelope(scenario: Scenario, variant: Variant, n: usize) -> RunEnvelope {
    let mut env = RunEnvelope::new("benchmark", Map::new(), &[STEP_FACET]);
    let d = (n / 4).max(1);
    let mut runtime = Vec::new();
    if scenario == Scenario::Replan && n >= 2 {
        let hold = format!("s{:05}", n / 2 - 1);
        let action = match variant {
            Variant::Route => {
                json!({"type": "replan", "rationale": "policy check at the middle step"})
            }
            Variant::Interrupt => {
                json!({"type": "hitl", "question": "continue with a replan?", "onApprove": "replan", "onReject": "fail"})
            }
        };
        runtime.push(json!({"id": "mid-check", "trigger": {"kind": "onNodeComplete", "selector": {"nodeId": hold}}, "action": action}));
    }
    env.policies = json!({
        "planner": {"maxNodes": n + d + 8, "maxConcurrency": 1, "maxReplans": 1},
        "runtime": runtime,
    });
    env
}

/// Opens the store of `level` as file `name` in `dir` (nothing on disk for [`Level::Memory`]).
///
/// # Errors
/// Store errors.
pub fn open_store(
    level: Level,
    dir: &Path,
    name: &str,
) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match level {
        Level::Memory => Arc::new(MemoryStore::new()),
        Level::D1 => Arc::new(RedbStore::open(dir.join(name), Durability::Os)?),
        Level::D2 => Arc::new(RedbStore::open(dir.join(name), Durability::Fsync)?),
        Level::Postgres => return Err("the PostgreSQL store is opened from its URL".into()),
    })
}

/// Figures of one benchmark invocation (WORKLOAD.md §7).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct BenchReport {
    /// Engine name.
    pub engine: &'static str,
    /// Scenario.
    pub scenario: Scenario,
    /// Replan variant (replan only).
    pub variant: Option<Variant>,
    /// N.
    pub n: usize,
    /// R.
    pub runs: usize,
    /// Durability level.
    pub durability: Level,
    /// How the client waited for events.
    pub consumer: Consumer,
    /// Commits of different runs may share one store transaction.
    pub group_commit: bool,
    /// Timed region.
    pub wall_s: f64,
    /// Executed plan steps, all runs.
    pub steps: u64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Wall time per step.
    pub mean_step_overhead_us: f64,
    /// Median time between consecutive step events of one run.
    pub step_gap_us_p50: f64,
    /// 99th percentile of the same.
    pub step_gap_us_p99: f64,
    /// Events received by the client.
    pub events: u64,
    /// Events the client missed because it lagged (must be 0).
    pub events_lagged: u64,
    /// Hold event to first event after the resume (replan/interrupt).
    pub interrupt_resume_us_mean: Option<f64>,
    /// Transition records written (one per commit batch).
    pub checkpoints: u64,
    /// Serialized bytes written: events, plan versions, heads, node and HITL records.
    pub checkpoint_bytes: u64,
    /// `checkpoint_bytes` per step.
    pub bytes_per_step: f64,
    /// Store file size after close (0 in memory).
    pub db_bytes: u64,
    /// Store transactions in the timed region.
    pub store_commits: u64,
    /// `store_commits` per step.
    pub commits_per_step: f64,
    /// Allocations in the timed region per step, all threads (with `--count-allocs`).
    pub allocs_per_step: Option<f64>,
    /// Bytes those allocations asked for, per step.
    pub alloc_bytes_per_step: Option<f64>,
    /// Median of 32 × (append 4 KiB + fdatasync) in the store directory.
    pub fsync_probe_us_p50: f64,
    /// Peak resident set (VmHWM).
    pub peak_rss_kib: u64,
    /// Resident set before the timed region.
    pub rss_before_kib: u64,
    /// Process CPU time / wall over the timed region.
    pub cpu_util: f64,
    /// 1-minute load average before the run.
    pub loadavg_1m_before: f64,
    /// Engines sharing the store (1 but for the PostgreSQL variant).
    pub instances: usize,
    /// PostgreSQL with 2 or more instances: from the abort of an instance holding a run to
    /// another instance driving it.
    pub takeover_ms: Option<f64>,
    /// PostgreSQL with 2 or more instances: how much later a follower on another instance
    /// gets a run's event than the driving instance publishes it (median over one run of the
    /// scenario's plan size).
    pub remote_follow_us_p50: Option<f64>,
    /// The 99th percentile of the same.
    pub remote_follow_us_p99: Option<f64>,
}

struct Observed {
    events: u64,
    lagged: u64,
    steps: u64,
    gaps: Vec<f64>,
    resume_us: Vec<f64>,
    end: Instant,
}

/// Every engine's events on one channel: one engine's own, or those of all of them forwarded.
fn events_of(engines: &[Engine]) -> tokio::sync::broadcast::Receiver<Arc<crate::fsm::RunEvent>> {
    if let [engine] = engines {
        return engine.subscribe();
    }
    let (tx, rx) = tokio::sync::broadcast::channel(1 << 18);
    for engine in engines {
        let (mut from, tx) = (engine.subscribe(), tx.clone());
        tokio::spawn(async move {
            loop {
                match from.recv().await {
                    Ok(event) => drop(tx.send(event)),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    rx
}

async fn drive(
    engines: &[Engine],
    opts: &BenchOptions,
    n: usize,
    runs: usize,
) -> Result<Observed, Box<dyn std::error::Error>> {
    let mut rx = events_of(engines);
    let mut owner: HashMap<crate::RunId, usize> = HashMap::new();
    let scenario = opts.scenario;
    let concurrent = scenario == Scenario::Fanout;
    let mut pending: Vec<crate::RunId> = Vec::new();
    let mut obs = Observed {
        events: 0,
        lagged: 0,
        steps: 0,
        gaps: Vec::new(),
        resume_us: Vec::new(),
        end: Instant::now(),
    };
    let mut last_step: HashMap<crate::RunId, Instant> = HashMap::new();
    let mut held: HashMap<crate::RunId, Instant> = HashMap::new();
    let mut remaining = runs;
    let mut submitted = 0usize;
    let submit = |i: usize| {
        let at = i % engines.len();
        let engine = engines[at].clone();
        let env = envelope(scenario, opts.variant, n);
        async move { engine.submit(env).await.map(|run| (run, at)) }
    };
    if concurrent {
        let mut tasks = Vec::new();
        for i in 0..runs {
            tasks.push(tokio::spawn(submit(i)));
        }
        for t in tasks {
            let (run, at) = t.await??;
            owner.insert(run, at);
            pending.push(run);
        }
        submitted = runs;
    } else {
        let (run, at) = submit(0).await?;
        owner.insert(run, at);
        pending.push(run);
        submitted += 1;
    }
    while remaining > 0 {
        let received = match opts.consumer {
            Consumer::Park => rx.recv().await,
            Consumer::Poll => match rx.try_recv() {
                Err(TryRecvError::Empty) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(ev) => Ok(ev),
                Err(TryRecvError::Lagged(k)) => Err(RecvError::Lagged(k)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            },
        };
        let ev = match received {
            Ok(ev) => ev,
            Err(RecvError::Lagged(k)) => {
                obs.lagged += k;
                continue;
            }
            Err(RecvError::Closed) => return Err("event channel closed".into()),
        };
        let now = Instant::now();
        obs.events += 1;
        if let Some(t) = held.remove(&ev.run_id) {
            obs.resume_us
                .push(now.duration_since(t).as_secs_f64() * 1e6);
        }
        match &ev.body {
            EventBody::NodeComplete { .. } => {
                obs.steps += 1;
                if let Some(prev) = last_step.insert(ev.run_id, now) {
                    obs.gaps.push(now.duration_since(prev).as_secs_f64() * 1e6);
                }
            }
            EventBody::HitlRequest { request_id, .. } => {
                let engine = engines[owner.get(&ev.run_id).copied().unwrap_or(0)].clone();
                let (run, req) = (ev.run_id, request_id.clone());
                held.insert(run, now);
                tokio::spawn(async move {
                    let _ = engine
                        .answer_hitl(run, &req, HitlAnswer::new(HitlDecision::Approve))
                        .await;
                });
            }
            EventBody::Complete { status, error, .. } => {
                if *status != crate::fsm::RunOutcome::Completed {
                    return Err(format!("run {} ended {status:?}: {error:?}", ev.run_id).into());
                }
                remaining -= 1;
                if !concurrent && submitted < runs {
                    let (run, at) = submit(submitted).await?;
                    owner.insert(run, at);
                    pending.push(run);
                    submitted += 1;
                }
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanUpdated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeStart { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::PolicyTriggered { .. }
            | EventBody::HitlResolved { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. } => {}
        }
    }
    obs.end = Instant::now();
    Ok(obs)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn proc_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Process CPU time (user + system) from `/proc/self/stat`, in seconds (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn fsync_probe(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe.bin");
    let Ok(mut file) = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
    else {
        return 0.0;
    };
    let block = vec![0u8; 4096];
    let mut samples = Vec::with_capacity(32);
    for _ in 0..32 {
        let t = Instant::now();
        if file
            .write_all(&block)
            .and_then(|()| file.sync_data())
            .is_err()
        {
            return 0.0;
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    percentile(&samples, 0.5)
}

/// Runs the benchmark once and returns its figures.
///
/// # Errors
/// Store or engine failures, or a run that did not complete.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, Box<dyn std::error::Error>> {
    let tmp = match &opts.dir {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let dir = opts
        .dir
        .clone()
        .or_else(|| tmp.clone())
        .ok_or("no directory")?;
    std::fs::create_dir_all(&dir)?;
    let runs = opts.runs.max(1);
    #[cfg(feature = "postgres")]
    if let Some(pg) = &opts.postgres {
        return cluster::run(opts, pg).await;
    }
    if opts.postgres.is_some() {
        return Err("this build has no PostgreSQL store (feature `postgres`)".into());
    }
    if opts.warmup {
        let warm = open_store(opts.level, &dir, "warmup.redb")?;
        let engine = Engine::open(bench_config(warm, 8)).await?;
        let warm_opts = BenchOptions {
            nodes: 8,
            runs: 1,
            warmup: false,
            ..opts.clone()
        };
        drive(std::slice::from_ref(&engine), &warm_opts, 8, 1).await?;
        engine.shutdown().await;
    }
    let loadavg_before = loadavg();
    let fsync_us = fsync_probe(&dir);
    let db_path = dir.join("bench.redb");
    let _ = std::fs::remove_file(&db_path);
    let store = open_store(opts.level, &dir, "bench.redb")?;
    let engine = Engine::open(bench_config(store.clone(), opts.nodes)).await?;
    let stats_before = store.stats();
    let rss_before = proc_kib("VmRSS:");
    let cpu_before = cpu_seconds();
    let allocs_before = opts.alloc_counter.map(|totals| totals());
    let start = Instant::now();
    let obs = drive(std::slice::from_ref(&engine), opts, opts.nodes, runs).await?;
    let wall = obs.end.duration_since(start);
    let allocs = opts
        .alloc_counter
        .zip(allocs_before)
        .map(|(totals, before)| {
            let now = totals();
            AllocTotals {
                allocs: now.allocs - before.allocs,
                bytes: now.bytes - before.bytes,
            }
        });
    let cpu = cpu_seconds() - cpu_before;
    let stats = store.stats();
    engine.shutdown().await;
    drop(engine);
    drop(store);
    let db_bytes = if opts.level == Level::Memory {
        0
    } else {
        std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0)
    };
    let measured = Measured {
        obs,
        wall,
        allocs,
        cpu,
        commits: stats.commits - stats_before.commits,
        batches: stats.batches - stats_before.batches,
        bytes: stats.bytes_written - stats_before.bytes_written,
        db_bytes,
        fsync_us,
        rss_before,
        loadavg_before,
    };
    if let Some(tmp) = tmp {
        let _ = std::fs::remove_dir_all(tmp);
    }
    Ok(report(opts, runs, measured, 1, None))
}

/// What one timed region measured.
struct Measured {
    obs: Observed,
    wall: Duration,
    allocs: Option<AllocTotals>,
    cpu: f64,
    commits: u64,
    batches: u64,
    bytes: u64,
    db_bytes: u64,
    fsync_us: f64,
    rss_before: u64,
    loadavg_before: f64,
}

fn report(
    opts: &BenchOptions,
    runs: usize,
    m: Measured,
    instances: usize,
    takeover_ms: Option<f64>,
) -> BenchReport {
    let Measured {
        obs,
        wall,
        allocs,
        cpu,
        commits,
        batches,
        bytes,
        db_bytes,
        fsync_us,
        rss_before,
        loadavg_before,
    } = m;
    let mut gaps = obs.gaps;
    gaps.sort_by(f64::total_cmp);
    let steps = obs.steps.max(1);
    let wall_s = wall
        .as_secs_f64()
        .max(Duration::from_nanos(1).as_secs_f64());
    BenchReport {
        engine: "flexrun",
        scenario: opts.scenario,
        variant: (opts.scenario == Scenario::Replan).then_some(opts.variant),
        n: opts.nodes,
        runs,
        durability: opts.level,
        consumer: opts.consumer,
        group_commit: true,
        wall_s,
        steps: obs.steps,
        steps_per_s: obs.steps as f64 / wall_s,
        mean_step_overhead_us: wall_s * 1e6 / steps as f64,
        step_gap_us_p50: percentile(&gaps, 0.5),
        step_gap_us_p99: percentile(&gaps, 0.99),
        events: obs.events,
        events_lagged: obs.lagged,
        interrupt_resume_us_mean: (!obs.resume_us.is_empty())
            .then(|| obs.resume_us.iter().sum::<f64>() / obs.resume_us.len() as f64),
        checkpoints: batches,
        checkpoint_bytes: bytes,
        bytes_per_step: bytes as f64 / steps as f64,
        db_bytes,
        store_commits: commits,
        commits_per_step: commits as f64 / steps as f64,
        allocs_per_step: allocs.map(|a| a.allocs as f64 / steps as f64),
        alloc_bytes_per_step: allocs.map(|a| a.bytes as f64 / steps as f64),
        fsync_probe_us_p50: fsync_us,
        peak_rss_kib: proc_kib("VmHWM:"),
        rss_before_kib: rss_before,
        cpu_util: cpu / wall_s,
        loadavg_1m_before: loadavg_before,
        instances,
        takeover_ms,
        remote_follow_us_p50: None,
        remote_follow_us_p99: None,
    }
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flexrun-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
