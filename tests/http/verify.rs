//! `flexrun::conformance` and `flexrun verify` against real servers: the streams of the
//! contract's scenarios conform as served, and the binary checks saved streams, follows live
//! runs (through a pause, with a bearer token, across dropped connections) and names the rule
//! a tampered or mangled stream breaks.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use flexrun::RunId;
use flexrun::conformance::wire::Stream;
use flexrun::conformance::{self, Rule};
use flexrun::fsm::Limits;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::hitl::approval;
use crate::support::*;

const TOKEN: &str = "verify-s3cret-token";

fn qa_gate() -> Value {
    json!({"runtime": [{"id": "qa-gate",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "replan", "rationale": "add a QA pass"}}]})
}

fn outputs() -> [&'static str; 2] {
    ["copyVariants", "summary"]
}

/// The whole SSE body of a run that has ended (the server closes it after `complete`).
async fn served(server: &Server, run: RunId) -> String {
    let (status, mime, text) = server.get_text(&format!("/v1/runs/{run}/events")).await;
    assert_eq!(
        (status, mime.as_str()),
        (StatusCode::OK, "text/event-stream")
    );
    text
}

/// Answers the run's pending HITL request once it is asked.
async fn answer(server: &Server, run: RunId, decision: &str) {
    let mut sse = server.events(run, None).await;
    let asked = sse.until("hitl_request").await;
    let request = asked.last().unwrap().payload()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request}"),
            json!({"decision": decision}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sse.rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_streams_conform_as_served() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let plain = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    let replan = server.submit(copy_envelope(&outputs(), qa_gate())).await;
    let rejected = server
        .submit(copy_envelope(&outputs(), approval("replan")))
        .await;
    answer(&server, rejected, "reject").await;
    let approved = server
        .submit(copy_envelope(&outputs(), approval("fail")))
        .await;
    answer(&server, approved, "approve").await;
    let cancelled = server
        .submit(copy_envelope(&outputs(), approval("fail")))
        .await;
    let mut sse = server.events(cancelled, None).await;
    sse.until("hitl_request").await;
    let (status, _) = server
        .post(&format!("/v1/runs/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    sse.rest().await;

    let limits = Limits {
        max_attempts: 3,
        max_replans: 3,
    };
    let mut kinds = Vec::new();
    for run in [plain, replan, rejected, approved, cancelled] {
        let text = served(&server, run).await;
        let stream = Stream::parse(&text).unwrap();
        let strict = conformance::Options::default()
            .for_run(run)
            .with_limits(limits);
        let report = conformance::check_stream(&stream, &strict);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.runs()[0].events, stream.events().len());
        let stored = server.stored(run);
        assert_eq!(stream.events(), stored.as_slice());
        assert!(conformance::check(&stored).is_ok());
        kinds.extend(stored.iter().map(|e| e.kind()));
    }
    for kind in [
        "plan_updated",
        "hitl_resolved",
        "policy_triggered",
        "complete",
    ] {
        assert!(
            kinds.iter().any(|k| k.as_str() == kind),
            "{kind} was checked"
        );
    }
    let all: Vec<_> = [plain, replan]
        .iter()
        .flat_map(|r| server.stored(*r))
        .collect();
    let report = conformance::check(&all);
    assert_eq!((report.run_count(), report.is_ok()), (2, true), "{report}");
    server.stop().await;
}

/// Runs the `flexrun` binary with `args`, `env` and `stdin`; it must end by itself.
async fn flexrun(args: &[&str], env: &[(&str, &str)], stdin: Option<String>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flexrun"));
    cmd.args(args)
        .env_remove("FLEXRUN_LOG")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("flexrun starts");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    });
    tokio::time::timeout(GUARD, run)
        .await
        .expect("flexrun ends by itself")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_saved_streams_and_names_the_rule_of_a_tampered_one() {
    let (dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server.submit(copy_envelope(&outputs(), qa_gate())).await;
    server.events(run, None).await.rest().await;
    let saved = served(&server, run).await;
    let file = dir.path().join("run.sse");
    std::fs::write(&file, &saved).unwrap();
    let file = file.to_str().unwrap();

    let out = flexrun(&["verify", file], &[], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("run {run}: 16 events, conforms (ended completed)\n")
    );

    let jsonl: String = server
        .stored(run)
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let out = flexrun(
        &["verify", "-", "--run", &run.to_string()],
        &[],
        Some(jsonl.clone()),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(jsonl.contains("\"durationUs\":"), "{jsonl}");
    // A recording made before `durationUs` existed has only `durationMs`: still readable.
    let recorded_in_millis: String = jsonl
        .lines()
        .map(|line| {
            let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(payload) = event["payload"].as_object_mut() {
                payload.remove("durationUs");
            }
            event.to_string() + "\n"
        })
        .collect();
    assert!(!recorded_in_millis.contains("durationUs"));
    let out = flexrun(&["verify", "-"], &[], Some(recorded_in_millis)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let frames: Vec<&str> = saved.split_inclusive("\n\n").collect();
    let without_5: String = frames
        .iter()
        .filter(|f| !f.contains("\nid: 5\n"))
        .copied()
        .collect();
    assert_eq!(
        without_5.len()
            + frames
                .iter()
                .find(|f| f.contains("\nid: 5\n"))
                .unwrap()
                .len(),
        saved.len(),
        "one frame removed"
    );
    let tampered = dir.path().join("tampered.sse");
    std::fs::write(&tampered, without_5).unwrap();
    let out = flexrun(&["verify", tampered.to_str().unwrap()], &[], None).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!("run {run}: 15 events, ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("seq 6 (node_start): seq-gap: seq 6 after seq 4: seq 5 is missing"),
        "{stdout}"
    );

    let relabelled = saved.replacen("event: plan_accepted", "event: plan_updated", 1);
    let out = flexrun(&["verify", "-"], &[], Some(relabelled)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("seq 3 (plan_accepted): sse-frame: `event: plan_updated`"));

    let out = flexrun(&["verify", "-"], &[], Some("   1  plan_requested\n".into())).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: standard input: line 1: neither"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexrun_run_jsonl_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let envelope = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/replan.json");
    let data = dir.path().to_str().unwrap();
    let run = flexrun(
        &["run", envelope, "--format", "jsonl", "--data", data],
        &[],
        None,
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let out = flexrun(&["verify", "-"], &[], Some(text(&run.stdout))).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("conforms (ended completed)"));
}

/// A relay in front of a server's event streams that can cut connections and forget
/// `Last-Event-ID`, and says what it saw.
struct Relay {
    base: String,
    /// The `Last-Event-ID` of each connection.
    connections: mpsc::UnboundedReceiver<Option<String>>,
    /// The `event:` of each frame passed on.
    forwarded: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct RelayState {
    upstream: String,
    /// Closes each connection after this many event frames.
    cut_after: Option<usize>,
    /// Asks upstream from the start on every connection.
    forget_position: bool,
    client: reqwest::Client,
    connections: mpsc::UnboundedSender<Option<String>>,
    forwarded: mpsc::UnboundedSender<String>,
}

async fn relay(
    State(st): State<RelayState>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = st.connections.send(last.clone());
    let mut request = st
        .client
        .get(format!("{}/v1/runs/{run}/events", st.upstream));
    if let Some(auth) = headers.get(AUTHORIZATION) {
        request = request.header(AUTHORIZATION, auth.to_str().unwrap());
    }
    if let (Some(id), false) = (&last, st.forget_position) {
        request = request.header("last-event-id", id);
    }
    let mut upstream = request.send().await.unwrap();
    let status = axum::http::StatusCode::from_u16(upstream.status().as_u16()).unwrap();
    if status != axum::http::StatusCode::OK {
        return (status, upstream.text().await.unwrap()).into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut buf = String::new();
        let mut sent = 0;
        while let Ok(Some(chunk)) = upstream.chunk().await {
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(kind) = block.lines().find_map(|l| l.strip_prefix("event: ")) {
                    if st.cut_after == Some(sent) {
                        return;
                    }
                    sent += 1;
                    let _ = st.forwarded.send(kind.to_owned());
                }
                if tx.send(Bytes::from(block)).is_err() {
                    return;
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

impl Relay {
    async fn start(upstream: &str, cut_after: Option<usize>, forget_position: bool) -> Self {
        let (connections_tx, connections) = mpsc::unbounded_channel();
        let (forwarded_tx, forwarded) = mpsc::unbounded_channel();
        let state = RelayState {
            upstream: upstream.to_owned(),
            cut_after,
            forget_position,
            client: client(),
            connections: connections_tx,
            forwarded: forwarded_tx,
        };
        let app = axum::Router::new()
            .route("/v1/runs/{run}/events", axum::routing::get(relay))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base,
            connections,
            forwarded,
            task,
        }
    }

    fn events_url(&self, run: RunId) -> String {
        format!("{}/v1/runs/{run}/events", self.base)
    }

    /// Waits until a frame of `kind` was passed on.
    async fn passed(&mut self, kind: &str) {
        loop {
            let next = tokio::time::timeout(GUARD, self.forwarded.recv()).await;
            if next.expect("a frame within the guard").as_deref() == Some(kind) {
                return;
            }
        }
    }

    fn last_event_ids(&mut self) -> Vec<Option<String>> {
        let mut ids = Vec::new();
        while let Ok(id) = self.connections.try_recv() {
            ids.push(id);
        }
        ids
    }
}

async fn authed(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let response = server
        .client
        .post(server.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    status_json(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_a_live_run_through_a_pause_with_a_token() {
    let (_dir, path) = temp_store();
    let mut opts = Options::default();
    opts.config.auth_token = Some(TOKEN.to_owned());
    let server = Server::start(path, opts).await;
    let (status, created) = authed(
        &server,
        "/v1/runs",
        copy_envelope(&outputs(), approval("fail")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let run: RunId = created["runId"].as_str().unwrap().parse().unwrap();
    let mut relay = Relay::start(&server.base, None, false).await;
    let url = relay.events_url(run);

    let verify = {
        let url = url.clone();
        tokio::spawn(async move {
            let args = [
                "verify",
                "--url",
                &url,
                "--token-env",
                "VERIFY_TOKEN",
                "--timeout",
                "50s",
            ];
            flexrun(&args, &[("VERIFY_TOKEN", TOKEN)], None).await
        })
    };
    relay.passed("hitl_request").await;
    let detail: Value = server
        .client
        .get(server.url(&format!("/v1/runs/{run}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["state"], "paused", "verify is following a live run");
    let request = detail["pendingHitl"][0]["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = authed(
        &server,
        &format!("/v1/runs/{run}/hitl/{request}"),
        json!({"decision": "approve"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = verify.await.unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with(&format!("run {run}: ")), "{stdout}");
    assert!(
        stdout.ends_with(" events, conforms (ended completed)\n"),
        "{stdout}"
    );
    assert_eq!(relay.last_event_ids(), [None], "one connection was enough");

    let out = flexrun(&["verify", "--url", &url, "--timeout", "20s"], &[], None).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    let out = flexrun(
        &["verify", "--url", &url, "--token-env", "VERIFY_TOKEN"],
        &[("VERIFY_TOKEN", "wrong-token")],
        None,
    )
    .await;
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        !all.contains("wrong-token") && !all.contains(TOKEN),
        "the token is never printed: {all}"
    );
    let out = flexrun(
        &[
            "verify",
            "--url",
            &url,
            "--token-env",
            "NO_SUCH_VAR_FOR_VERIFY",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("NO_SUCH_VAR_FOR_VERIFY: the variable is not set"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reconnects_with_last_event_id_when_the_connection_drops() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server.submit(copy_envelope(&outputs(), qa_gate())).await;
    let mut relay = Relay::start(&server.base, Some(3), false).await;
    let url = relay.events_url(run);
    let out = flexrun(&["verify", "--url", &url, "--timeout", "50s"], &[], None).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("run {run}: 16 events, conforms (ended completed)\n")
    );
    assert!(stderr.contains("reconnecting after seq 3"), "{stderr}");
    let ids: Vec<Option<String>> = ["3", "6", "9", "12", "15"]
        .map(|s| Some(s.to_owned()))
        .into();
    assert_eq!(relay.last_event_ids(), [vec![None], ids].concat());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_repeats_of_a_stream_that_forgets_its_position() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server.submit(copy_envelope(&outputs(), qa_gate())).await;
    server.events(run, None).await.rest().await;
    let relay = Relay::start(&server.base, Some(4), true).await;
    let url = relay.events_url(run);
    let args = [
        "verify",
        "--url",
        &url,
        "--max-reconnects",
        "1",
        "--timeout",
        "50s",
    ];
    let out = flexrun(&args, &[], None).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "seq 1 (plan_requested): seq-gap: seq 1 again: a repeat of the event at index 0"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("and 2 reconnects in a row brought no new event"),
        "{stderr}"
    );
    let report = conformance::check(&server.stored(run));
    assert!(
        report.is_ok(),
        "the run itself is fine, the relay is not: {report}"
    );
    assert!(report.of(Rule::SeqGap).next().is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_gives_up_on_a_run_that_waits_for_a_human() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(&outputs(), approval("fail")))
        .await;
    server.events(run, None).await.until("hitl_request").await;
    let url = server.url(&format!("/v1/runs/{run}/events"));
    let out = flexrun(&["verify", "--url", &url, "--timeout", "1s"], &[], None).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.ends_with(" events, conforms (no complete yet)\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("timed out after 1s before `complete`"),
        "{stderr}"
    );
    server.stop().await;
}
