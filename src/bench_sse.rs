//! `flexrun bench-sse`: many SSE clients on one run of a real server process, measured from
//! outside (docs/BENCHMARKS.md, "SSE fan-out").
//!
//! The parent starts `flexrun bench-sse --serve-child` (the same binary) as a server on
//! 127.0.0.1 with the benchmark engine, creates one run whose every step ends in a HITL approval,
//! and connects one probe (on a thread of its own) and then `--clients` followers in one burst.
//! Once every follower has caught up, it answers the approvals one at a time: each answer is one
//! round of the run (one commit, then its events). A round's delivery latency is measured from
//! the moment the answer was sent (an upper bound of "after commit": it includes the request and
//! the commit), for the probe and for every follower. The server's CPU time over the rounds
//! (from `/proc`) is divided by the frames delivered; its resident set is read when idle (with
//! the probe connected) and at its peak over the connect burst (`VmHWM`, reset before it).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flexrun::Engine;
use flexrun::api::{self, ApiConfig, AppState};
use flexrun::bench::{self, Level};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::LevelArg;

/// `flexrun bench-sse` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct SseArgs {
    /// Followers connected to the run in one burst (the probe comes on top).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Steps of the run; each is one approval, i.e. one round of events (at most 100).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// The server's store.
    #[arg(long, value_enum, default_value = "memory")]
    durability: LevelArg,
    /// Pause after every follower has the round's last event, before the next answer.
    #[arg(long, default_value_t = 5)]
    gap_ms: u64,
    /// Internal: run as the server process (prints its address, stops when stdin closes).
    #[arg(long, hide = true)]
    serve_child: bool,
    /// Internal: the server's store directory.
    #[arg(long, hide = true)]
    dir: Option<PathBuf>,
}

