//! Browser pages on other origins: CORS with preflight, and the stream's reconnect contract.

use reqwest::StatusCode;
use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN};
use serde_json::json;

use crate::support::{Options, Server, SseReader, copy_envelope, status_json, temp_store};
use flexrun::api::{ApiConfig, check_cors_origin};

const PAGE: &str = "http://127.0.0.1:5173";

fn with_cors(origins: &[&str], token: Option<&str>) -> Options {
    Options {
        config: ApiConfig {
            cors_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            auth_token: token.map(str::to_owned),
            ..ApiConfig::default()
        },
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_gets_preflight_and_responses_even_with_auth_on() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, with_cors(&[PAGE], Some("s3cret"))).await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/runs"))
        .header(ORIGIN, PAGE)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.status(),
        StatusCode::OK,
        "a preflight needs no token"
    );
    let h = preflight.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("last-event-id"),
        "{headers}"
    );

    let created = server
        .client
        .post(server.url("/v1/runs"))
        .header(ORIGIN, PAGE)
        .bearer_auth("s3cret")
        .json(&copy_envelope(&["copyVariants"], json!(null)))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
    let unauthorized = server
        .client
        .get(server.url("/v1/runs"))
        .header(ORIGIN, PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthorized.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
        PAGE,
        "the page can read why it was refused"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origin_gets_no_grant_and_without_origins_cors_is_off() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, with_cors(&[PAGE], None)).await;
    let other = server
        .client
        .get(server.url("/v1/runs"))
        .header(ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert!(other.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    server.stop().await;

    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let plain = server
        .client
        .get(server.url("/v1/runs"))
        .header(ORIGIN, PAGE)
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/runs"))
        .header(ORIGIN, PAGE)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}

#[test]
fn origins_are_checked_before_the_server_starts() {
    assert_eq!(
        check_cors_origin("http://localhost:5173/").unwrap(),
        "http://localhost:5173"
    );
    assert_eq!(check_cors_origin("*").unwrap(), "*");
    for bad in [
        "localhost:5173",
        "http://",
        "https://a.example/app",
        "ftp://a.example",
    ] {
        let err = check_cors_origin(bad).unwrap_err();
        assert!(err.contains(bad.trim_end_matches('/')), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_opens_one_runs_events_without_an_authorization_header() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, with_cors(&[PAGE], Some("s3cret"))).await;
    let submit = || async {
        let (status, created) = status_json(
            server
                .client
                .post(server.url("/v1/runs"))
                .bearer_auth("s3cret")
                .json(&copy_envelope(&["copyVariants"], json!(null)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["runId"].as_str().unwrap().to_owned()
    };
    let (run, other) = (submit().await, submit().await);
    let mint = |run: String, auth: bool, body: serde_json::Value| {
        let mut req = server
            .client
            .post(server.url(&format!("/v1/runs/{run}/events/token")))
            .json(&body);
        if auth {
            req = req.bearer_auth("s3cret");
        }
        async move { status_json(req.send().await.unwrap()).await }
    };
    let (status, _) = mint(run.clone(), false, json!({})).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "minting needs the bearer token"
    );
    let (status, body) = mint(run.clone(), true, json!({"ttlSeconds": 0})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["field"], "ttlSeconds");
    let (status, minted) = mint(run.clone(), true, json!({"ttlSeconds": 60})).await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    let token = minted["token"].as_str().unwrap();
    assert!(minted["expiresAt"].as_str().is_some(), "{minted}");

    let bare = server
        .client
        .get(server.url(&format!("/v1/runs/{run}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let mut stream = SseReader::open(
        server
            .client
            .get(server.url(minted["eventsUrl"].as_str().unwrap()))
            .header(ORIGIN, PAGE),
    )
    .await;
    assert_eq!(stream.status, StatusCode::OK);
    let frames = stream.rest().await;
    assert_eq!(frames.last().unwrap().label(), "complete");
    let elsewhere = server
        .client
        .get(server.url(&format!("/v1/runs/{other}/events?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        StatusCode::UNAUTHORIZED,
        "a token opens its run only"
    );
    let elsewhere = server
        .client
        .get(server.url(&format!("/v1/runs/{run}?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        StatusCode::UNAUTHORIZED,
        "and only its event stream"
    );
    server.stop().await;
}
