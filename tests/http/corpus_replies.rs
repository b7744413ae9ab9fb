//! The reply corpus over HTTP: a server whose planner is the OpenAI-compatible one, talking
//! to a wire-level fake model that answers with each corpus reply, then the right one.

use std::sync::Arc;
use std::time::Duration;

use flexrun::planner::openai::{ChatClient, DIAGNOSTICS_LEAD, OpenAiConfig, OpenAiPlanner};
use serde_json::Value;

use crate::corpus::{self, CASES, Case, DRAFT};
use crate::fake::{FakeOpenAi, Received, chat};
use crate::support::{Options, Server, assert_frames_are_stored, temp_store};

fn model_planner(fake: &FakeOpenAi) -> Arc<OpenAiPlanner> {
    let mut config = OpenAiConfig::new(&fake.base_url, "fake-model");
    config.timeout = Duration::from_secs(10);
    config.max_attempts = 1;
    config.api_key_env = "FLEXRUN_TEST_KEY_THAT_IS_NOT_SET".into();
    let client = ChatClient::with_api_key(config, Some("sk-corpus".to_owned())).unwrap();
    Arc::new(OpenAiPlanner::with_client(client))
}

/// The structured diagnostics a request to the model carried.
fn sent_diagnostics(request: &Received) -> Vec<Value> {
    let content = request.all_content();
    let Some((_, rest)) = content.split_once(DIAGNOSTICS_LEAD) else {
        return Vec::new();
    };
    let list = rest.lines().nth(1).unwrap_or_default();
    serde_json::from_str(list).unwrap_or_else(|e| panic!("diagnostics are JSON ({e}): {list}"))
}

fn replies(case: &Case) -> Vec<crate::fake::Reply> {
    let mut out = Vec::new();
    if case.replan {
        out.push(chat(DRAFT));
    }
    out.push(chat(case.reply));
    if case.rejected() {
        out.push(chat(case.fixed()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_reply_from_a_model_is_diagnosed_and_the_revision_completes() {
    assert!(CASES.len() >= 25, "{} cases", CASES.len());
    for case in CASES {
        let fake = FakeOpenAi::start(replies(case)).await;
        let (_dir, path) = temp_store();
        let opts = Options {
            planner: Some(model_planner(&fake)),
            ..Options::default()
        };
        let server = Server::start(path, opts).await;
        let run = server.submit(corpus::envelope(case.replan)).await;
        let frames = server.events(run, None).await.rest().await;
        let stored = server.stored(run);
        assert_frames_are_stored(&frames, &stored);
        corpus::assert_run(case, &stored);

        let rejected = frames.iter().find(|f| f.label() == "plan_rejected");
        let streamed: Vec<String> = rejected
            .map(|f| {
                f.payload()["diagnostics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| d["severity"] == "error")
                    .map(|d| d["code"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            streamed, case.errors,
            "{}: codes on the SSE stream",
            case.name
        );

        let got = fake.received();
        assert_eq!(got.len(), replies(case).len(), "{}: model calls", case.name);
        if case.rejected() {
            let sent = sent_diagnostics(got.last().unwrap());
            let codes: Vec<&str> = sent
                .iter()
                .filter(|d| d["severity"] == "error")
                .filter_map(|d| d["code"].as_str())
                .collect();
            assert_eq!(
                codes, case.errors,
                "{}: codes in the next request",
                case.name
            );
            assert!(
                sent.iter().all(|d| d["hint"].is_string()),
                "{}: hints travel with the codes: {sent:?}",
                case.name
            );
        } else {
            assert!(sent_diagnostics(got.last().unwrap()).is_empty());
        }
        let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
        assert_eq!(detail["status"], "completed", "{}: {detail}", case.name);
        server.stop().await;
    }
}
