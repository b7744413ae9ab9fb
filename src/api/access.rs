//! Who may call the API: bearer authentication, event-stream tokens, and CORS for browser
//! pages on other origins.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;
use super::state::AppState;
use crate::ids::RunId;

/// The CORS layer for `origins` (`None` when there are none). An origin that is not a valid
/// header value is skipped; `flexrun serve` checks them first with [`check_cors_origin`].
pub(crate) fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::LOCATION, header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Checks a `--cors-origin` value: `*`, or `http(s)://host[:port]` without a path.
///
/// # Errors
/// A message naming what is wrong.
pub fn check_cors_origin(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let origin = origin.trim_end_matches('/');
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("{origin:?}: an origin starts with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "{origin:?}: an origin is scheme://host[:port], without a path"
        ));
    }
    HeaderValue::from_str(origin).map_err(|_| format!("{origin:?}: not a valid header value"))?;
    Ok(origin.to_owned())
}

pub(crate) async fn require_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = st.config.auth_token.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// An event stream also opens with a stream token of its run (`?token=`, minted by
/// `POST /v1/runs/{id}/events/token`): what a browser's `EventSource` can send.
pub(crate) async fn require_token_or_stream_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(tokens) = st.stream_tokens.as_deref() {
        let run = req
            .uri()
            .path()
            .strip_prefix("/v1/runs/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .and_then(|id| id.parse::<RunId>().ok());
        let token = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        if let (Some(run), Some(token)) = (run, token)
            && tokens.check(run, token, super::stream_token::unix_now())
        {
            return next.run(req).await;
        }
    }
    require_token(State(st), req, next).await
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
