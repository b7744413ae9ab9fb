//! The identifier grammar over HTTP: every place an id enters answers 422 naming the field,
//! valid ids round-trip through URL paths, and the OpenAPI document states the grammar.

use flexrun::ids::{ID_PATTERN, IdKind, MAX_ID_LEN};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn capability(id: &str) -> Value {
    json!({"capabilityId": id, "kind": "execution", "inputFacets": ["writerBrief"],
        "outputFacets": ["copyVariants"], "executor": {"type": "http", "url": "http://127.0.0.1:9/x"}})
}

/// Asserts a 422 whose details name `field`, with a short message.
fn assert_refused(status: StatusCode, body: &Value, code: &str, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["details"]["field"], field, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.len() < 400, "the message quotes an excerpt only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_ids_and_facet_names_are_checked_in_bodies_and_paths() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let before = server.get("/v1/capabilities").await.1;

    let (status, body) = server
        .post("/v1/capabilities", capability("../../etc"))
        .await;
    assert_refused(status, &body, "INVALID_FIELD", "capabilityId");
    for (id, segment) in [
        ("../../etc", "..%2F..%2Fetc"),
        ("a b", "a%20b"),
        ("x..y", "x..y"),
    ] {
        let (status, body) = server.get(&format!("/v1/capabilities/{segment}")).await;
        assert_refused(status, &body, "INVALID_FIELD", "id");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{id:?}")),
            "{body}"
        );
        let (status, body) = server
            .post(&format!("/v1/capabilities/{segment}/deactivate"), json!({}))
            .await;
        assert_refused(status, &body, "INVALID_FIELD", "id");
    }

    let huge = "f".repeat(1_000_001);
    let (status, body) = server
        .post(
            "/v1/facets",
            json!({"name": huge, "direction": "output", "schema": {"type": "string"}}),
        )
        .await;
    assert_refused(status, &body, "INVALID_FIELD", "name");
    let mut cap = capability("w.huge");
    cap["outputFacets"] = json!(["copyVariants", "bad/name"]);
    let (status, body) = server.post("/v1/capabilities", cap).await;
    assert_refused(status, &body, "INVALID_FIELD", "outputFacets[1]");

    assert_eq!(server.get("/v1/capabilities").await.1, before);
    assert_eq!(
        server.get("/v1/facets").await.1["facets"]
            .as_array()
            .map(Vec::len),
        Some(flexrun::demo::facets().len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_with_bad_policy_ids_or_facet_names_are_refused() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let hitl = |id: &str| {
        json!({"runtime": [{"id": id, "trigger": {"kind": "onStart"},
            "action": {"type": "hitl", "question": "go?", "onApprove": "continue", "onReject": "fail"}}]})
    };
    for id in [
        "qa gate",
        "",
        "a/b",
        &"p".repeat(IdKind::Policy.max_len() + 1),
    ] {
        let (status, body) = server
            .post("/v1/runs", copy_envelope(&["copyVariants"], hitl(id)))
            .await;
        assert_refused(status, &body, "INVALID_ENVELOPE", "policies.runtime[0].id");
    }
    let selector = json!({"runtime": [{"id": "p", "trigger": {"kind": "onNodeComplete",
        "selector": {"nodeId": "../write"}}, "action": {"type": "replan"}}]});
    let (status, body) = server
        .post("/v1/runs", copy_envelope(&["copyVariants"], selector))
        .await;
    assert_refused(
        status,
        &body,
        "INVALID_ENVELOPE",
        "policies.runtime[0].trigger.selector.nodeId",
    );
    let (status, body) = server
        .post(
            "/v1/runs",
            copy_envelope(&["copyVariants", "a..b"], json!(null)),
        )
        .await;
    assert_refused(
        status,
        &body,
        "INVALID_ENVELOPE",
        "outputContract.facets[1]",
    );
    assert_eq!(server.get("/v1/runs").await.1["runs"], json!([]));
}

/// The longest policy id names a HITL request whose id is a valid path segment; a request
/// id outside the grammar is refused as such before the run is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hitl_request_ids_made_from_the_longest_policy_id_can_be_answered() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let id = "p".repeat(IdKind::Policy.max_len());
    let policies = json!({"runtime": [{"id": id, "trigger": {"kind": "onStart"},
        "action": {"type": "hitl", "question": "go?", "onApprove": "continue", "onReject": "fail"}}]});
    let run = server
        .submit(copy_envelope(&["copyVariants"], policies))
        .await;
    let mut events = server.events(run, None).await;
    let frames = events.until("hitl_request").await;
    let request_id = frames.last().unwrap().payload()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(request_id, format!("{id}-1"));
    assert!(request_id.len() <= MAX_ID_LEN);
    let approve = json!({"decision": "approve"});
    let (status, body) = server
        .post(&format!("/v1/runs/{run}/hitl/bad%20id"), approve.clone())
        .await;
    assert_refused(status, &body, "INVALID_FIELD", "requestId");
    let (status, body) = server
        .post(&format!("/v1/runs/{run}/hitl/{request_id}"), approve)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rest = events.rest().await;
    assert_eq!(
        rest.last().unwrap().payload()["status"],
        "completed",
        "{:?}",
        labels(&rest)
    );
}

/// Generated valid ids are registered and read back at `/v1/capabilities/{id}` as they
/// stand, without any escaping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ids_round_trip_through_the_servers_paths() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let strategy = "[A-Za-z0-9_:@-]{1,12}(\\.[A-Za-z0-9_:@-]{1,12}){0,5}";
    let mut runner = TestRunner::deterministic();
    let mut ids: Vec<String> = (0..48)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    ids.push("x".repeat(MAX_ID_LEN));
    for id in &ids {
        let (status, body) = server.post("/v1/capabilities", capability(id)).await;
        assert_eq!(status, StatusCode::CREATED, "{id}: {body}");
        let (status, body) = server.get(&format!("/v1/capabilities/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["capabilityId"], id.as_str());
        let (status, body) = server
            .post(&format!("/v1/capabilities/{id}/deactivate"), json!({}))
            .await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("inactive")),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_states_the_grammar() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let (_, doc) = server.get("/v1/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let cases = [
        ("CapabilityDto", "capabilityId", MAX_ID_LEN),
        ("FacetDto", "name", MAX_ID_LEN),
        ("PlanNodeDto", "id", IdKind::Node.max_len()),
        ("HitlView", "requestId", MAX_ID_LEN),
    ];
    for (schema, field, max) in cases {
        let property = &schemas[schema]["properties"][field];
        assert_eq!(
            property["pattern"], ID_PATTERN,
            "{schema}.{field}: {property}"
        );
        assert_eq!(property["maxLength"], max, "{schema}.{field}");
        assert_eq!(property["minLength"], 1, "{schema}.{field}");
    }
    let items = &schemas["CapabilityDto"]["properties"]["inputFacets"]["items"];
    assert_eq!(items["pattern"], ID_PATTERN, "{items}");
}
