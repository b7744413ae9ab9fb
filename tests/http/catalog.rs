//! Facets and capabilities over HTTP; metrics; the OpenAPI document, its docs and a client
//! generated from it.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let frames = server.events(run, None).await.rest().await;
    let event_micros: Vec<u64> = frames
        .iter()
        .filter(|frame| frame.event.as_deref() == Some("node_complete"))
        .map(|frame| {
            let payload = &frame.data.as_ref().unwrap()["payload"];
            let micros = payload["durationUs"].as_u64().unwrap();
            assert_eq!(payload["durationMs"], micros / 1000, "{payload}");
            micros
        })
        .collect();
    assert_eq!(event_micros.len(), 2);
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
    assert_eq!(
        (node_seconds * 1e6).round() as u64,
        event_micros.iter().sum::<u64>(),
        "the metric sums the durations the events carry"
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

/// The served document, read with `token`.
async fn served_openapi(server: &Server, token: &str) -> Value {
    let response = server
        .client
        .get(server.url("/v1/openapi.json"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, doc) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// Every operation of `doc` as (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    out
}

fn media_types(response: &Value) -> Vec<&str> {
    response["content"]
        .as_object()
        .map(|c| c.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_union_variant_is_a_named_component_and_every_response_its_media_type() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let doc = served_openapi(&server, "").await;
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        for variant in schema["oneOf"].as_array().into_iter().flatten() {
            assert!(
                variant.get("$ref").is_some() || variant["type"] == "null",
                "{name} has an inline variant: {variant}"
            );
        }
    }
    let contract = &schemas["OutputContractDto"];
    assert_eq!(contract["discriminator"]["propertyName"], "mode");
    let mapping = contract["discriminator"]["mapping"].as_object().unwrap();
    assert_eq!(
        mapping.keys().map(String::as_str).collect::<Vec<_>>(),
        ["facets", "freeform", "json_schema"]
    );
    for target in mapping.values() {
        let name = target.as_str().unwrap();
        let name = name.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            contract["oneOf"]
                .as_array()
                .unwrap()
                .contains(&json!({"$ref": target})),
            "{name}"
        );
        assert!(
            schemas[name]["properties"]["mode"]["enum"].is_array(),
            "{name}"
        );
    }
    assert_eq!(
        schemas["JsonSchemaOutputContract"]["required"],
        json!(["schema", "mode"])
    );
    let executors: Vec<&str> = schemas["ExecutorDto"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        executors,
        [
            "#/components/schemas/BuiltinExecutor",
            "#/components/schemas/HttpExecutor",
            "#/components/schemas/LlmExecutor",
            "#/components/schemas/HumanExecutor",
            "#/components/schemas/CustomExecutor",
        ]
    );

    let paths = &doc["paths"];
    for plan in [
        "/v1/runs/{id}/plan",
        "/v1/runs/{id}/plan/versions/{version}",
    ] {
        let ok = &paths[plan]["get"]["responses"]["200"];
        assert_eq!(
            media_types(ok),
            [
                "application/json",
                "image/svg+xml",
                "text/plain",
                "text/vnd.graphviz"
            ],
            "{plan}"
        );
    }
    for (method, sse) in [("get", "/v1/runs/{id}/events"), ("post", "/v1/runs")] {
        let ok = &paths[sse][method]["responses"]["200"];
        assert_eq!(media_types(ok), ["text/event-stream"], "{method} {sse}");
    }
    let metrics = &paths["/metrics"]["get"]["responses"]["200"];
    assert_eq!(media_types(metrics), ["text/plain; version=0.0.4"]);
    let diff = &paths["/v1/runs/{id}/plan/diff"]["get"]["responses"]["200"];
    assert_eq!(media_types(diff), ["application/json"]);

    // What the server sends is what the document says.
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    server.events(run, None).await.rest().await;
    for (format, declared) in [
        ("dot", "text/vnd.graphviz"),
        ("mermaid", "text/plain"),
        ("svg", "image/svg+xml"),
    ] {
        let (status, mime, _) = server
            .get_text(&format!("/v1/runs/{run}/plan?format={format}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(mime.split(';').next(), Some(declared), "{format}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_body_errors_are_documented_on_every_route_that_can_answer_them() {
    let (_dir, path) = temp_store();
    let token = "openapi-token";
    let mut options = Options::default();
    options.config.auth_token = Some(token.to_owned());
    let server = Server::start(path, options).await;
    let doc = served_openapi(&server, token).await;
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    let ops = operations(&doc);
    assert_eq!(ops.len(), 26);
    for (method, path, operation) in &ops {
        let probe = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{version}", "1")
            .replace("{requestId}", "r");
        let request = server
            .client
            .request(method.parse().unwrap(), server.url(&probe));
        let status = request.send().await.unwrap().status();
        let responses = &operation["responses"];
        let unauthorized = &responses["401"];
        if path == "/healthz" {
            assert_eq!(status, StatusCode::OK);
            assert!(unauthorized.is_null(), "{method} {path}");
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            unauthorized["content"]["application/json"]["schema"], error_body,
            "{method} {path}"
        );
        assert!(unauthorized["headers"]["WWW-Authenticate"].is_object());
        let has_body = operation.get("requestBody").is_some();
        for code in ["413", "415"] {
            assert_eq!(
                responses[code]["content"]["application/json"]["schema"],
                if has_body {
                    error_body.clone()
                } else {
                    Value::Null
                },
                "{code} on {method} {path}"
            );
        }
    }
    let with_body = ops
        .iter()
        .filter(|(_, _, op)| op.get("requestBody").is_some())
        .count();
    assert_eq!(with_body, 9, "the routes that take a JSON body");
    let (status, body) = {
        let response = server
            .client
            .post(server.url("/v1/facets"))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        status_json(response).await
    };
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    server.stop().await;
}

/// The Python of the venv `scripts/setup-openapi-client.sh` installs (or
/// `FLEXRUN_OPENAPI_PYTHON`).
fn openapi_python() -> PathBuf {
    let python = std::env::var_os("FLEXRUN_OPENAPI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/openapi/venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-openapi-client.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` to its end off the async workers; panics with its output unless it
/// succeeds, and returns its stdout.
async fn run_to_end(mut command: Command) -> String {
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{shown}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_runs_plans_and_reads_diffs() {
    let python = openapi_python();
    let bin = python.parent().unwrap();
    let (_dir, path) = temp_store();
    let token = "generated-client-token";
    let mut options = Options::default();
    options.config.auth_token = Some(token.to_owned());
    let server = Server::start(path, options).await;
    let doc = served_openapi(&server, token).await;
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let mut validate = Command::new(&python);
    validate.args(["-m", "openapi_spec_validator"]).arg(&spec);
    let verdict = run_to_end(validate).await;
    assert!(verdict.contains(": OK"), "{verdict}");

    let config = work.path().join("generator.yaml");
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let mut generate = Command::new(bin.join("openapi-python-client"));
    generate
        .current_dir(work.path())
        .args(["generate", "--meta", "none", "--fail-on-warning", "--path"])
        .arg(&spec)
        .arg("--config")
        .arg(&config);
    run_to_end(generate).await;
    assert!(
        work.path()
            .join("flexrun_client/models/json_schema_output_contract.py")
            .exists()
    );

    let mut script = Command::new(&python);
    script
        .env("PYTHONPATH", work.path())
        .arg(manifest_dir().join("tests/http/generated_client.py"))
        .arg(&server.base)
        .arg(token)
        .arg(manifest_dir().join("examples/replan.json"));
    let out = run_to_end(script).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "health=ok",
            "anonymous=401 UNAUTHORIZED",
            "facets_created=active",
            "facets_run=completed planVersion=2",
            "facets_output=copyVariants,summary",
            "diff=1->2 added=qa-copy-after-writer-en",
            "json_schema_sent=json_schema required=copyVariants",
            "json_schema_run=completed",
            "json_schema_output=copyVariants",
        ],
        "{out}"
    );
    server.stop().await;
}
