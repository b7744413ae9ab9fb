//! Facets and capabilities over HTTP; metrics; the OpenAPI document and its docs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facets_and_capabilities_are_listed_registered_and_deactivated() {
    let (_dir, path) = temp_store();
    let server = Server::start(path.clone(), Options::default()).await;
    let (status, facets) = server.get("/v1/facets").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = facets["facets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"copyVariants") && names.contains(&"objectiveBrief"),
        "{names:?}"
    );

    let facet = json!({"name":"headline","title":"Headline","description":"One headline","direction":"output",
        "schema":{"type":"string","maxLength":80},"instructions":"Short.","requiredByDefault":true});
    let (status, echo) = server.post("/v1/facets", facet.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{echo}");
    assert_eq!(echo, facet);
    let (_, facets) = server.get("/v1/facets").await;
    assert!(facets["facets"].as_array().unwrap().contains(&facet));

    let cap = json!({"capabilityId":"headline.writer","version":"1.0.0","displayName":"Headliner",
        "summary":"Writes a headline","kind":"execution","agentType":"ai","inputFacets":["writerBrief"],
        "outputFacets":["headline"],"cost":1.0,"timeoutMs":30000,"maxAttempts":2,
        "executor":{"type":"http","url":"http://127.0.0.1:9000/exec"},"status":"active"});
    let (status, echo) = server.post("/v1/capabilities", cap.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{echo}");
    assert_eq!(echo, cap);
    let (status, off) = server
        .post("/v1/capabilities/headline.writer/deactivate", Value::Null)
        .await;
    assert_eq!(
        (status, &off["status"]),
        (StatusCode::OK, &json!("inactive"))
    );
    let (_, one) = server.get("/v1/capabilities/headline.writer").await;
    assert_eq!(one["status"], "inactive");
    let (_, all) = server.get("/v1/capabilities").await;
    let listed = all["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capabilityId"] == "headline.writer")
        .unwrap();
    assert_eq!(listed["status"], "inactive");
    server.stop().await;

    let server = Server::start(path, Options::default()).await;
    let (_, one) = server.get("/v1/capabilities/headline.writer").await;
    assert_eq!(one["status"], "inactive", "registrations are durable");
    let (status, on) = server
        .post("/v1/capabilities/headline.writer/activate", Value::Null)
        .await;
    assert_eq!((status, &on["status"]), (StatusCode::OK, &json!("active")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_transitions_and_planner_calls() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    server.events(run, None).await.rest().await;
    let (status, mime, text) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(mime.starts_with("text/plain; version=0.0.4"), "{mime}");
    for line in [
        "flexrun_runs{status=\"completed\"} 1",
        "flexrun_runs{status=\"active\"} 0",
        "flexrun_runs_by_state{state=\"done\"} 1",
        "flexrun_transitions_total{type=\"complete\"} 1",
        "flexrun_transitions_total{type=\"node_complete\"} 2",
        "flexrun_planner_calls_total 1",
        "flexrun_plan_rejections_total 0",
        "flexrun_node_duration_seconds_count 2",
        "flexrun_retention_deleted_runs_total 0",
        "flexrun_store_compactions_total 0",
        "# TYPE flexrun_transitions_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    let node_seconds: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("flexrun_node_duration_seconds_sum "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        node_seconds > 0.0 && node_seconds < 1.0,
        "sub-millisecond node work is summed in microseconds: {node_seconds}"
    );
}

fn openapi_paths(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_every_operation_is_documented() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let ops = openapi_paths(&doc);
    assert_eq!(ops.len(), 26, "{ops:?}");
    for (method, path) in &ops {
        let probe = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{version}", "1")
            .replace("{requestId}", "r");
        let req = server
            .client
            .request(method.parse().unwrap(), server.url(&probe));
        let (status, body) = status_json(req.send().await.unwrap()).await;
        assert_ne!(
            body["error"]["code"], "ROUTE_NOT_FOUND",
            "{method} {path} is documented but not routed ({status})"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    let api_md = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md"),
    )
    .unwrap();
    let documented: Vec<(String, String)> = {
        let mut v: Vec<(String, String)> = api_md
            .lines()
            .filter_map(|l| l.strip_prefix("### `"))
            .filter_map(|l| l.strip_suffix('`'))
            .filter_map(|l| l.split_once(' '))
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        documented, ops,
        "docs/API.md has one `### `METHOD path`` heading per operation"
    );
    server.stop().await;
}
