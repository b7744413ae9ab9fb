//! `?format=svg`: the server-rendered drawing of a plan version, marked with its diff.

use reqwest::StatusCode;
use serde_json::{Value, json};

use flexrun::RunId;

use crate::support::*;

/// The class attribute of the node element drawing `id`, which occurs exactly once.
fn node_class<'a>(svg: &'a str, id: &str) -> &'a str {
    let needle = format!("\" data-node-id=\"{id}\"");
    assert_eq!(svg.matches(&needle).count(), 1, "{id} once in\n{svg}");
    let before = &svg[..svg.find(&needle).unwrap()];
    &before[before.rfind("<g class=\"").unwrap() + "<g class=\"".len()..]
}

/// A server and a run of `examples/replan.json` finished with two plan versions.
async fn replanned_run() -> (tempfile::TempDir, Server, RunId) {
    let (dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let envelope: Value = serde_json::from_str(include_str!("../../examples/replan.json")).unwrap();
    let run = server.submit(envelope).await;
    server.events(run, None).await.rest().await;
    let (_, versions) = server.get(&format!("/v1/runs/{run}/plan/versions")).await;
    assert_eq!(versions, json!({"current": 2, "versions": [1, 2]}));
    (dir, server, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replanned_version_is_drawn_with_its_diff_marks() {
    let (_dir, server, run) = replanned_run().await;
    let (_, diff) = server.get(&format!("/v1/runs/{run}/plan/diff")).await;
    let added = diff["addedNodes"][0].as_str().unwrap().to_owned();
    let (_, v1) = server.get(&format!("/v1/runs/{run}/plan/versions/1")).await;
    let kept: Vec<&str> = v1["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();

    for path in [
        format!("/v1/runs/{run}/plan/versions/2?format=svg"),
        format!("/v1/runs/{run}/plan?format=svg"),
        format!("/v1/runs/{run}/plan/versions/2?format=svg&base=1"),
    ] {
        let (status, mime, svg) = server.get_text(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {svg}");
        assert_eq!(mime, "image/svg+xml", "{path}");
        assert!(
            svg.starts_with(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flexrun-plan\" data-version=\"2\" data-base=\"1\" "
            ),
            "{path}: {svg}"
        );
        assert_eq!(node_class(&svg, &added), "node diff-added", "{path}");
        for id in &kept {
            assert_ne!(node_class(&svg, id), "node diff-added", "{id}");
        }
        assert_eq!(svg.matches("<g class=\"node").count(), kept.len() + 1);
        assert!(svg.contains("<path class=\"edge diff-added\""), "{path}");
    }

    let (status, mime, svg) = server
        .get_text(&format!("/v1/runs/{run}/plan/versions/1?format=svg"))
        .await;
    assert_eq!((status, mime.as_str()), (StatusCode::OK, "image/svg+xml"));
    assert!(!svg.contains("data-base="), "{svg}");
    assert!(!svg.contains(&format!("data-node-id=\"{added}\"")));
    for marked in [
        "node diff-added",
        "node diff-changed",
        "node diff-removed",
        "edge diff-added",
        "edge diff-removed",
    ] {
        assert!(
            !svg.contains(marked),
            "version 1 has no diff marks: {marked}"
        );
    }
    assert_eq!(
        svg.matches("<g class=\"node diff-same\"").count(),
        kept.len()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_not_older_is_refused_and_a_missing_one_not_found() {
    let (_dir, server, run) = replanned_run().await;

    let (status, body) = server
        .get(&format!("/v1/runs/{run}/plan/versions/2?format=svg&base=2"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_QUERY");
    assert_eq!(body["error"]["details"], json!({"field": "base"}));
    let (status, body) = server
        .get(&format!("/v1/runs/{run}/plan/versions/1?format=svg&base=2"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a newer base: {body}");
    assert_eq!(body["error"]["details"], json!({"field": "base"}));

    for base in [9, 0] {
        let (status, body) = server
            .get(&format!(
                "/v1/runs/{run}/plan/versions/2?format=svg&base={base}"
            ))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "PLAN_VERSION_NOT_FOUND");
        assert_eq!(body["error"]["details"], json!({"version": base}));
    }
    let (status, body) = server
        .get(&format!("/v1/runs/{run}/plan?format=json&base=9"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "base is ignored without svg: {body}"
    );
    server.stop().await;
}
