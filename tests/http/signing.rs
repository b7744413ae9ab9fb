//! Signed webhook calls over real sockets: a receiver on 127.0.0.1 checks every call with
//! `flexrun::webhook::verify` and answers 401 to a call it cannot verify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flexrun::RunId;
use flexrun::executors::http::HttpExecutor;
use flexrun::webhook::{self, WebhookHeaders, WebhookSecret};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::support::*;

/// The Standard Webhooks test vector's secret, and a second one.
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXdlYmhvb2stc2VjcmV0LWZvci10ZXN0cw==";

fn secret(text: &str) -> WebhookSecret {
    WebhookSecret::parse(text).unwrap()
}

/// One call as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    verdict: Result<(), webhook::VerifyError>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Verifies the call again, with another secret, at the time it was received.
    fn verifies_with(&self, secret: &WebhookSecret) -> bool {
        let headers = WebhookHeaders::from_lookup(|n| self.headers.get(n)?.to_str().ok()).unwrap();
        webhook::verify(
            secret,
            &headers,
            &self.body,
            SystemTime::now(),
            webhook::DEFAULT_TOLERANCE,
        )
        .is_ok()
    }
}

#[derive(Clone)]
struct ReceiverState {
    secret: WebhookSecret,
    /// Added to the receiver's clock: a call checked ten minutes late is a replay.
    clock_skew: Duration,
    /// Statuses to answer verified calls with before answering 200.
    refusals: Arc<Mutex<Vec<u16>>>,
    seen: mpsc::UnboundedSender<Seen>,
}

/// A webhook that verifies every call before it does anything.
struct Receiver {
    url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    stop: Arc<Notify>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

async fn receive(State(st): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let verdict = WebhookHeaders::from_lookup(|n| headers.get(n)?.to_str().ok()).and_then(|h| {
        webhook::verify(
            &st.secret,
            &h,
            &body,
            SystemTime::now() + st.clock_skew,
            webhook::DEFAULT_TOLERANCE,
        )
    });
    let _ = st.seen.send(Seen {
        headers,
        body: body.clone(),
        verdict: verdict.clone(),
    });
    if let Err(e) = verdict {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response();
    }
    let refusal = {
        let mut refusals = st.refusals.lock().unwrap();
        (!refusals.is_empty()).then(|| refusals.remove(0))
    };
    if let Some(status) = refusal {
        return (StatusCode::from_u16(status).unwrap(), "busy").into_response();
    }
    let call: Value = serde_json::from_slice(&body).unwrap();
    axum::Json(json!({"output": {"copyVariants": [
        format!("{} attempt {}", call["nodeId"].as_str().unwrap(), call["attempt"])
    ]}}))
    .into_response()
}

async fn serve_on_loopback(app: axum::Router) -> (String, Arc<Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.notified().await })
            .await;
    });
    (base, stop)
}

impl Receiver {
    async fn start(secret: WebhookSecret, clock_skew: Duration, refusals: Vec<u16>) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let state = ReceiverState {
            secret,
            clock_skew,
            refusals: Arc::new(Mutex::new(refusals)),
            seen: tx,
        };
        let app = axum::Router::new()
            .route("/exec", axum::routing::post(receive))
            .with_state(state);
        let (base, stop) = serve_on_loopback(app).await;
        Self {
            url: format!("{base}/exec"),
            seen,
            stop,
        }
    }

    /// Every call received so far (the run has ended, so no more come).
    fn calls(&mut self) -> Vec<Seen> {
        let mut calls = Vec::new();
        while let Ok(call) = self.seen.try_recv() {
            calls.push(call);
        }
        calls
    }
}

