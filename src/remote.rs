//! Terminal clients of a running `flexrun serve`: `flexrun watch`, `flexrun runs` and
//! `flexrun answer` (docs/API.md, "From the terminal").

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use flexrun::RunId;
use flexrun::conformance::wire::{Format, Stream};
use flexrun::fsm::table::{EDGES, To};
use flexrun::fsm::{EventBody, FollowUp, RunEvent, RunOutcome, RunState};
use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};

/// Exit code of `watch` for a run that completed.
const COMPLETED: u8 = 0;
/// Exit code of `watch` for a run that failed or was cancelled.
const NOT_COMPLETED: u8 = 1;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Name of an environment variable holding the server's bearer token (never printed).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
}

/// A client of one server.
struct Remote {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Remote {
    fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let token = match &args.token_env {
            None => None,
            Some(var) => {
                let token = std::env::var(var)
                    .with_context(|| format!("--token-env {var}: the variable is not set"))?;
                if token.trim().is_empty() {
                    bail!("--token-env {var}: the variable is empty");
                }
                Some(token)
            }
        };
        let client = flexrun::http_client::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base: args.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.header(AUTHORIZATION, format!("Bearer {token}")),
            None => req,
        }
    }

    /// Sends `req`; a non-2xx answer is an error carrying the API's message.
    async fn json(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let response = self
            .authorized(req)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {}", crate::verify::error_chain(&e)))?;
        if !response.status().is_success() {
            bail!("{}", crate::verify::refused(what, response).await);
        }
        response
            .json()
            .await
            .with_context(|| format!("{what}: the answer is not JSON"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        self.json(self.client.get(&url), &format!("GET {url}"))
            .await
    }
}

/// `flexrun watch` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The run to follow.
    run: RunId,
    #[command(flatten)]
    server: ServerArgs,
    /// Reconnects in a row that may bring no new event before giving up.
    #[arg(long, default_value_t = 10)]
    max_reconnects: u32,
}

/// Progress of a watched run, kept from its events.
#[derive(Debug, Default)]
struct Progress {
    /// Nodes of the current plan.
    nodes: usize,
    done: BTreeSet<String>,
    /// The state the last event led to, from the transition table.
    state: Option<RunState>,
}

/// The state an event leads to: the target of the table's rows that emit it, when they
/// agree; for the two events whose rows differ, the event's payload says which row it was.
/// `None` for events that leave the state as it is (node events).
fn target_of(event: &RunEvent) -> Option<RunState> {
    let kind = event.kind();
    let mut targets = EDGES
        .iter()
        .filter(|e| e.event == kind)
        .filter_map(|e| match e.to {
            To::State(state) => Some(state),
            To::Same => None,
        });
    let first = targets.next()?;
    if targets.all(|t| t == first) {
        return Some(first);
    }
    match &event.body {
        EventBody::PolicyTriggered { action, .. } if action == "pause" => Some(RunState::Paused),
        EventBody::PolicyTriggered { .. } => Some(RunState::Replanning),
        EventBody::HitlResolved { next, .. } => Some(match next {
            FollowUp::Continue => RunState::Executing,
            FollowUp::Replan => RunState::Replanning,
            FollowUp::Fail => RunState::Done,
        }),
        _ => Some(first),
    }
}

impl Progress {
    fn observe(&mut self, event: &RunEvent) {
        if let Some(state) = target_of(event) {
            self.state = Some(state);
        }
        match &event.body {
            EventBody::PlanAccepted { nodes, .. } => self.nodes = *nodes,
            EventBody::PlanUpdated { diff, .. } => {
                self.nodes =
                    (self.nodes + diff.added_nodes.len()).saturating_sub(diff.removed_nodes.len());
                for id in &diff.removed_nodes {
                    self.done.remove(id);
                }
            }
            EventBody::NodeComplete { .. } => {
                self.done.insert(event.node_id.clone().unwrap_or_default());
            }
            _ => {}
        }
    }
}

/// Follows a run on a server from its first event, one line per event with the run's
/// progress (nodes done of the current plan, the state the event leads to); the exit code
/// says how it ended (0 completed, 1 failed or cancelled).
pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.server)?;
    let run = args.run;
    let detail = remote.get(&format!("/v1/runs/{run}")).await?;
    println!(
        "run {run}: {}",
        detail["objective"].as_str().unwrap_or_default()
    );
    let url = remote.url(&format!("/v1/runs/{run}/events"));
    let mut stream = Stream::new(Format::Sse);
    let mut progress = Progress::default();
    let mut outcome = None;
    let mut on_event = |event: &RunEvent| {
        progress.observe(event);
        if let EventBody::Complete { status, .. } = &event.body {
            outcome = Some(*status);
        }
        println!(
            "#{:<4} [{}/{} nodes] {:<10} {:<15} {}",
            event.seq,
            progress.done.len(),
            progress.nodes,
            progress
                .state
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            event.kind().to_string(),
            flexrun::api::summary(event)
        );
        let _ = std::io::stdout().flush();
    };
    crate::verify::follow(
        &remote.client,
        &url,
        remote.token.as_deref(),
        args.max_reconnects,
        &mut stream,
        &mut on_event,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    match outcome {
        Some(RunOutcome::Completed) => Ok(COMPLETED),
        Some(status) => {
            eprintln!("run {run} ended {status:?}");
            Ok(NOT_COMPLETED)
        }
        // A 204 on the first connect cannot happen (seq 0 is before every event), so the
        // stream always shows `complete` before it ends.
        None => bail!("the stream of run {run} ended before `complete`"),
    }
}