/// Runs `flexrun bench-sse` and prints its figures as one JSON object.
pub(crate) async fn run(args: SseArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.steps > 100 {
        bail!("--steps must be within 1..=100 (the approval policy fires at most 100 times)");
    }
    if args.serve_child {
        return serve_child(&args).await;
    }
    let report = measure(&args).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn level(arg: LevelArg) -> Level {
    match arg {
        LevelArg::Memory => Level::Memory,
        LevelArg::D1 => Level::D1,
        LevelArg::D2 => Level::D2,
    }
}

/// The server side: the benchmark engine behind the real HTTP API.
async fn serve_child(args: &SseArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().context("--serve-child needs --dir")?;
    let store = bench::open_store(level(args.durability), &dir, "sse.redb")
        .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
    let engine = Engine::open(bench::bench_config(store, args.steps)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let stop = async {
        // The parent holds our stdin; when it closes (or the parent dies), stop.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    };
    api::serve(
        listener,
        AppState::new(engine.clone(), ApiConfig::default()),
        stop,
    )
    .await?;
    engine.shutdown().await;
    Ok(())
}

/// The server process; stopped (stdin closed, then waited for) on drop.
struct Server {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Server {
    fn start(args: &SseArgs) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("flexrun-sse-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe().context("cannot find the flexrun binary")?;
        let mut child = Command::new(exe)
            .args(["bench-sse", "--serve-child", "--steps"])
            .arg(args.steps.to_string())
            .arg("--durability")
            .arg(crate::value_name(args.durability))
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim();
        if addr.is_empty() {
            let _ = child.kill();
            bail!("the server process did not print its address");
        }
        Ok(Self {
            base: format!("http://{addr}"),
            child,
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// User and system CPU seconds of a process, all its threads (dead ones included).
fn cpu_seconds(pid: u32, ticks_per_s: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) / ticks_per_s, tick(12) / ticks_per_s)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One SSE frame as a follower sees it.
#[derive(Debug, Clone)]
struct Frame {
    seq: u64,
    kind: String,
    /// The whole frame as received (every follower must receive the same bytes).
    raw: Vec<u8>,
}

impl Frame {
    /// The `data:` field.
    fn data(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim_start)
            .collect()
    }
}

/// The value of the `name:` line of a frame, if any.
fn field<'a>(raw: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    raw.split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(b":"))
        .map(<[u8]>::trim_ascii)
}

/// Splits complete frames off the front of `buf` (frames end with a blank line); comments
/// (heartbeats) and frames without an `id` are skipped.
fn take_frames(buf: &mut Vec<u8>, out: &mut Vec<Frame>) {
    let mut start = 0;
    while let Some(end) = buf[start..].windows(2).position(|w| w == b"\n\n") {
        let raw = &buf[start..start + end + 2];
        start += end + 2;
        let seq = field(raw, b"id").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        if let Some(seq) = seq {
            let kind = field(raw, b"event")
                .map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned());
            out.push(Frame {
                seq,
                kind,
                raw: raw.to_vec(),
            });
        }
    }
    buf.drain(..start);
}

/// What one follower received: each frame's seq and arrival, a digest of the stream.
#[derive(Debug, Default)]
struct Received {
    arrivals: Vec<(u64, Instant)>,
    digest: u64,
    gap_free: bool,
}

/// Follows the run's stream until `complete`, publishing the last seq seen in `last`.
async fn follow(
    client: reqwest::Client,
    url: String,
    last: Arc<AtomicU64>,
    mut on_frame: impl FnMut(&Frame, Instant),
) -> anyhow::Result<Received> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let resp = client
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut digest = foldhash::fast::FixedState::with_seed(0).build_hasher();
    let mut got = Received {
        gap_free: true,
        ..Received::default()
    };
    while let Some(chunk) = body.next().await {
        let now = Instant::now();
        buf.extend_from_slice(&chunk?);
        take_frames(&mut buf, &mut frames);
        for frame in frames.drain(..) {
            let expected = got.arrivals.last().map_or(1, |(seq, _)| seq + 1);
            got.gap_free &= frame.seq == expected;
            digest.write(&frame.raw);
            got.arrivals.push((frame.seq, now));
            on_frame(&frame, now);
            last.store(frame.seq, Ordering::Release);
            if frame.kind == "complete" {
                got.digest = digest.finish();
                return Ok(got);
            }
        }
    }
    bail!("the stream ended before `complete`")
}

/// The run's envelope: `steps` chained steps, each completion asking for an approval.
fn envelope(steps: usize) -> Value {
    json!({
        "objective": "SSE fan-out benchmark",
        "outputContract": {"mode": "facets", "facets": [bench::STEP_FACET]},
        "policies": {
            "planner": {"maxNodes": steps + 8, "maxConcurrency": 1},
            "runtime": [{
                "id": "pace",
                "maxFires": steps,
                "trigger": {"kind": "onNodeComplete"},
                "action": {"type": "hitl", "kind": "approval", "question": "next step?",
                           "onApprove": "continue", "onReject": "fail"}
            }]
        }
    })
}

/// What the probe has seen: the last HITL request (seq, request id) and whether it completed.
#[derive(Debug, Default, Clone)]
struct ProbeView {
    request: Option<(u64, String)>,
    complete_seq: Option<u64>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
struct Percentiles {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() - 1) as f64 * p).round() as usize]
            }
        };
        Self {
            samples: ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The figures `bench-sse` prints.
#[derive(Debug, Serialize)]
struct SseReport {
    clients: usize,
    steps: usize,
    durability: String,
    /// Events of the run (the stream every follower must receive whole).
    events: u64,
    /// Followers whose stream was gap-free, complete and identical to the probe's.
    identical: usize,
    /// Followers that lost, reordered or altered anything.
    differing: usize,
    /// Frames delivered over the measured rounds, probe and followers.
    round_frames: u64,
    /// From sending an answer to its response (the request and the commit).
    answer_ack: Percentiles,
    /// From sending an answer to the probe's arrival of that round's events.
    probe_latency: Percentiles,
    /// The same for every follower (includes the followers' own scheduling in this process).
    follower_latency: Percentiles,
    /// Server CPU over the rounds (engine work included) per delivered frame.
    server_cpu_us_per_frame: f64,
    /// The part of it spent in the kernel (on loopback, the receiving side's TCP work too).
    server_system_us_per_frame: f64,
    /// Client-side CPU over the rounds per delivered frame (this process).
    client_cpu_us_per_frame: f64,
    /// From the first follower's connect to the last one having caught up.
    connect_burst_ms: f64,
    /// Server resident set with the run waiting and the probe connected.
    rss_idle_kib: u64,
    /// Peak server resident set over the connect burst (VmHWM, reset before it).
    rss_burst_peak_kib: u64,
    /// Peak over the whole measurement, rounds included.
    rss_peak_kib: u64,
    /// `rss_burst_peak_kib / rss_idle_kib`.
    rss_burst_ratio: f64,
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(())
}

async fn measure(args: &SseArgs) -> anyhow::Result<SseReport> {
    let ticks = clock_ticks();
    let server = Server::start(args)?;
    let pid = server.pid();
    let client = flexrun::http_client::client_builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let created: Value = client
        .post(format!("{}/v1/runs", server.base))
        .json(&envelope(args.steps))
        .send()
        .await?
        .error_for_status()
        .context("creating the run")?
        .json()
        .await?;
    let run_id = created["runId"].as_str().context("no runId")?.to_owned();
    let events_url = format!("{}/v1/runs/{run_id}/events", server.base);

    // The probe: its own thread and runtime, so the followers' work does not delay its reads.
    let view = Arc::new(Mutex::new(ProbeView::default()));
    let probe_last = Arc::new(AtomicU64::new(0));
    let probe = {
        let (client, url, view, last) = (
            client.clone(),
            events_url.clone(),
            view.clone(),
            probe_last.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<Received> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(follow(client, url, last, move |frame, _| {
                let mut view = view
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if frame.kind == "hitl_request" {
                    let id = serde_json::from_str::<Value>(&frame.data())
                        .ok()
                        .and_then(|v| v["payload"]["requestId"].as_str().map(str::to_owned));
                    if let Some(id) = id {
                        view.request = Some((frame.seq, id));
                    }
                } else if frame.kind == "complete" {
                    view.complete_seq = Some(frame.seq);
                }
            }))
        })
    };
    let current = || {
        view.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    wait_until(
        "the first approval request",
        Duration::from_secs(30),
        || current().request.is_some(),
    )
    .await?;
    let first = current().request.context("no request")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = status_kib(pid, "VmRSS:");
    // Writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .context("resetting the server's peak RSS")?;

    // The burst: every follower connects at once.
    let burst_start = Instant::now();
    let lasts: Vec<Arc<AtomicU64>> = (0..args.clients)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let failed = Arc::new(AtomicUsize::new(0));
    // The followers share one thread (and so at most one core) with a runtime of their own.
    let followers = {
        let (client, url, lasts, failed) = (
            client.clone(),
            events_url.clone(),
            lasts.clone(),
            failed.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<Vec<Option<Received>>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let tasks: Vec<_> = lasts
                    .into_iter()
                    .map(|last| {
                        let (client, url, failed) = (client.clone(), url.clone(), failed.clone());
                        tokio::spawn(async move {
                            let got = follow(client, url, last, |_, _| {}).await;
                            if got.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            got.ok()
                        })
                    })
                    .collect();
                let mut received = Vec::with_capacity(tasks.len());
                for task in tasks {
                    received.push(task.await?);
                }
                Ok(received)
            })
        })
    };
    let caught_up = |seq: u64| {
        lasts.iter().all(|l| l.load(Ordering::Acquire) >= seq) || failed.load(Ordering::Relaxed) > 0
    };
    wait_until(
        "every follower to catch up",
        Duration::from_secs(120),
        || caught_up(first.0),
    )
    .await?;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} follower(s) failed to connect",
            failed.load(Ordering::Relaxed)
        );
    }
    let connect_burst_ms = burst_start.elapsed().as_secs_f64() * 1e3;
    let rss_burst_peak = status_kib(pid, "VmHWM:");

    // The rounds: one answer, then wait for everyone to have the round's last event.
    let cpu_server = cpu_seconds(pid, ticks);
    let cpu_client = cpu_seconds(std::process::id(), ticks);
    let mut rounds: Vec<(u64, Instant)> = Vec::new(); // (last seq of the round before, sent)
    let mut acks: Vec<f64> = Vec::new();
    let mut boundary = first.0;
    loop {
        let view_now = current();
        let Some((seq, request)) = view_now.request.clone() else {
            bail!("no pending request");
        };
        if seq != boundary {
            bail!("the probe's view moved on unexpectedly");
        }
        let sent = Instant::now();
        client
            .post(format!("{}/v1/runs/{run_id}/hitl/{request}", server.base))
            .json(&json!({"decision": "approve"}))
            .send()
            .await?
            .error_for_status()
            .context("answering an approval")?;
        acks.push(sent.elapsed().as_secs_f64() * 1e3);
        rounds.push((boundary, sent));
        wait_until(
            "the round's last event at the probe",
            Duration::from_secs(30),
            || {
                let v = current();
                v.complete_seq.is_some() || v.request.as_ref().is_some_and(|(s, _)| *s > boundary)
            },
        )
        .await?;
        let v = current();
        let next = v
            .complete_seq
            .or(v.request.as_ref().map(|(s, _)| *s))
            .unwrap_or(boundary);
        wait_until(
            "every follower to have the round",
            Duration::from_secs(60),
            || caught_up(next),
        )
        .await?;
        boundary = next;
        if v.complete_seq.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let cpu_server = {
        let (user, system) = cpu_seconds(pid, ticks);
        (user - cpu_server.0, system - cpu_server.1)
    };
    let cpu_client = {
        let (user, system) = cpu_seconds(std::process::id(), ticks);
        user + system - cpu_client.0 - cpu_client.1
    };
    let rss_peak = status_kib(pid, "VmHWM:");

    let probe = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
    let received = followers
        .join()
        .map_err(|_| anyhow::anyhow!("the followers' thread panicked"))??;
    drop(server);

    // Latency of a frame: its arrival minus the send time of the answer that caused it.
    let sent_for = |seq: u64| -> Option<Instant> {
        let i = rounds.partition_point(|(after, _)| *after < seq);
        (i > 0).then(|| rounds[i - 1].1)
    };
    let latencies = |got: &Received, out: &mut Vec<f64>| {
        for (seq, at) in &got.arrivals {
            if let Some(sent) = sent_for(*seq) {
                out.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
            }
        }
    };
    let mut probe_ms = Vec::new();
    latencies(&probe, &mut probe_ms);
    let round_frames_each = probe_ms.len() as u64;
    let mut follower_ms = Vec::with_capacity(args.clients * probe_ms.len());
    let mut identical = 0;
    for got in received.iter().flatten() {
        latencies(got, &mut follower_ms);
        if got.gap_free && got.digest == probe.digest && got.arrivals.len() == probe.arrivals.len()
        {
            identical += 1;
        }
    }
    let round_frames = round_frames_each * (args.clients as u64 + 1);
    Ok(SseReport {
        clients: args.clients,
        steps: args.steps,
        durability: crate::value_name(args.durability),
        events: probe.arrivals.len() as u64,
        identical,
        differing: args.clients - identical,
        round_frames,
        answer_ack: Percentiles::of(acks),
        probe_latency: Percentiles::of(probe_ms),
        follower_latency: Percentiles::of(follower_ms),
        server_cpu_us_per_frame: (cpu_server.0 + cpu_server.1) * 1e6 / round_frames.max(1) as f64,
        server_system_us_per_frame: cpu_server.1 * 1e6 / round_frames.max(1) as f64,
        client_cpu_us_per_frame: cpu_client * 1e6 / round_frames.max(1) as f64,
        connect_burst_ms,
        rss_idle_kib: rss_idle,
        rss_burst_peak_kib: rss_burst_peak,
        rss_peak_kib: rss_peak,
        rss_burst_ratio: rss_burst_peak as f64 / rss_idle.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_at_blank_lines_and_partial_ones_wait() {
        let mut buf = b"event: node_start\nid: 3\ndata: {\"a\":1}\n\n: heartbeat\n\nevent: complete\nid: 4\nda".to_vec();
        let mut out = Vec::new();
        take_frames(&mut buf, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].seq, out[0].kind.as_str(), out[0].data().as_str()),
            (3, "node_start", "{\"a\":1}")
        );
        buf.extend_from_slice(b"ta: {}\n\n");
        take_frames(&mut buf, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].seq, out[1].kind.as_str()), (4, "complete"));
        assert!(buf.is_empty());
    }

    #[test]
    fn percentiles_pick_ranks() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.samples, p.p50_ms, p.p99_ms, p.max_ms),
            (100, 51.0, 99.0, 100.0)
        );
    }

    #[test]
    fn the_envelope_asks_once_per_step() {
        let env = envelope(7);
        assert_eq!(env["policies"]["runtime"][0]["maxFires"], 7);
    }
}