/// A proxy between the engine and a webhook that changes one byte of every body.
struct TamperingProxy {
    url: String,
    stop: Arc<Notify>,
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl TamperingProxy {
    async fn start(target: String) -> Self {
        let forward = move |headers: HeaderMap, body: Bytes| {
            let target = target.clone();
            async move {
                let mut body = body.to_vec();
                let at = body
                    .windows(6)
                    .position(|w| w == b"bakery")
                    .expect("the objective is in the body");
                body[at] = b'B';
                let mut request = client().post(&target).body(body);
                for (name, value) in &headers {
                    if name.as_str().starts_with("webhook-")
                        || name == "content-type"
                        || name == "idempotency-key"
                    {
                        request = request.header(name, value);
                    }
                }
                let answer = request.send().await.unwrap();
                let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
                (status, answer.bytes().await.unwrap()).into_response()
            }
        };
        let app = axum::Router::new().route("/exec", axum::routing::post(forward));
        let (base, stop) = serve_on_loopback(app).await;
        Self {
            url: format!("{base}/exec"),
            stop,
        }
    }
}

fn capability(id: &str, url: &str, secret_env: Option<&str>, max_attempts: u32) -> Value {
    let mut executor = json!({"type": "http", "url": url});
    if let Some(env) = secret_env {
        executor["signingSecretEnv"] = json!(env);
    }
    json!({"capabilityId": id, "version": "1.0.0", "displayName": "Signed writer",
        "summary": "writes copy via a signed webhook", "kind": "execution", "agentType": "ai",
        "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"], "cost": 0.1,
        "timeoutMs": 10_000, "maxAttempts": max_attempts, "executor": executor})
}

/// An `http` executor signing with `server_wide` (when given) and resolving
/// `signingSecretEnv` names in `env` instead of the process environment.
fn options(server_wide: Option<&str>, env: &[(&str, &str)]) -> Options {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut http = HttpExecutor::builder().secret_lookup(move |name| env.get(name).cloned());
    if let Some(s) = server_wide {
        http = http.signing_secrets([secret(s)]);
    }
    Options {
        http,
        ..Options::default()
    }
}

/// Registers the capability, runs the copy envelope to its end, and returns the frames of
/// the webhook node and the `complete` frame.
async fn run_to_end(server: &Server, capability: Value) -> (RunId, Vec<Frame>) {
    let (status, body) = server.post("/v1/capabilities", capability).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = server
        .submit(copy_envelope(&["copyVariants"], only_webhook_writer()))
        .await;
    let frames = server.events(run, None).await.rest().await;
    assert_frames_are_stored(&frames, &server.stored(run));
    let frames = frames
        .into_iter()
        .filter(|f| f.label().ends_with("writer-signed") || f.label() == "complete")
        .collect();
    (run, frames)
}

