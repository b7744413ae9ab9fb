//! The workload on the PostgreSQL store, with one or more engines (instances) sharing the
//! database in this process, and the time a takeover takes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{
    BenchOptions, BenchReport, Level, Measured, PostgresBench, Variant, bench_config, cpu_seconds,
    drive, envelope, loadavg, proc_kib, report,
};
use crate::engine::{ClusterOptions, Engine};
use crate::fsm::EventBody;
use crate::store::{PostgresOptions, PostgresStore, Store, StoreStats};

/// How long the takeover measurement waits before it gives up.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(120);

/// The engines of the workload, one per instance, and their stores.
type Instances = (Vec<Engine>, Vec<Arc<dyn Store>>);

async fn open_engines(
    pg: &PostgresBench,
    nodes: usize,
) -> Result<Instances, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut engines = Vec::new();
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for i in 0..pg.instances.max(1) {
        let options = PostgresOptions {
            instance_id: Some(format!("bench-{}-{i}", &run[..8])),
            ..PostgresOptions::default()
        };
        let url = pg.url.clone();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || PostgresStore::connect(&url, options)).await??,
        );
        let mut config = bench_config(store.clone(), nodes);
        config.cluster = ClusterOptions {
            lease: pg.lease,
            heartbeat: pg.lease / 5,
            ..ClusterOptions::default()
        };
        engines.push(Engine::open(config).await?);
        stores.push(store);
    }
    Ok((engines, stores))
}

fn total(stores: &[Arc<dyn Store>]) -> StoreStats {
    stores.iter().fold(StoreStats::default(), |mut sum, store| {
        let stats = store.stats();
        sum.commits += stats.commits;
        sum.batches += stats.batches;
        sum.bytes_written += stats.bytes_written;
        sum
    })
}

/// Runs the workload of `opts` on `pg`'s database, then (with two instances or more) aborts
/// the first one while it holds a run and measures how long until another drives it.
pub(super) async fn run(
    opts: &BenchOptions,
    pg: &PostgresBench,
) -> Result<BenchReport, Box<dyn std::error::Error>> {
    let runs = opts.runs.max(1);
    let opts = &BenchOptions {
        level: Level::Postgres,
        ..opts.clone()
    };
    if opts.warmup {
        // On engines of their own (the planner's plan size is part of the configuration).
        let (warm_engines, _) = open_engines(pg, 8).await?;
        let warm = BenchOptions {
            nodes: 8,
            runs: warm_engines.len(),
            warmup: false,
            ..opts.clone()
        };
        drive(&warm_engines, &warm, 8, warm_engines.len()).await?;
        for engine in &warm_engines {
            engine.shutdown().await;
        }
    }
    let (engines, stores) = open_engines(pg, opts.nodes).await?;
    let loadavg_before = loadavg();
    let before = total(&stores);
    let rss_before = proc_kib("VmRSS:");
    let cpu_before = cpu_seconds();
    let allocs_before = opts.alloc_counter.map(|totals| totals());
    let start = Instant::now();
    let obs = drive(&engines, opts, opts.nodes, runs).await?;
    let wall = obs.end.duration_since(start);
    let cpu = cpu_seconds() - cpu_before;
    let allocs = opts
        .alloc_counter
        .zip(allocs_before)
        .map(|(totals, before)| {
            let now = totals();
            super::AllocTotals {
                allocs: now.allocs - before.allocs,
                bytes: now.bytes - before.bytes,
            }
        });
    let after = total(&stores);
    let (takeover_ms, follow) = if engines.len() >= 2 {
        let follow = follow_latency(&engines, opts.nodes).await?;
        (Some(takeover(&engines, opts.nodes).await?), Some(follow))
    } else {
        (None, None)
    };
    for engine in &engines {
        engine.shutdown().await;
    }
    let measured = Measured {
        obs,
        wall,
        allocs,
        cpu,
        commits: after.commits - before.commits,
        batches: after.batches - before.batches,
        bytes: after.bytes_written - before.bytes_written,
        db_bytes: 0,
        fsync_us: 0.0,
        rss_before,
        loadavg_before,
    };
    let mut report = report(opts, runs, measured, engines.len(), takeover_ms);
    if let Some((p50, p99)) = follow {
        report.remote_follow_us_p50 = Some(p50);
        report.remote_follow_us_p99 = Some(p99);
    }
    Ok(report)
}

/// Runs one linear run on the first engine while the second follows it, and returns the
/// median and 99th percentile of how much later the follower got each event than the driver
/// published it, in µs.
async fn follow_latency(
    engines: &[Engine],
    nodes: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut local = engines[0].subscribe();
    let run = engines[0]
        .submit(envelope(super::Scenario::Linear, Variant::Interrupt, nodes))
        .await?;
    let mut remote = engines[1].events(run, 0)?;
    let follower = tokio::spawn(async move {
        let mut seen = HashMap::new();
        while let Some(event) = remote.next().await {
            seen.insert(event.seq, Instant::now());
        }
        seen
    });
    let mut published = HashMap::new();
    loop {
        let event = local.recv().await?;
        if event.run_id != run {
            continue;
        }
        published.insert(event.seq, Instant::now());
        if matches!(event.body, EventBody::Complete { .. }) {
            break;
        }
    }
    let seen = follower.await?;
    let mut delays: Vec<f64> = published
        .iter()
        .filter_map(|(seq, at)| {
            let got = seen.get(seq)?;
            Some(got.saturating_duration_since(*at).as_secs_f64() * 1e6)
        })
        .collect();
    if delays.len() != published.len() {
        return Err(format!(
            "the follower on another instance got {} of {} events",
            delays.len(),
            published.len()
        )
        .into());
    }
    delays.sort_by(f64::total_cmp);
    Ok((
        super::percentile(&delays, 0.5),
        super::percentile(&delays, 0.99),
    ))
}

/// Starts a run on the first engine that waits for a human, aborts that engine (a crash: no
/// goodbye to the cluster) and returns the milliseconds until another engine drives the run.
async fn takeover(engines: &[Engine], nodes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let mut events = engines[0].subscribe();
    let run = engines[0]
        .submit(envelope(
            super::Scenario::Replan,
            Variant::Interrupt,
            nodes.max(2),
        ))
        .await?;
    loop {
        let event = events.recv().await?;
        if event.run_id == run && matches!(event.body, EventBody::HitlRequest { .. }) {
            break;
        }
    }
    engines[0].abort().await;
    let aborted = Instant::now();
    loop {
        if let Some(owner) = engines[1..].iter().find(|e| e.drives(run)) {
            let ms = aborted.elapsed().as_secs_f64() * 1e3;
            // Leaves nothing waiting in the database for the next benchmark.
            owner.cancel(run, "benchmark over").await?;
            return Ok(ms);
        }
        if aborted.elapsed() > TAKEOVER_LIMIT {
            return Err("no instance took the run over".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
