//! Every failure answers `{"error":{"code","message","details"}}`, and a rejected request
//! changes nothing stored.

use flexrun::RunId;
use flexrun::api::ApiConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

/// Everything the store holds, as comparable JSON.
fn snapshot(server: &Server) -> Value {
    let store = server.engine.store();
    let runs = store.list_runs(None).unwrap();
    let events: Vec<Value> = runs
        .iter()
        .map(|(id, _)| {
            serde_json::to_value(store.events_after(*id, 0, usize::MAX).unwrap()).unwrap()
        })
        .collect();
    json!({
        "runs": serde_json::to_value(&runs).unwrap(),
        "events": events,
        "facets": serde_json::to_value(store.facets().unwrap()).unwrap(),
        "capabilities": serde_json::to_value(store.capabilities().unwrap()).unwrap(),
    })
}

fn assert_error_shape(body: &Value, code: &str, context: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{context}: not an object: {body}"));
    assert_eq!(obj.len(), 1, "{context}: {body}");
    let error = body["error"].as_object().unwrap();
    assert!(
        error
            .keys()
            .all(|k| ["code", "message", "details"].contains(&k.as_str())),
        "{context}: {body}"
    );
    assert_eq!(body["error"]["code"], code, "{context}: {body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_answer_one_error_shape_and_store_nothing() {
    let (_dir, path) = temp_store();
    let opts = Options {
        config: ApiConfig {
            body_limit: 64 * 1024,
            ..ApiConfig::default()
        },
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    server.events(run, None).await.rest().await;
    let before = snapshot(&server);
    let unknown = RunId::new();
    let envelope = copy_envelope(&["copyVariants"], json!(null));
    let mut wrong_type = envelope.clone();
    wrong_type["objective"] = json!(5);
    let mut empty = envelope.clone();
    empty["objective"] = json!("  ");
    let mut unknown_facet = envelope.clone();
    unknown_facet["outputContract"]["facets"] = json!(["copyVariants", "nope"]);
    let mut extra_field = envelope.clone();
    extra_field["objectve"] = json!("typo");
    let mut huge = envelope.clone();
    huge["inputs"]["objectiveBrief"] = json!("x".repeat(200 * 1024));
    let bad_url = json!({"capabilityId": "w.x", "kind": "execution", "inputFacets": ["writerBrief"],
        "outputFacets": ["copyVariants"], "executor": {"type": "http", "url": "ftp://x/y"}});
    let unknown_facet_cap = json!({"capabilityId": "w.y", "kind": "execution", "inputFacets": ["nope"],
        "outputFacets": ["copyVariants"], "executor": {"type": "http", "url": "http://127.0.0.1:9/x"}});

    type Case = (Method, String, Option<String>, StatusCode, &'static str);
    let s = |v: &Value| Some(v.to_string());
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/runs".into(),
            Some("{\"objective\":".into()),
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
        ),
        (
            Method::POST,
            "/v1/runs".into(),
            s(&wrong_type),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
        ),
        (
            Method::POST,
            "/v1/runs".into(),
            s(&extra_field),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
        ),
        (
            Method::POST,
            "/v1/runs".into(),
            s(&empty),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_ENVELOPE",
        ),
        (
            Method::POST,
            "/v1/runs".into(),
            s(&unknown_facet),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_ENVELOPE",
        ),
        (
            Method::POST,
            "/v1/runs".into(),
            s(&huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            Method::GET,
            format!("/v1/runs/{unknown}"),
            None,
            StatusCode::NOT_FOUND,
            "RUN_NOT_FOUND",
        ),
        (
            Method::GET,
            "/v1/runs/not-a-run".into(),
            None,
            StatusCode::NOT_FOUND,
            "RUN_NOT_FOUND",
        ),
        (
            Method::GET,
            format!("/v1/runs/{unknown}/events"),
            None,
            StatusCode::NOT_FOUND,
            "RUN_NOT_FOUND",
        ),
        (
            Method::GET,
            format!("/v1/runs/{unknown}/plan"),
            None,
            StatusCode::NOT_FOUND,
            "RUN_NOT_FOUND",
        ),
        (
            Method::POST,
            format!("/v1/runs/{unknown}/cancel"),
            None,
            StatusCode::NOT_FOUND,
            "RUN_NOT_FOUND",
        ),
        (
            Method::GET,
            "/v1/runs?status=bogus".into(),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
        ),
        (
            Method::GET,
            format!("/v1/runs/{run}/plan/versions/9"),
            None,
            StatusCode::NOT_FOUND,
            "PLAN_VERSION_NOT_FOUND",
        ),
        (
            Method::GET,
            format!("/v1/runs/{run}/plan/versions/x"),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_PATH",
        ),
        (
            Method::GET,
            format!("/v1/runs/{run}/plan/diff"),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
        ),
        (
            Method::POST,
            format!("/v1/runs/{run}/resume"),
            None,
            StatusCode::CONFLICT,
            "RUN_ENDED",
        ),
        (
            Method::POST,
            format!("/v1/runs/{run}/hitl/nope"),
            s(&json!({"decision": "approve"})),
            StatusCode::CONFLICT,
            "RUN_ENDED",
        ),
        (
            Method::POST,
            format!("/v1/runs/{run}/signals"),
            s(&json!({"name": " "})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/capabilities".into(),
            s(&bad_url),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/capabilities".into(),
            s(&unknown_facet_cap),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CATALOG_ENTRY",
        ),
        (
            Method::POST,
            "/v1/capabilities/none.such/deactivate".into(),
            None,
            StatusCode::NOT_FOUND,
            "CAPABILITY_NOT_FOUND",
        ),
        (
            Method::POST,
            "/v1/facets".into(),
            s(&json!({"name": "f", "schema": {}})),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
        ),
        (
            Method::GET,
            "/v1/nothing-here".into(),
            None,
            StatusCode::NOT_FOUND,
            "ROUTE_NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/v1/runs".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
    ];
    for (method, path, body, status, code) in cases {
        // A refused upload (413) is answered before its body is read and the connection is
        // closed; one connection per case keeps the next case off that connection.
        let mut req = server
            .client
            .request(method.clone(), server.url(&path))
            .header("connection", "close");
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let (got, value) = status_json(req.send().await.unwrap()).await;
        let context = format!("{method} {path}");
        assert_eq!(got, status, "{context}: {value}");
        assert_error_shape(&value, code, &context);
    }

    let (status, body) = server.post("/v1/runs", empty).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["field"], "objective");
    let (_, body) = server.post("/v1/runs", unknown_facet).await;
    assert!(
        body["error"]["details"]["field"]
            .as_str()
            .unwrap()
            .starts_with("outputContract"),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "{body}"
    );
    let no_type = server
        .client
        .post(server.url("/v1/runs"))
        .body(envelope.to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(no_type).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error_shape(&body, "UNSUPPORTED_MEDIA_TYPE", "no content type");

    assert_eq!(snapshot(&server), before, "nothing stored changed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_every_route_but_healthz() {
    let (_dir, path) = temp_store();
    let opts = Options {
        config: ApiConfig {
            auth_token: Some("s3cret-token".into()),
            ..ApiConfig::default()
        },
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let before = snapshot(&server);
    let run = RunId::new();
    for (method, path) in [
        (Method::GET, "/v1/runs".to_owned()),
        (Method::POST, "/v1/runs".to_owned()),
        (Method::GET, format!("/v1/runs/{run}/events")),
        (Method::GET, "/metrics".to_owned()),
        (Method::GET, "/v1/openapi.json".to_owned()),
        (Method::POST, "/v1/capabilities".to_owned()),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret-token"),
            Some("Basic s3cret-token"),
        ] {
            let mut req = server.client.request(method.clone(), server.url(&path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let req = req.json(&copy_envelope(&["copyVariants"], json!(null)));
            let response = req.send().await.unwrap();
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned()),
                Some("Bearer realm=\"flexrun\"".to_owned())
            );
            let (status, body) = status_json(response).await;
            let context = format!("{method} {path} with {auth:?}");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{context}");
            assert_error_shape(&body, "UNAUTHORIZED", &context);
        }
    }
    assert_eq!(snapshot(&server), before, "nothing stored changed");
    let ok = server
        .client
        .get(server.url("/v1/runs"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let created = server
        .client
        .post(server.url("/v1/runs"))
        .bearer_auth("s3cret-token")
        .json(&copy_envelope(&["copyVariants"], json!(null)))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    server.stop().await;
}
