//! Budgets over HTTP: a spent budget pauses a run until an operator raises it (across a
//! restart), a budget policy's replan moves the rest of the plan to a cheaper capability, and
//! tokens an executor reports count towards `nodeTokens`.

use std::sync::Arc;
use std::time::Duration;

use flexrun::planner::openai::{ChatClient, OpenAiConfig, OpenAiPlanner};
use flexrun::policy::{Pricing, TokenPrice};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake::{FakeOpenAi, chat};
use crate::support::{
    Options, Reply, Server, Webhook, copy_envelope, labels, only_webhook_writer, temp_store,
};

fn tagline(policies: Value) -> Value {
    json!({
        "objective": "Taglines for a bakery",
        "inputs": {"objectiveBrief": "Fresh sourdough baked daily, for busy parents. Playful tone"},
        "outputContract": {"mode": "facets", "facets": ["copyVariants", "summary"]},
        "policies": policies,
    })
}

fn costs(frames: &[crate::support::Frame]) -> Vec<f64> {
    frames
        .iter()
        .filter(|f| f.label().starts_with("node_complete"))
        .map(|f| f.payload()["spend"]["cost"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_pauses_the_run_and_a_raised_one_completes_it_after_a_restart() {
    let (_dir, path) = temp_store();
    let server = Server::start(path.clone(), Options::default()).await;
    // brief.structurer costs 1, writer.en 2, copy.summarizer 0.5 (the demo catalog).
    let run = server
        .submit(tagline(json!({"budgets": {"cost": 2.5}})))
        .await;
    let mut sse = server.events(run, None).await;
    let before = sse.until("policy_triggered").await;
    let fired = before.last().unwrap().payload();
    assert_eq!(fired["policyId"], "budget-cost", "{fired}");
    assert_eq!(fired["action"], "pause");
    assert_eq!(
        costs(&before),
        [1.0, 2.0],
        "each attempt's cost is on its event"
    );
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["state"], "paused", "{detail}");
    assert_eq!(detail["budget"]["spent"]["cost"], 3.0);
    assert_eq!(detail["budget"]["spent"]["nodes"], 2);
    assert_eq!(detail["budget"]["limits"], json!({"cost": 2.5}));
    assert_eq!(detail["budget"]["remaining"], json!({"cost": 0.0}));
    let summarizer_started = labels(&before)
        .iter()
        .any(|l| l == "node_start:copy-summarizer");
    assert!(!summarizer_started, "nothing is dispatched past the budget");

    // The spend survives a restart: it is recomputed from the stored events.
    server.engine.shutdown().await;
    server.stop().await;
    let server = Server::start(path, Options::default()).await;
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["state"], "paused", "{detail}");
    assert_eq!(detail["budget"]["spent"]["cost"], 3.0);

    // A bad raise names the field and changes nothing.
    for (body, field) in [
        (json!({"budgets": {"dollars": 5}}), "budgets.dollars"),
        (json!({"budgets": {"cost": 0}}), "budgets.cost"),
        (json!({"budgets": {"cost": "lots"}}), "budgets.cost"),
    ] {
        let (status, err) = server.post(&format!("/v1/runs/{run}/resume"), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    let (status, ack) = server
        .post(
            &format!("/v1/runs/{run}/resume"),
            json!({"reason": "approved more spend", "budgets": {"cost": 10}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    let last = before.last().unwrap().seq();
    let rest = server.events(run, Some(last)).await.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "run_resumed",
            "node_start:copy-summarizer",
            "node_complete:copy-summarizer",
            "complete"
        ]
    );
    assert_eq!(rest[0].payload()["budgets"], json!({"cost": 10.0}));
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["budget"]["spent"]["cost"], 3.5);
    assert_eq!(detail["budget"]["limits"], json!({"cost": 10.0}));
    let (_, _, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("flexrun_spend_cost_total 0.5"),
        "this process spent the summarizer's 0.5: {metrics}"
    );
    server.stop().await;
}

/// A draft of the demo catalog's three nodes; `writer` names the writing capability.
fn draft(writer: &str) -> String {
    json!({
        "nodes": [
            {"id": "brief", "stage": "structuring", "capabilityId": "brief.structurer",
             "kind": "structuring", "inputFacets": ["objectiveBrief"],
             "outputFacets": ["writerBrief"], "instructions": [], "rationale": "structure"},
            {"id": "write", "stage": "generation", "capabilityId": writer, "kind": "execution",
             "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"],
             "instructions": [], "rationale": "write"},
            {"id": "sum", "stage": "summary", "capabilityId": "copy.summarizer",
             "kind": "transformation", "inputFacets": ["copyVariants"],
             "outputFacets": ["summary"], "instructions": [], "rationale": "summarise"}
        ],
        "edges": [{"from": "brief", "to": "write"}, {"from": "write", "to": "sum"}],
        "systemInstructions": "be concise", "rationale": "structure, write, summarise"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_policy_replans_onto_a_cheaper_capability() {
    let cheaper = json!({"baseVersion": 1, "rationale": "writer.en fits the budget", "operations": [
        {"op": "replaceNode", "node": {"id": "write", "stage": "generation",
         "capabilityId": "writer.en", "kind": "execution", "inputFacets": ["writerBrief"],
         "outputFacets": ["copyVariants"], "instructions": [], "rationale": "cheaper"}}]});
    let fake = FakeOpenAi::start([chat(&draft("writer.formal")), chat(&cheaper.to_string())]).await;
    let mut config = OpenAiConfig::new(&fake.base_url, "fake-model");
    config.timeout = Duration::from_secs(10);
    config.max_attempts = 1;
    config.api_key_env = "FLEXRUN_TEST_KEY_THAT_IS_NOT_SET".into();
    let client = ChatClient::with_api_key(config, Some("sk-budget".to_owned())).unwrap();
    let (_dir, path) = temp_store();
    let opts = Options {
        planner: Some(Arc::new(OpenAiPlanner::with_client(client))),
        // 120 prompt + 45 completion tokens per answer: 0.12 + 0.09 = 0.21 per call.
        pricing: Pricing(
            [(
                "fake-model".to_owned(),
                TokenPrice {
                    prompt_per_1k: 1.0,
                    completion_per_1k: 2.0,
                },
            )]
            .into(),
        ),
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    // writer.formal (3) would spend 0.21 + 1 + 3 + 0.5 > 4; at a quarter of the budget the
    // policy asks for a cheaper plan.
    let run = server
        .submit(tagline(json!({
            "budgets": {"cost": 4},
            "runtime": [{"id": "thrift", "trigger": {"kind": "onBudget", "resource": "cost",
                         "threshold": {"fraction": 0.25}},
                         "action": {"type": "replan", "rationale": "spend less"}}]
        })))
        .await;
    let frames = server.events(run, None).await.rest().await;
    let labels = labels(&frames);
    assert_eq!(
        labels,
        [
            "plan_requested",
            "plan_generated",
            "plan_accepted",
            "node_start:brief",
            "node_complete:brief",
            "policy_triggered",
            "plan_requested",
            "plan_generated",
            "plan_updated",
            "node_start:write",
            "node_complete:write",
            "node_start:sum",
            "node_complete:sum",
            "complete"
        ]
    );
    let generated: Vec<&Value> = frames
        .iter()
        .filter(|f| f.label() == "plan_generated")
        .map(|f| f.payload())
        .collect();
    for g in &generated {
        assert_eq!(g["model"], "fake-model", "{g}");
        assert!((g["cost"].as_f64().unwrap() - 0.21).abs() < 1e-9, "{g}");
    }
    let start = frames
        .iter()
        .find(|f| f.label() == "node_start:write")
        .unwrap();
    assert_eq!(start.payload()["capabilityId"], "writer.en");
    // The replan request told the model what is left.
    let requests = fake.received();
    assert_eq!(requests.len(), 2);
    let context = requests[1].all_content();
    let doc_start = context
        .find("\"budget\"")
        .expect("the replan carries the budget");
    let remaining = &context[doc_start..];
    assert!(
        remaining.contains("\"remaining\":{\"cost\":2.79"),
        "{remaining}"
    );
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    let spent = detail["budget"]["spent"]["cost"].as_f64().unwrap();
    assert!((spent - 3.92).abs() < 1e-9, "{detail}");
    assert_eq!(detail["budget"]["spent"]["plannerTokens"], 330);
    assert_eq!(detail["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_a_webhook_reports_count_towards_node_token_budgets_and_cost() {
    let mut hook = Webhook::start([Reply::Status(
        200,
        json!({"output": {"copyVariants": ["a", "b"]},
               "usage": {"promptTokens": 90, "completionTokens": 30}}),
    )])
    .await;
    let (_dir, path) = temp_store();
    let opts = Options {
        // Any model: 1 cost unit per 1000 tokens either way.
        pricing: Pricing(
            [(
                "*".to_owned(),
                TokenPrice {
                    prompt_per_1k: 1.0,
                    completion_per_1k: 1.0,
                },
            )]
            .into(),
        ),
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let capability = hook.capability("writer.hook", 10_000, 1);
    let capability_cost = capability["cost"].as_f64().unwrap_or(0.0);
    let (status, body) = server.post("/v1/capabilities", capability).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut policies = only_webhook_writer();
    policies["budgets"] = json!({"nodeTokens": 100});
    let run = server
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await;
    let mut sse = server.events(run, None).await;
    let before = sse.until("policy_triggered").await;
    hook.next_call().await;
    let done = before
        .iter()
        .find(|f| f.label() == "node_complete:writer-hook")
        .expect("the webhook node completed");
    let spend = &done.payload()["spend"];
    assert_eq!(
        spend["usage"],
        json!({"promptTokens": 90, "completionTokens": 30})
    );
    // The capability's cost plus 120 tokens at 1 per 1000.
    let cost = spend["cost"].as_f64().unwrap();
    assert!((cost - (capability_cost + 0.12)).abs() < 1e-9, "{spend}");
    assert_eq!(
        before.last().unwrap().payload()["policyId"],
        "budget-nodetokens"
    );
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["budget"]["spent"]["nodeTokens"], 120, "{detail}");
    assert_eq!(detail["state"], "paused");
    let (_, _, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("flexrun_node_tokens_total 120"),
        "{metrics}"
    );
    let (status, _) = server
        .post(
            &format!("/v1/runs/{run}/resume"),
            json!({"budgets": {"nodeTokens": 1000}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rest = server
        .events(run, Some(before.last().unwrap().seq()))
        .await
        .rest()
        .await;
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_time_budget_fires_while_a_node_runs_and_a_node_budget_at_its_dispatch() {
    let release = Arc::new(tokio::sync::Notify::new());
    let mut hook = Webhook::start([Reply::After(release.clone())]).await;
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let (status, body) = server
        .post(
            "/v1/capabilities",
            hook.capability("writer.hook", 30_000, 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut policies = only_webhook_writer();
    // 150 ms of execution, and three node attempts.
    policies["budgets"] = json!({"wallTimeMs": 150, "nodes": 3});
    let run = server
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await;
    let mut sse = server.events(run, None).await;
    hook.next_call().await;
    // Nothing else happens while the webhook holds its answer: only the timer can fire.
    let fired = sse.until("policy_triggered").await;
    let payload = fired.last().unwrap().payload();
    assert_eq!(payload["policyId"], "budget-walltimems", "{payload}");
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert!(
        detail["budget"]["spent"]["wallTimeMs"].as_u64().unwrap() >= 150,
        "{detail}"
    );
    assert_eq!(
        detail["budget"]["spent"]["nodes"], 2,
        "brief and the writer"
    );
    release.notify_one();
    let (status, _) = server
        .post(
            &format!("/v1/runs/{run}/resume"),
            json!({"budgets": {"wallTimeMs": 600000}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The summarizer is the third attempt: dispatching it spends the nodes budget.
    let rest = sse.until("policy_triggered").await;
    assert_eq!(
        rest.last().unwrap().payload()["policyId"],
        "budget-nodes",
        "{:?}",
        labels(&rest)
    );
    server.stop().await;
}
