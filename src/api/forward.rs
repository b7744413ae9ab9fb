//! Steering requests for runs that another instance drives.
//!
//! When several `flexrun serve` instances share one store (a cluster, see
//! [`crate::store::Cluster`]), any of them takes any request. Reads are answered from the
//! shared store and event streams follow any run (see `engine::cluster`), but a steering
//! request (a HITL answer, a signal, pause, resume, cancel) must be applied by the run's
//! driver. This middleware finds the driver ([`Engine::route`](crate::Engine::route)) and, when
//! it is another instance, sends it the request and returns its answer unchanged.
//!
//! Exactly once: a forwarded request always carries an `Idempotency-Key` (the client's, or
//! one made here), and the owner records it with the transition that applies the request. When
//! the owner cannot be reached (it died), the request is sent again, with the same key, to
//! whichever instance drives the run after the takeover (possibly this one), until the
//! takeover window has passed: a request the dead owner applied is answered from its record
//! and not applied twice.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;
use super::state::AppState;
use crate::engine::Route;
use crate::ids::RunId;

/// Marks a request one instance forwarded to another: the receiver applies it itself.
pub(crate) const FORWARDED: &str = "x-flexrun-forwarded";

/// Marks an answer saying the run moved to another driver meanwhile: the forwarder tries
/// again.
pub(crate) const MOVED: &str = "x-flexrun-moved";

/// How long a forwarded request waits between two tries while the owner is unreachable.
const RETRY: Duration = Duration::from_millis(200);

/// How long a forwarded request may take at the owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

fn client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::http_client::client_builder()
                .timeout(FORWARD_TIMEOUT)
                .build()
                .ok()
        })
        .as_ref()
}

/// The run a steering route names: `POST /v1/runs/{id}/{hitl/{request}|signals|cancel|pause|resume}`.
fn steered_run(method: &Method, path: &str) -> Option<RunId> {
    if method != Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/v1/runs/")?;
    let (id, tail) = rest.split_once('/')?;
    let steering = matches!(tail, "signals" | "cancel" | "pause" | "resume")
        || tail
            .strip_prefix("hitl/")
            .is_some_and(|request| !request.is_empty() && !request.contains('/'));
    if !steering {
        return None;
    }
    id.parse().ok()
}

/// The middleware: applies a steering request here, or forwards it to the run's driver.
pub(crate) async fn forward_steering(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(membership) = st.engine.cluster_options() else {
        return next.run(req).await;
    };
    let Some(run) = steered_run(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let window = membership.lease * 2 + membership.heartbeat * 2;
    let (mut parts, body) = req.into_parts();
    let body = match to_bytes(body, st.config.body_limit).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the request body exceeds {} bytes", st.config.body_limit),
            )
            .into_response();
        }
    };
    if !parts.headers.contains_key("idempotency-key") {
        let key = format!("fwd-{}", uuid::Uuid::new_v4().simple());
        if let Ok(value) = HeaderValue::from_str(&key) {
            parts
                .headers
                .insert(HeaderName::from_static("idempotency-key"), value);
        }
    }
    let started = Instant::now();
    loop {
        let instance = match st.engine.route(run).await {
            Err(e) => return ApiError::from(e).into_response(),
            Ok(Route::Here) => return next.run(Request::from_parts(parts, Body::from(body))).await,
            Ok(Route::Instance { instance, address }) => match address {
                Some(address) => match send(&address, &parts, body.clone()).await {
                    Ok(response) if response.headers().contains_key(MOVED) => instance,
                    Ok(response) => return response,
                    Err(e) => {
                        tracing::info!(run_id = %run, instance = %instance, error = %e, "the run's owner is unreachable; retrying");
                        instance
                    }
                },
                None => instance,
            },
        };
        if started.elapsed() > window {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "OWNER_UNREACHABLE",
                format!("run {run} is driven by instance {instance}, which cannot be reached; retry with the same Idempotency-Key"),
            )
            .with_details(serde_json::json!({ "runId": run, "instance": instance }))
            .into_response();
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Sends the request to the instance at `address` and turns its answer into ours; an error
/// says why the instance could not be reached.
async fn send(address: &str, parts: &Parts, body: Bytes) -> Result<Response, String> {
    let client = client().ok_or("no HTTP client could be built")?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{path}", address.trim_end_matches('/'));
    let mut request = client.post(url).body(body).header(FORWARDED, "1");
    for (name, value) in &parts.headers {
        if name == "host" || name == "content-length" || name == "connection" {
            continue;
        }
        request = request.header(name, value);
    }
    let answer = request.send().await.map_err(|e| e.to_string())?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name == "content-length" || name == "transfer-encoding" || name == "connection" {
            continue;
        }
        response.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_steering_routes_are_forwarded() {
        let run = RunId::new();
        let post = Method::POST;
        for tail in ["signals", "cancel", "pause", "resume", "hitl/req-1"] {
            assert_eq!(
                steered_run(&post, &format!("/v1/runs/{run}/{tail}")),
                Some(run),
                "{tail}"
            );
        }
        for tail in [
            "events",
            "plan",
            "hitl",
            "hitl/",
            "hitl/a/b",
            "events/token",
        ] {
            assert_eq!(
                steered_run(&post, &format!("/v1/runs/{run}/{tail}")),
                None,
                "{tail}"
            );
        }
        assert_eq!(
            steered_run(&Method::GET, &format!("/v1/runs/{run}/cancel")),
            None
        );
        assert_eq!(steered_run(&post, "/v1/runs/not-a-run/cancel"), None);
    }
}