/// The ways a secret could leak: its serialized form and its base64 key.
fn leaks(text: &str, secret: &str) -> bool {
    text.contains(secret) || text.contains(secret.trim_start_matches("whsec_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_run_completes_and_the_secret_is_never_shown_or_stored() {
    let (dir, path) = temp_store();
    let mut receiver = Receiver::start(secret(SECRET_B), Duration::ZERO, vec![503]).await;
    let server = Server::start(path.clone(), options(None, &[("HOOK_SECRET_B", SECRET_B)])).await;
    let (run, frames) = run_to_end(
        &server,
        capability("writer.signed", &receiver.url, Some("HOOK_SECRET_B"), 2),
    )
    .await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-signed",
            "node_error:writer-signed",
            "node_start:writer-signed",
            "node_complete:writer-signed",
            "complete"
        ]
    );
    assert_eq!(frames[4].payload()["status"], "completed");

    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "a 503 and its retry");
    let key = format!("{run}/writer-signed");
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call.verdict, Ok(()), "call {i} verifies");
        assert_eq!(call.header("webhook-id"), key, "call {i}");
        assert_eq!(call.header("idempotency-key"), key, "call {i}");
        assert_eq!(call.json()["idempotencyKey"], key);
        assert_eq!(call.json()["attempt"], i + 1);
        let sent: u64 = call.header("webhook-timestamp").parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(sent <= now && now - sent < 60, "sent {sent}, now {now}");
        assert!(call.header("webhook-signature").starts_with("v1,"));
    }

    let (status, listed) = server.get("/v1/capabilities").await;
    assert_eq!(status, StatusCode::OK);
    let listed = listed.to_string();
    assert!(
        listed.contains("\"signingSecretEnv\":\"HOOK_SECRET_B\""),
        "{listed}"
    );
    let (_, one) = server.get("/v1/capabilities/writer.signed").await;
    let (_, run_view) = server.get(&format!("/v1/runs/{run}")).await;
    let events = serde_json::to_string(&server.stored(run)).unwrap();
    assert!(events.contains(&key), "the node_start events carry the key");
    for (what, text) in [
        ("the capability list", listed),
        ("the capability", one.to_string()),
        ("the run", run_view.to_string()),
        ("the stored events", events),
    ] {
        assert!(!leaks(&text, SECRET_B), "{what} shows the secret: {text}");
    }
    server.stop().await;

    let file = std::fs::read(&path).unwrap();
    let file = String::from_utf8_lossy(&file);
    assert!(file.contains("HOOK_SECRET_B"), "the catalog is in the file");
    assert!(!leaks(&file, SECRET_B), "the store file holds the secret");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_body_is_refused_and_the_node_fails_with_the_webhooks_401() {
    let (_dir, path) = temp_store();
    let mut receiver = Receiver::start(secret(SECRET_A), Duration::ZERO, vec![]).await;
    let proxy = TamperingProxy::start(receiver.url.clone()).await;
    let server = Server::start(path, options(Some(SECRET_A), &[])).await;
    let (_, frames) = run_to_end(&server, capability("writer.signed", &proxy.url, None, 2)).await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-signed",
            "node_error:writer-signed",
            "complete"
        ]
    );
    let err = frames[1].payload();
    assert_eq!(
        (&err["error"]["code"], &err["willRetry"]),
        (&json!("HTTP_STATUS"), &json!(false))
    );
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("401") && message.contains("no `v1` signature"),
        "{message}"
    );
    assert_eq!(frames[2].payload()["status"], "failed");
    server.stop().await;

    let calls = receiver.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].verdict,
        Err(webhook::VerifyError::NoMatchingSignature)
    );
    let mut body = calls[0].body.to_vec();
    let at = body.windows(6).position(|w| w == b"Bakery").unwrap();
    body[at] = b'b';
    let restored = Seen {
        body: body.into(),
        ..calls[0].clone()
    };
    assert!(
        restored.verifies_with(&secret(SECRET_A)),
        "the call verified before the proxy changed one byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_checked_ten_minutes_late_is_refused_for_its_timestamp() {
    let (_dir, path) = temp_store();
    let mut receiver = Receiver::start(secret(SECRET_A), Duration::from_secs(600), vec![]).await;
    let server = Server::start(path, options(Some(SECRET_A), &[])).await;
    let (_, frames) =
        run_to_end(&server, capability("writer.signed", &receiver.url, None, 1)).await;
    assert_eq!(frames[1].payload()["error"]["code"], "HTTP_STATUS");
    let message = frames[1].payload()["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("401") && message.contains("old"),
        "{message}"
    );
    assert_eq!(frames.last().unwrap().payload()["status"], "failed");
    server.stop().await;
    let calls = receiver.calls();
    assert!(
        matches!(calls[0].verdict, Err(webhook::VerifyError::TooOld { age_secs, tolerance_secs: 300 }) if (600..660).contains(&age_secs)),
        "{:?}",
        calls[0].verdict
    );
    assert!(
        calls[0].verifies_with(&secret(SECRET_A)),
        "on time it verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_secret_overrides_the_server_wide_one() {
    let (_dir, path) = temp_store();
    let mut own = Receiver::start(secret(SECRET_B), Duration::ZERO, vec![]).await;
    let server = Server::start(
        path,
        options(Some(SECRET_A), &[("HOOK_SECRET_B", SECRET_B)]),
    )
    .await;
    let (_, frames) = run_to_end(
        &server,
        capability("writer.signed", &own.url, Some("HOOK_SECRET_B"), 1),
    )
    .await;
    assert_eq!(frames.last().unwrap().payload()["status"], "completed");
    let calls = own.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].verdict, Ok(()));
    assert_eq!(
        calls[0].header("webhook-signature").split(' ').count(),
        1,
        "signed with the capability's secret only"
    );
    assert!(!calls[0].verifies_with(&secret(SECRET_A)));

    let mut shared = Receiver::start(secret(SECRET_A), Duration::ZERO, vec![]).await;
    let (_, frames) = run_to_end(&server, capability("writer.signed", &shared.url, None, 1)).await;
    assert_eq!(
        frames.last().unwrap().payload()["status"],
        "completed",
        "without its own secret the capability is signed with the server-wide one"
    );
    assert!(shared.calls()[0].verifies_with(&secret(SECRET_A)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_secrets_sign_each_call_once_per_secret() {
    let (_dir, path) = temp_store();
    let both = format!("{SECRET_B} {SECRET_A}");
    let mut old = Receiver::start(secret(SECRET_A), Duration::ZERO, vec![]).await;
    let server = Server::start(path, options(None, &[("HOOK_SECRETS", &both)])).await;
    let (_, frames) = run_to_end(
        &server,
        capability("writer.signed", &old.url, Some("HOOK_SECRETS"), 1),
    )
    .await;
    assert_eq!(frames.last().unwrap().payload()["status"], "completed");
    server.stop().await;
    let call = &old.calls()[0];
    assert_eq!(
        call.verdict,
        Ok(()),
        "a receiver still on the old secret accepts"
    );
    assert!(
        call.verifies_with(&secret(SECRET_B)),
        "and so does one on the new"
    );
    assert_eq!(call.header("webhook-signature").split(' ').count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_whose_secret_variable_is_unusable_is_refused_naming_the_field() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, options(None, &[("HOOK_SHORT", "whsec_c2hvcnQ=")])).await;
    let url = "http://127.0.0.1:9/exec";
    let cases = [
        (
            "HOOK_UNSET",
            "INVALID_CATALOG_ENTRY",
            "`HOOK_UNSET` is not set",
        ),
        ("HOOK_SHORT", "INVALID_CATALOG_ENTRY", "holds 5"),
        (SECRET_A, "INVALID_FIELD", "must not be the secret itself"),
        ("not a name", "INVALID_FIELD", "environment variable name"),
    ];
    for (env, code, says) in cases {
        let (status, body) = server
            .post(
                "/v1/capabilities",
                capability("writer.signed", url, Some(env), 1),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{env}: {body}");
        assert_eq!(body["error"]["code"], code, "{env}: {body}");
        assert_eq!(
            body["error"]["details"]["field"], "executor.signingSecretEnv",
            "{env}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{env}: {message}");
        assert!(!leaks(message, SECRET_A), "{message}");
    }
    let (status, _) = server.get("/v1/capabilities/writer.signed").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was registered");
    server.stop().await;
}

/// `flexrun serve --webhook-secret-env VAR` signs with the secret the variable holds.
#[cfg(feature = "cli")]
mod cli {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use super::*;

    const VAR: &str = "FLEXRUN_TEST_WEBHOOK_SECRET";

    /// A `flexrun serve` process on 127.0.0.1:0 and the lines of its stderr; killed on drop.
    struct Served {
        child: Child,
        lines: mpsc::UnboundedReceiver<String>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Served {
        /// Logs at every level; `HOOK_SECRET_B` is in its environment.
        fn start(secret: Option<&str>, data: &Path) -> Self {
            let mut command = Command::new(env!("CARGO_BIN_EXE_flexrun"));
            command
                .args([
                    "serve",
                    "--addr",
                    "127.0.0.1:0",
                    "--webhook-secret-env",
                    VAR,
                ])
                .arg("--data")
                .arg(data)
                .env("FLEXRUN_LOG", "trace")
                .env("HOOK_SECRET_B", SECRET_B)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            match secret {
                Some(s) => command.env(VAR, s),
                None => command.env_remove(VAR),
            };
            let mut child = command.spawn().unwrap();
            let stderr = child.stderr.take().unwrap();
            let (tx, lines) = mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            Self { child, lines }
        }

        /// The next stderr line, or `None` once the process closed it.
        async fn line(&mut self) -> Option<String> {
            tokio::time::timeout(GUARD, self.lines.recv())
                .await
                .expect("the server writes or exits within the guard")
        }

        /// Everything it writes until it exits, and whether it exited successfully.
        async fn exit(mut self) -> (String, bool) {
            let mut text = String::new();
            while let Some(line) = self.line().await {
                text.push_str(&line);
                text.push('\n');
            }
            (text, self.child.wait().unwrap().success())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_refuses_to_start_without_a_usable_secret_in_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let (text, ok) = Served::start(None, dir.path()).exit().await;
        assert!(!ok);
        assert!(text.contains(&format!("${VAR}")), "{text}");
        let (text, ok) = Served::start(Some("whsec_c2hvcnQ="), dir.path())
            .exit()
            .await;
        assert!(!ok);
        assert!(text.contains("holds 5"), "{text}");
        assert!(!text.contains("c2hvcnQ"), "the value is not shown: {text}");
    }

    /// Runs the copy envelope against the capability on a served engine; its final status.
    async fn run_on(base: &str, capability: Value) -> String {
        let http = client();
        let registered = http
            .post(format!("{base}/v1/capabilities"))
            .json(&capability)
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), StatusCode::CREATED);
        let created = http
            .post(format!("{base}/v1/runs"))
            .json(&copy_envelope(&["copyVariants"], only_webhook_writer()))
            .send()
            .await
            .unwrap();
        let (status, created) = status_json(created).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let events = format!("{base}{}", created["eventsUrl"].as_str().unwrap());
        let frames = SseReader::open(http.get(events)).await.rest().await;
        frames.last().unwrap().payload()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_signs_with_the_secrets_of_its_environment_and_never_logs_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut shared = Receiver::start(secret(SECRET_A), Duration::ZERO, vec![]).await;
        let mut own = Receiver::start(secret(SECRET_B), Duration::ZERO, vec![]).await;
        let mut served = Served::start(Some(SECRET_A), dir.path());
        let base = loop {
            let line = served.line().await.expect("the server starts");
            if let Some(rest) = line.strip_prefix("flexrun serving ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let status = run_on(&base, capability("writer.signed", &shared.url, None, 1)).await;
        assert_eq!(status, "completed", "signed with --webhook-secret-env");
        let status = run_on(
            &base,
            capability("writer.signed", &own.url, Some("HOOK_SECRET_B"), 1),
        )
        .await;
        assert_eq!(
            status, "completed",
            "signed with the process's HOOK_SECRET_B"
        );
        for (receiver, key) in [(&mut shared, SECRET_A), (&mut own, SECRET_B)] {
            let calls = receiver.calls();
            assert_eq!(calls.len(), 1, "{key}");
            assert_eq!(calls[0].verdict, Ok(()), "{key}");
        }
        let _ = served.child.kill();
        let (logged, _) = served.exit().await;
        assert!(
            logged.contains("run event"),
            "the server logged at trace level"
        );
        assert!(logged.contains("node_complete"), "{logged}");
        for key in [SECRET_A, SECRET_B] {
            assert!(!leaks(&logged, key), "the log shows {key}");
        }
    }
}