/// `flexrun runs` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RunsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only runs with this status (active, completed, failed, cancelled).
    #[arg(long)]
    status: Option<String>,
    /// Runs per page.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Start after this run (the cursor the previous page printed).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists one page of the server's runs, newest first.
pub(crate) async fn runs(args: RunsArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.server)?;
    let mut path = format!("/v1/runs?limit={}", args.limit);
    if let Some(status) = &args.status {
        path.push_str(&format!("&status={status}"));
    }
    if let Some(cursor) = &args.cursor {
        path.push_str(&format!("&cursor={cursor}"));
    }
    let list = remote.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let runs = list["runs"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<36}  {:<9}  {:<11}  {:>4}  {:<24}  objective",
        "run", "status", "state", "seq", "updated"
    );
    for r in &runs {
        println!(
            "{:<36}  {:<9}  {:<11}  {:>4}  {:<24}  {}",
            r["runId"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["lastSeq"],
            r["updatedAt"].as_str().unwrap_or_default(),
            r["objective"].as_str().unwrap_or_default(),
        );
    }
    if let Some(cursor) = list["nextCursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
    Ok(())
}

/// How a HITL request is answered.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum DecisionArg {
    /// Go.
    Approve,
    /// No go.
    Reject,
    /// One of the request's options (`--option`).
    Option,
    /// Free text (`--text`).
    Freeform,
}

/// `flexrun answer` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AnswerArgs {
    /// The run.
    run: RunId,
    /// The HITL request id (`requestId` of its `hitl_request` event).
    request: String,
    /// The decision.
    #[arg(value_enum)]
    decision: DecisionArg,
    /// The chosen option, for `option`.
    #[arg(long, required_if_eq("decision", "option"))]
    option: Option<String>,
    /// Free text (required for `freeform`, a comment otherwise).
    #[arg(long, required_if_eq("decision", "freeform"))]
    text: Option<String>,
    /// Who answers (recorded with the answer).
    #[arg(long)]
    responder: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Answers a HITL request and prints where the run stands after it.
pub(crate) async fn answer(args: AnswerArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.server)?;
    let decision = match args.decision {
        DecisionArg::Approve => "approve",
        DecisionArg::Reject => "reject",
        DecisionArg::Option => "option",
        DecisionArg::Freeform => "freeform",
    };
    let mut body = json!({"decision": decision});
    if let Some(id) = args.responder {
        body["responder"] = json!({"id": id});
    }
    if let Some(option) = args.option {
        body["optionId"] = json!(option);
    }
    if let Some(text) = args.text {
        body["text"] = json!(text);
    }
    let url = remote.url(&format!("/v1/runs/{}/hitl/{}", args.run, args.request));
    let ack = remote
        .json(remote.client.post(&url).json(&body), &format!("POST {url}"))
        .await?;
    println!(
        "run {}: {} ({}), request {} answered {decision}",
        args.run,
        ack["status"].as_str().unwrap_or_default(),
        ack["state"].as_str().unwrap_or_default(),
        args.request
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_the_plan_the_nodes_and_the_state() {
        let mut p = Progress::default();
        let run = RunId::new();
        let ev = |seq, node: Option<&str>, body| RunEvent {
            seq,
            run_id: run,
            timestamp: flexrun::Timestamp(seq),
            plan_version: 1,
            node_id: node.map(str::to_owned),
            body,
        };
        p.observe(&ev(
            1,
            None,
            EventBody::PlanAccepted {
                version: 1,
                nodes: 3,
                edges: 2,
                warnings: Vec::new(),
            },
        ));
        assert_eq!(p.state, Some(RunState::Executing));
        for seq in [2, 3] {
            p.observe(&ev(
                seq,
                Some("a"),
                EventBody::NodeComplete {
                    attempt: 1,
                    output: serde_json::Map::new(),
                    duration_us: 1,
                    spend: None,
                },
            ));
        }
        assert_eq!((p.done.len(), p.nodes), (1, 3), "a node counts once");
        assert_eq!(
            p.state,
            Some(RunState::Executing),
            "node events keep the state"
        );
        let resolved = |next| EventBody::HitlResolved {
            request_id: "r".into(),
            decision: flexrun::fsm::HitlDecision::Approve,
            text: None,
            responder: None,
            next,
        };
        p.observe(&ev(4, None, resolved(FollowUp::Replan)));
        assert_eq!(p.state, Some(RunState::Replanning));
        p.observe(&ev(5, None, resolved(FollowUp::Continue)));
        assert_eq!(p.state, Some(RunState::Executing));
    }
}
