//! The three scenarios of the contract, over HTTP: exact SSE sequences and the persisted
//! plan versions read back through the API.

use std::sync::Arc;

use flexrun::planner::{ScriptStep, ScriptedPlanner};
use reqwest::StatusCode;
use serde_json::json;

use crate::plans::draft;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_plan_is_accepted_and_a_webhook_writes_the_copy() {
    let (_dir, path) = temp_store();
    let mut hook = Webhook::start([Reply::Copy]).await;
    let server = Server::start(path, Options::default()).await;
    let (status, body) = server
        .post(
            "/v1/capabilities",
            hook.capability("writer.hook", 10_000, 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let run = server
        .submit(copy_envelope(&["copyVariants"], only_webhook_writer()))
        .await;
    let mut sse = server.events(run, None).await;
    let frames = sse.rest().await;
    assert_eq!(
        labels(&frames),
        [
            "plan_requested",
            "plan_generated",
            "plan_accepted",
            "node_start:brief-structurer",
            "node_complete:brief-structurer",
            "node_start:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    assert_eq!(seqs(&frames), (1..=8).collect::<Vec<_>>());
    assert_frames_are_stored(&frames, &server.stored(run));
    assert_eq!(frames[7].payload()["status"], "completed");
    assert_eq!(
        frames[7].payload()["output"]["copyVariants"],
        json!(["writer-hook attempt 1"])
    );

    let call = hook.next_call().await;
    let b = &call.body;
    assert_eq!(b["runId"], run.to_string());
    assert_eq!(
        (
            b["nodeId"].as_str(),
            b["attempt"].as_u64(),
            b["capabilityId"].as_str()
        ),
        (Some("writer-hook"), Some(1), Some("writer.hook"))
    );
    assert_eq!(b["idempotencyKey"], format!("{run}/writer-hook"));
    assert_eq!(
        call.idempotency_key.as_deref(),
        b["idempotencyKey"].as_str()
    );
    assert_eq!(b["objective"], "tagline for a bakery");
    assert_eq!(b["inputs"]["writerBrief"]["tone"], "playful");
    assert!(b["instructions"].is_array());
    assert_eq!(b["outputSchema"]["type"], "object");

    let (status, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &detail["status"],
            &detail["state"],
            &detail["planVersion"],
            &detail["lastSeq"]
        ),
        (&json!("completed"), &json!("done"), &json!(1), &json!(8))
    );
    assert_eq!(detail["output"]["copyVariants"][0], "writer-hook attempt 1");
    let nodes: Vec<(String, String)> = detail["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["nodeId"].as_str().unwrap().to_owned(),
                n["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("brief-structurer".to_owned(), "completed".to_owned()),
            ("writer-hook".to_owned(), "completed".to_owned())
        ]
    );
    let (_, versions) = server.get(&format!("/v1/runs/{run}/plan/versions")).await;
    assert_eq!(versions, json!({"current": 1, "versions": [1]}));
    let (_, plan) = server.get(&format!("/v1/runs/{run}/plan")).await;
    assert_eq!(plan["version"], 1);
    assert_eq!(
        plan["edges"],
        json!([{"from": "brief-structurer", "to": "writer-hook"}])
    );
    let (_, listed) = server.get("/v1/runs?status=completed").await;
    assert_eq!(listed["runs"][0]["runId"], run.to_string());
    let (_, none) = server.get("/v1/runs?status=failed").await;
    assert_eq!(none["runs"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_first_draft_is_revised_and_accepted() {
    let (_dir, path) = temp_store();
    let planner = ScriptedPlanner::new([
        ScriptStep::Draft(draft("writer.de")),
        ScriptStep::Draft(draft("writer.en")),
    ]);
    let opts = Options {
        planner: Some(Arc::new(planner.clone())),
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    let frames = server.events(run, None).await.rest().await;
    assert_eq!(
        labels(&frames),
        [
            "plan_requested",
            "plan_generated",
            "plan_rejected",
            "plan_generated",
            "plan_accepted",
            "node_start:brief",
            "node_complete:brief",
            "node_start:write",
            "node_complete:write",
            "complete"
        ]
    );
    assert_frames_are_stored(&frames, &server.stored(run));
    let rejected = frames[2].payload();
    assert_eq!(rejected["attempt"], 1);
    let diag = rejected["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "CAPABILITY_NOT_REGISTERED")
        .expect("CAPABILITY_NOT_REGISTERED");
    assert_eq!(
        (&diag["nodeId"], &diag["capabilityId"]),
        (&json!("write"), &json!("writer.de"))
    );
    assert_eq!(frames[4].payload()["version"], 1);
    assert_eq!(frames[9].payload()["status"], "completed");
    let requests = planner.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1]
            .diagnostics
            .iter()
            .any(|d| d.capability_id.as_deref() == Some("writer.de")),
        "the revision request carries the diagnostics"
    );

    let (_, versions) = server.get(&format!("/v1/runs/{run}/plan/versions")).await;
    assert_eq!(
        versions,
        json!({"current": 1, "versions": [1]}),
        "the rejected draft is no version"
    );
    let (_, v1) = server.get(&format!("/v1/runs/{run}/plan/versions/1")).await;
    let caps: Vec<&str> = v1["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["capabilityId"].as_str().unwrap())
        .collect();
    assert_eq!(caps, ["brief.structurer", "writer.en"]);
    assert_eq!(v1["systemInstructions"], "be brief");
    server.stop().await;
}

fn qa_gate() -> serde_json::Value {
    json!({"runtime": [{"id": "qa-gate",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "replan", "rationale": "add a QA pass"}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_replans_mid_run_and_both_versions_are_served() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(&["copyVariants", "summary"], qa_gate()))
        .await;
    let frames = server.events(run, None).await.rest().await;
    assert_eq!(
        labels(&frames),
        [
            "plan_requested",
            "plan_generated",
            "plan_accepted",
            "node_start:brief-structurer",
            "node_complete:brief-structurer",
            "node_start:writer-en",
            "node_complete:writer-en",
            "policy_triggered",
            "plan_requested",
            "plan_generated",
            "plan_updated",
            "node_start:qa-copy-after-writer-en",
            "node_complete:qa-copy-after-writer-en",
            "node_start:copy-summarizer",
            "node_complete:copy-summarizer",
            "complete"
        ]
    );
    assert_frames_are_stored(&frames, &server.stored(run));
    let trig = &frames[7];
    assert_eq!(trig.payload()["policyId"], "qa-gate");
    assert_eq!(frames[8].payload()["phase"], "replan");
    let updated = frames[10].payload();
    assert_eq!(
        (&updated["previousVersion"], &updated["version"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(
        updated["diff"]["addedNodes"],
        json!(["qa-copy-after-writer-en"])
    );
    assert_eq!(frames[10].data.as_ref().unwrap()["planVersion"], 2);

    let (_, versions) = server.get(&format!("/v1/runs/{run}/plan/versions")).await;
    assert_eq!(versions, json!({"current": 2, "versions": [1, 2]}));
    let (_, v1) = server.get(&format!("/v1/runs/{run}/plan/versions/1")).await;
    let (_, v2) = server.get(&format!("/v1/runs/{run}/plan")).await;
    assert_eq!(
        (
            v1["nodes"].as_array().unwrap().len(),
            v2["nodes"].as_array().unwrap().len()
        ),
        (3, 4)
    );
    assert_eq!(v2["version"], 2);
    for n in v1["nodes"].as_array().unwrap() {
        assert!(
            v2["nodes"].as_array().unwrap().contains(n),
            "v1 node kept in v2: {n}"
        );
    }
    let (status, diff) = server
        .get(&format!("/v1/runs/{run}/plan/diff?from=1&to=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(diff["addedNodes"], json!(["qa-copy-after-writer-en"]));
    assert_eq!(diff["removedNodes"], json!([]));
    assert_eq!(
        diff, updated["diff"],
        "the served diff is the one on the event"
    );
    let (_, default_diff) = server.get(&format!("/v1/runs/{run}/plan/diff")).await;
    assert_eq!(default_diff, diff, "defaults to current - 1 → current");

    let (status, mime, mermaid) = server
        .get_text(&format!("/v1/runs/{run}/plan/versions/2?format=mermaid"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(mime.starts_with("text/plain"), "{mime}");
    assert!(mermaid.starts_with("flowchart"), "{mermaid}");
    assert!(mermaid.contains("qa-copy-after-writer-en"));
    let (_, mime, dot) = server
        .get_text(&format!("/v1/runs/{run}/plan?format=dot"))
        .await;
    assert!(mime.starts_with("text/vnd.graphviz"), "{mime}");
    assert!(dot.starts_with("digraph"), "{dot}");
    let (_, _, old) = server
        .get_text(&format!("/v1/runs/{run}/plan/versions/1?format=mermaid"))
        .await;
    assert!(!old.contains("qa-copy"), "version 1 is rendered as it was");
    server.stop().await;
}
