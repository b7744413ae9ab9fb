//! The routes of DESIGN §5 and their handlers.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tower_http::trace::TraceLayer;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::dto::{
    BudgetView, CapabilityDto, CapabilityList, ErrorBody, FacetDto, FacetList, Health,
    HitlAnswerRequest, HitlList, HitlView, NodeView, PlanDiffView, PlanVersions, PlanView,
    ReasonRequest, ResumeRequest, RunAck, RunCreated, RunDetail, RunErrorDto, RunList, RunRequest,
    RunStatusDto, RunSummary, SignalRequest,
};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use super::openapi::ApiDoc;
use super::state::AppState;
use super::{access, metrics, sse};
use crate::catalog::{Capability, CapabilityStatus, Facet};
use crate::engine::{IdempotencyKey, Steer, Submission};
use crate::fsm::EventBody;
use crate::graph::{PlanGraph, PlanSnapshot};
use crate::ids::Timestamp;
use crate::ids::{IdKind, RunId, check_id};
use crate::store::{Store, StoreError};

/// The API's router over `state`: every route of DESIGN §5, the one error shape for every
/// failure (unknown routes and methods included), the body limit, optional bearer auth on
/// every route but `/healthz` and the console's files, a request timeout on every route but
/// the event stream, and one tracing span per request carrying the run id.
pub fn router(state: AppState) -> Router {
    let timed = Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(delete_run))
        .route("/v1/runs/{id}/plan", get(current_plan))
        .route("/v1/runs/{id}/plan/versions", get(plan_versions))
        .route("/v1/runs/{id}/plan/versions/{version}", get(plan_version))
        .route("/v1/runs/{id}/plan/diff", get(plan_diff))
        .route("/v1/runs/{id}/hitl", get(list_hitl))
        .route("/v1/runs/{id}/hitl/{request_id}", post(answer_hitl))
        .route("/v1/runs/{id}/signals", post(signal))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/pause", post(pause))
        .route("/v1/runs/{id}/resume", post(resume))
        .route("/v1/runs/{id}/events/token", post(stream_token))
        .route("/v1/facets", get(list_facets).post(register_facet))
        .route(
            "/v1/capabilities",
            get(list_capabilities).post(register_capability),
        )
        .route("/v1/capabilities/{id}", get(get_capability))
        .route(
            "/v1/capabilities/{id}/deactivate",
            post(deactivate_capability),
        )
        .route("/v1/capabilities/{id}/activate", post(activate_capability))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::forward::forward_steering,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), deadline));
    let protected = timed.layer(middleware::from_fn_with_state(
        state.clone(),
        access::require_token,
    ));
    let stream = Router::new()
        .route("/v1/runs/{id}/events", get(run_events))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::require_token_or_stream_token,
        ));
    let cors = access::cors(&state.config.cors_origins);
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(super::console::routes())
        .merge(protected)
        .merge(stream)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state);
    // Outermost, so that a preflight is answered before authentication asks for a token.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn request_span(req: &Request<Body>) -> tracing::Span {
    let path = req.uri().path();
    let run_id = path
        .strip_prefix("/v1/runs/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path, run_id)
}

async fn deadline(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limit = st.config.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TIMEOUT",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(
        "ROUTE_NOT_FOUND",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn parse_run(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::not_found(
            "RUN_NOT_FOUND",
            format!("run `{id}` not found (not a run id)"),
        )
    })
}

fn run_not_found(run: RunId) -> ApiError {
    ApiError::from(crate::EngineError::RunNotFound(run))
}

/// Runs a synchronous store read off the async workers.
async fn read<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = st.engine.store().clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(ApiError::from)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CreateQuery {
    /// Answer with the run's SSE stream instead of `201` JSON.
    #[serde(default)]
    stream: bool,
}

/// Creates a run from an envelope and starts it.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = RunRequest,
    params(CreateQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: the run's spans join this trace when the server exports traces; an invalid value is ignored (see docs/TELEMETRY.md)")),
    responses(
        (status = 201, description = "The run was created", body = RunCreated,
         headers(("location" = String, description = "The run's URL"))),
        (status = 200, description = "With `stream=true`: the run's events (see `GET /v1/runs/{id}/events`)",
         body = String, content_type = "text/event-stream"),
        (status = 400, description = "Malformed JSON or wrong types", body = ErrorBody),
        (status = 409, description = "A request with the same `Idempotency-Key` is being applied", body = ErrorBody),
        (status = 422, description = "Invalid envelope (`details.field` names the field), or an `Idempotency-Key` used before for another request", body = ErrorBody),
    ))]
pub(crate) async fn create_run(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiJson(body): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    let mut submission = Submission::new(body.into());
    submission.idempotency_key = idempotency_key(&headers)?;
    // A caller's trace context: the run's spans join that trace. An invalid header is
    // ignored (W3C Trace Context: a receiver restarts the trace), never an error.
    submission.traceparent = headers
        .get(crate::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| crate::telemetry::is_valid_traceparent(v))
        .map(str::to_owned);
    let submitted = st.engine.submit_request(submission).await?;
    let run = submitted.run_id;
    let location = format!("/v1/runs/{run}");
    let mut response = if q.stream {
        sse::response(&st, run, 0).into_response()
    } else {
        (
            StatusCode::CREATED,
            Json(RunCreated {
                run_id: run,
                status: RunStatusDto::Active,
                events_url: format!("{location}/events"),
            }),
        )
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if submitted.replayed {
        mark_replayed(&mut response);
    }
    Ok(response)
}

/// The request header carrying a client's idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header set on an answer repeated for a retried request.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_IDEMPOTENCY_KEY", message)
            .with_details(serde_json::json!({"field": "Idempotency-Key"}))
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("the Idempotency-Key header is not visible ASCII".to_owned()))?;
    IdempotencyKey::new(text).map(Some).map_err(invalid)
}

fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
}

/// Applies a steering request with the request's idempotency key, answering with where the
/// run stands right after it (the same answer for a retry).
async fn steer(
    st: &AppState,
    run: RunId,
    headers: &HeaderMap,
    request: Steer,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers)?;
    let steered = st.engine.steer(run, request, key).await?;
    let ack = RunAck {
        run_id: run,
        status: steered.status.into(),
        state: steered.state.as_str().to_owned(),
    };
    let mut response = Json(ack).into_response();
    if steered.replayed {
        mark_replayed(&mut response);
    }
    Ok(response)
}

/// Lists runs, newest first, a page at a time (`nextCursor` leads to the next page).
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(super::list_query::ListQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_runs(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<super::list_query::ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let query = q.into_query()?;
    let page = read(&st, move |s| s.runs_page(&query)).await?;
    let next_cursor = page
        .more
        .then(|| page.runs.last().map(|(run, _)| run.to_string()))
        .flatten();
    Ok(Json(RunList {
        runs: page
            .runs
            .iter()
            .map(|(id, head)| RunSummary::new(*id, head))
            .collect(),
        next_cursor,
    }))
}

/// A run: state, plan version, the current plan's nodes with their status, pending HITL
/// requests and, once ended, its output or error.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_run(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let run = parse_run(&id)?;
    let (head, plan, records, hitl, events, envelope) = read(&st, move |s| {
        let Some(head) = s.run_head(run)? else {
            return Ok(None);
        };
        let plan = s.latest_plan(run)?;
        let records = s.node_records(run)?;
        let hitl = s.hitl_records(run)?;
        let events = s.events_after(run, 0, usize::MAX)?;
        let envelope = s.envelope(run)?;
        Ok(Some((head, plan, records, hitl, events, envelope)))
    })
    .await?
    .ok_or_else(|| run_not_found(run))?;
    let policies = envelope
        .as_ref()
        .and_then(|e| e.get("policies"))
        .and_then(|p| crate::policy::normalize(p).ok())
        .unwrap_or_default();
    let ledger = crate::engine::ledger_of(&policies, &events, Timestamp::now());
    let last = events.last().filter(|_| head.status.is_terminal());
    let (output, error) =
        if let Some(EventBody::Complete { output, error, .. }) = last.map(|e| e.body.clone()) {
            (output, error)
        } else {
            (None, None)
        };
    Ok(Json(RunDetail {
        run: RunSummary::new(run, &head),
        nodes: plan
            .iter()
            .flat_map(|p| p.nodes.iter())
            .map(|n| NodeView::new(n, &records))
            .collect(),
        pending_hitl: hitl
            .iter()
            .filter(|r| r.response.is_none())
            .map(HitlView::from)
            .collect(),
        output,
        error: error.as_ref().map(RunErrorDto::from),
        budget: BudgetView::new(&ledger),
    }))
}

/// Deletes an ended run and everything stored about it; followers of its events end.
#[utoipa::path(delete, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 204, description = "The run and all its records were deleted"),
              (status = 404, body = ErrorBody),
              (status = 409, description = "`RUN_ACTIVE`: the run has not ended; nothing was deleted", body = ErrorBody)))]
pub(crate) async fn delete_run(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let run = parse_run(&id)?;
    st.engine.delete_run(run).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/runs/{id}/events/token`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StreamTokenRequest {
    /// Lifetime in seconds (1 to 3600, default 300).
    ttl_seconds: Option<u64>,
}

/// A credential for one run's event stream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamToken {
    /// Pass as `?token=` to the run's event stream.
    token: String,
    /// When it stops opening the stream (RFC 3339); a stream already open is not cut.
    #[schema(value_type = String, format = DateTime)]
    expires_at: Timestamp,
    /// The stream's URL with the token.
    events_url: String,
}

/// Mints a short-lived token that opens this run's event stream without an
/// `Authorization` header (for `EventSource` in browsers). Needs the bearer token itself.
#[utoipa::path(post, path = "/v1/runs/{id}/events/token", tag = "runs",
    request_body(content = Option<StreamTokenRequest>),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = StreamToken), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn stream_token(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<StreamTokenRequest>,
) -> Result<Json<StreamToken>, ApiError> {
    use super::stream_token::{DEFAULT_TTL_SECS, MAX_TTL_SECS, StreamTokens, unix_now};
    let run = parse_run(&id)?;
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid_field(
            "ttlSeconds",
            format!("ttlSeconds: must be within 1..={MAX_TTL_SECS}, found {ttl}"),
        ));
    }
    if read(&st, move |s| s.run_head(run)).await?.is_none() {
        return Err(run_not_found(run));
    }
    let expires = unix_now() + ttl;
    // Without auth the stream needs no token; one is minted anyway, so clients need not care.
    let token = match st.stream_tokens.as_deref() {
        Some(tokens) => tokens.mint(run, expires),
        None => StreamTokens::new("").mint(run, expires),
    };
    Ok(Json(StreamToken {
        events_url: format!("/v1/runs/{run}/events?token={token}"),
        token,
        expires_at: Timestamp(expires * 1000),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Replay events with a seq greater than this (`Last-Event-ID` wins when both are given).
    after: Option<u64>,
}

/// The run's events as Server-Sent Events: replay after `Last-Event-ID` (or `after`), then
/// live; `: heartbeat` comments; the stream ends after `complete`.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "Run id"), EventsQuery,
           ("token" = Option<String>, Query, description = "A stream token of this run (`POST /v1/runs/{id}/events/token`), instead of `Authorization`"),
           ("last-event-id" = Option<u64>, Header, description = "Resume after this seq")),
    responses(
        (status = 200, description = "`retry: <ms>` first, then `event: <type>`, `id: <seq>`, `data: <event JSON>` frames (schema `EventDoc`)",
         body = String, content_type = "text/event-stream"),
        (status = 204, description = "The run has ended and the client has every event: nothing will follow, do not reconnect"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn run_events(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "INVALID_LAST_EVENT_ID",
                        format!("`Last-Event-ID: {v:?}` is not a seq"),
                    )
                })?,
        ),
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    let store = st.engine.store().clone();
    let head = crate::engine::follow::bounded_read(move || store.run_head(run))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(ApiError::from)?;
    let Some(head) = head else {
        return Err(run_not_found(run));
    };
    if head.status.is_terminal() && after >= head.last_seq {
        // Nothing will ever follow: 204 tells an EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut response = sse::response(&st, run, after).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PlanFormat {
    /// The plan as JSON.
    #[default]
    Json,
    /// A Mermaid flowchart (`text/plain`).
    Mermaid,
    /// A Graphviz digraph (`text/vnd.graphviz`).
    Dot,
    /// An SVG drawing (`image/svg+xml`), marked with the diff against `base`.
    Svg,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FormatQuery {
    /// json (default), mermaid, dot or svg.
    #[serde(default)]
    format: PlanFormat,
    /// With `format=svg`: the older version the drawing is diffed against (default: the
    /// version before, none for version 1). Ignored by the other formats.
    base: Option<u32>,
}

const SVG_MIME: &str = "image/svg+xml";

fn graph_of(plan: &PlanSnapshot) -> Result<PlanGraph, ApiError> {
    PlanGraph::from_snapshot(plan).map_err(|e| ApiError::internal(&e))
}

/// `plan` in `format`; `base` is the version an SVG drawing is diffed against.
fn render(
    plan: &PlanSnapshot,
    base: Option<&PlanSnapshot>,
    format: PlanFormat,
) -> Result<Response, ApiError> {
    let text = |graph: fn(&PlanGraph) -> String, mime: &'static str| {
        Ok(([(header::CONTENT_TYPE, mime)], graph(&graph_of(plan)?)).into_response())
    };
    match format {
        PlanFormat::Json => Ok(Json(PlanView::from(plan)).into_response()),
        PlanFormat::Mermaid => text(PlanGraph::to_mermaid, "text/plain; charset=utf-8"),
        PlanFormat::Dot => text(PlanGraph::to_dot, "text/vnd.graphviz; charset=utf-8"),
        PlanFormat::Svg => {
            let base = base.map(graph_of).transpose()?;
            let svg = super::plan_svg::render_svg(&graph_of(plan)?, base.as_ref());
            Ok(([(header::CONTENT_TYPE, SVG_MIME)], svg).into_response())
        }
    }
}

/// The version an SVG drawing of `version` is diffed against: `requested`, which must exist
/// (else 404) and be older than `version` (else 400), or by default the version before (none
/// for version 1). `None` for the other formats.
async fn svg_base(
    st: &AppState,
    run: RunId,
    version: u32,
    q: &FormatQuery,
) -> Result<Option<PlanSnapshot>, ApiError> {
    if !matches!(q.format, PlanFormat::Svg) {
        return Ok(None);
    }
    let base = match q.base {
        Some(base) => base,
        None if version >= 2 => version - 1,
        None => return Ok(None),
    };
    let plan = read(st, move |s| s.plan_version(run, base))
        .await?
        .ok_or_else(|| no_version(run, base))?;
    if base >= version {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            format!("base {base} must be older than the drawn version {version}"),
        )
        .with_details(serde_json::json!({ "field": "base" })));
    }
    Ok(Some(plan))
}

fn no_plan(run: RunId) -> ApiError {
    ApiError::not_found("PLAN_NOT_FOUND", format!("run {run} has no plan yet"))
}

fn no_version(run: RunId, version: u32) -> ApiError {
    ApiError::not_found(
        "PLAN_VERSION_NOT_FOUND",
        format!("run {run} has no plan version {version}"),
    )
    .with_details(serde_json::json!({ "version": version }))
}

/// The current plan version, as JSON or rendered.
#[utoipa::path(get, path = "/v1/runs/{id}/plan", tag = "plans",
    params(("id" = String, Path, description = "Run id"), FormatQuery),
    responses((status = 200, description = "The plan as JSON; with `format=mermaid` a Mermaid flowchart (`text/plain`), with `format=dot` a Graphviz digraph (`text/vnd.graphviz`), with `format=svg` an SVG drawing (`image/svg+xml`) marked with the diff against `base`",
               content((PlanView = "application/json"), (String = "text/vnd.graphviz"), (String = "text/plain"), (String = "image/svg+xml"))),
              (status = 400, description = "`base` is not older than the drawn version", body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn current_plan(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<FormatQuery>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let (exists, plan) = read(&st, move |s| {
        Ok((s.run_head(run)?.is_some(), s.latest_plan(run)?))
    })
    .await?;
    if !exists {
        return Err(run_not_found(run));
    }
    let plan = plan.ok_or_else(|| no_plan(run))?;
    let base = svg_base(&st, run, plan.version, &q).await?;
    render(&plan, base.as_ref(), q.format)
}

/// The run's plan version numbers.
#[utoipa::path(get, path = "/v1/runs/{id}/plan/versions", tag = "plans",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = PlanVersions), (status = 404, body = ErrorBody)))]
pub(crate) async fn plan_versions(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PlanVersions>, ApiError> {
    let run = parse_run(&id)?;
    let (head, versions) =
        read(&st, move |s| Ok((s.run_head(run)?, s.plan_versions(run)?))).await?;
    let head = head.ok_or_else(|| run_not_found(run))?;
    Ok(Json(PlanVersions {
        current: head.plan_version,
        versions,
    }))
}

/// One plan version, as JSON or rendered.
#[utoipa::path(get, path = "/v1/runs/{id}/plan/versions/{version}", tag = "plans",
    params(("id" = String, Path, description = "Run id"), ("version" = u32, Path, description = "Plan version"),
           FormatQuery),
    responses((status = 200, description = "The plan as JSON; with `format=mermaid` a Mermaid flowchart (`text/plain`), with `format=dot` a Graphviz digraph (`text/vnd.graphviz`), with `format=svg` an SVG drawing (`image/svg+xml`) marked with the diff against `base`",
               content((PlanView = "application/json"), (String = "text/vnd.graphviz"), (String = "text/plain"), (String = "image/svg+xml"))),
              (status = 400, description = "`base` is not older than the drawn version", body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn plan_version(
    State(st): State<AppState>,
    ApiPath((id, version)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<FormatQuery>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let (exists, plan) = read(&st, move |s| {
        Ok((s.run_head(run)?.is_some(), s.plan_version(run, version)?))
    })
    .await?;
    if !exists {
        return Err(run_not_found(run));
    }
    let plan = plan.ok_or_else(|| no_version(run, version))?;
    let base = svg_base(&st, run, version, &q).await?;
    render(&plan, base.as_ref(), q.format)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffQuery {
    /// The older version (default: `to - 1`).
    from: Option<u32>,
    /// The newer version (default: the current version).
    to: Option<u32>,
}

/// The structural difference between two plan versions.
#[utoipa::path(get, path = "/v1/runs/{id}/plan/diff", tag = "plans",
    params(("id" = String, Path, description = "Run id"), DiffQuery),
    responses((status = 200, body = PlanDiffView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn plan_diff(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> Result<Json<PlanDiffView>, ApiError> {
    let run = parse_run(&id)?;
    let head = read(&st, move |s| s.run_head(run))
        .await?
        .ok_or_else(|| run_not_found(run))?;
    let to = q.to.unwrap_or(head.plan_version);
    let from = match q.from {
        Some(from) => from,
        None if to >= 2 => to - 1,
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                format!("run {run} needs `from` and `to` to diff (current version {to})"),
            ));
        }
    };
    let (older, newer) = read(&st, move |s| {
        Ok((s.plan_version(run, from)?, s.plan_version(run, to)?))
    })
    .await?;
    let older = older.ok_or_else(|| no_version(run, from))?;
    let newer = newer.ok_or_else(|| no_version(run, to))?;
    let graph = |p: &PlanSnapshot| PlanGraph::from_snapshot(p).map_err(|e| ApiError::internal(&e));
    Ok(Json(PlanDiffView::from(
        &graph(&older)?.diff(&graph(&newer)?),
    )))
}

/// The run's HITL requests and answers.
#[utoipa::path(get, path = "/v1/runs/{id}/hitl", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = HitlList), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_hitl(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<HitlList>, ApiError> {
    let run = parse_run(&id)?;
    let (exists, records) = read(&st, move |s| {
        Ok((s.run_head(run)?.is_some(), s.hitl_records(run)?))
    })
    .await?;
    if !exists {
        return Err(run_not_found(run));
    }
    Ok(Json(HitlList {
        requests: records.iter().map(HitlView::from).collect(),
    }))
}

/// Answers a pending HITL request.
#[utoipa::path(post, path = "/v1/runs/{id}/hitl/{requestId}", tag = "steering",
    request_body = HitlAnswerRequest,
    params(("id" = String, Path, description = "Run id"), ("requestId" = String, Path, description = "HITL request id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)")),
    responses((status = 200, body = RunAck), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Unknown or already resolved request, or the run has ended", body = ErrorBody),
              (status = 422, description = "The request id breaks the identifier grammar", body = ErrorBody)))]
pub(crate) async fn answer_hitl(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath((id, request_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<HitlAnswerRequest>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let answer = body.into();
    steer(&st, run, &headers, Steer::Answer { request_id, answer }).await
}

/// Sends an external signal; `manual` policies naming it fire.
#[utoipa::path(post, path = "/v1/runs/{id}/signals", tag = "steering", request_body = SignalRequest,
    params(("id" = String, Path, description = "Run id"), ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)")),
    responses((status = 200, body = RunAck), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn signal(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SignalRequest>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid_field(
            "name",
            "signal name must not be empty",
        ));
    }
    let signal = Steer::Signal {
        name: body.name,
        payload: body.payload,
    };
    steer(&st, run, &headers, signal).await
}

/// Cancels a run.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "steering", request_body(content = Option<ReasonRequest>),
    params(("id" = String, Path, description = "Run id"), ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)")),
    responses((status = 200, body = RunAck), (status = 404, body = ErrorBody),
              (status = 409, description = "The run has ended", body = ErrorBody)))]
pub(crate) async fn cancel(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled over HTTP".to_owned());
    steer(&st, run, &headers, Steer::Cancel { reason }).await
}

/// Pauses an executing run (in-flight nodes finish; nothing new starts).
#[utoipa::path(post, path = "/v1/runs/{id}/pause", tag = "steering", request_body(content = Option<ReasonRequest>),
    params(("id" = String, Path, description = "Run id"), ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)")),
    responses((status = 200, body = RunAck), (status = 404, body = ErrorBody),
              (status = 409, description = "The run is not executing", body = ErrorBody)))]
pub(crate) async fn pause(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let reason = body.reason.unwrap_or_else(|| "paused over HTTP".to_owned());
    steer(&st, run, &headers, Steer::Pause { reason }).await
}

/// Resumes a paused run.
#[utoipa::path(post, path = "/v1/runs/{id}/resume", tag = "steering", request_body(content = Option<ResumeRequest>),
    params(("id" = String, Path, description = "Run id"), ("Idempotency-Key" = Option<String>, Header, description = "Repeats the answer of an earlier request with this key instead of applying it again (see docs/API.md)")),
    responses((status = 200, body = RunAck), (status = 404, body = ErrorBody),
              (status = 409, description = "The run is not paused, or waits on a HITL answer", body = ErrorBody)))]
pub(crate) async fn resume(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ResumeRequest>,
) -> Result<Response, ApiError> {
    let run = parse_run(&id)?;
    let budgets = body.limits()?;
    let reason = body
        .reason
        .unwrap_or_else(|| "resumed over HTTP".to_owned());
    steer(&st, run, &headers, Steer::Resume { reason, budgets }).await
}

/// Registered facets.
#[utoipa::path(get, path = "/v1/facets", tag = "catalog", responses((status = 200, body = FacetList)))]
pub(crate) async fn list_facets(State(st): State<AppState>) -> Json<FacetList> {
    let catalog = st.engine.catalog();
    Json(FacetList {
        facets: catalog.facets.list().map(FacetDto::from).collect(),
    })
}

/// Registers (or replaces) a facet.
#[utoipa::path(post, path = "/v1/facets", tag = "catalog", request_body = FacetDto,
    responses((status = 201, body = FacetDto), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn register_facet(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<FacetDto>,
) -> Result<(StatusCode, Json<FacetDto>), ApiError> {
    let facet = Facet::try_from(body)?;
    let echo = FacetDto::from(&facet);
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.register_facet(facet))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok((StatusCode::CREATED, Json(echo)))
}

/// Registered capabilities (active and inactive).
#[utoipa::path(get, path = "/v1/capabilities", tag = "catalog", responses((status = 200, body = CapabilityList)))]
pub(crate) async fn list_capabilities(State(st): State<AppState>) -> Json<CapabilityList> {
    let catalog = st.engine.catalog();
    Json(CapabilityList {
        capabilities: catalog.registry.list().map(CapabilityDto::from).collect(),
    })
}

/// Registers (or replaces) a capability; its facets must be registered.
#[utoipa::path(post, path = "/v1/capabilities", tag = "catalog", request_body = CapabilityDto,
    responses((status = 201, body = CapabilityDto), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn register_capability(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<CapabilityDto>,
) -> Result<(StatusCode, Json<CapabilityDto>), ApiError> {
    let capability = Capability::try_from(body)?;
    let echo = CapabilityDto::from(&capability);
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.register_capability(capability))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok((StatusCode::CREATED, Json(echo)))
}

fn capability_of(st: &AppState, id: &str) -> Result<CapabilityDto, ApiError> {
    check_id(IdKind::Capability, "id", id)?;
    st.engine
        .catalog()
        .registry
        .get(id)
        .map(CapabilityDto::from)
        .ok_or_else(|| {
            ApiError::not_found(
                "CAPABILITY_NOT_FOUND",
                format!("capability `{id}` not found"),
            )
        })
}

/// One capability.
#[utoipa::path(get, path = "/v1/capabilities/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Capability id")),
    responses((status = 200, body = CapabilityDto), (status = 404, body = ErrorBody),
              (status = 422, description = "The id breaks the identifier grammar", body = ErrorBody)))]
pub(crate) async fn get_capability(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CapabilityDto>, ApiError> {
    capability_of(&st, &id).map(Json)
}

async fn set_status(
    st: &AppState,
    id: String,
    status: CapabilityStatus,
) -> Result<Json<CapabilityDto>, ApiError> {
    capability_of(st, &id)?;
    let engine = st.engine.clone();
    let target = id.clone();
    tokio::task::spawn_blocking(move || engine.set_capability_status(&target, status))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    capability_of(st, &id).map(Json)
}

/// Deactivates a capability: new plans may not use it; running nodes finish.
#[utoipa::path(post, path = "/v1/capabilities/{id}/deactivate", tag = "catalog",
    params(("id" = String, Path, description = "Capability id")),
    responses((status = 200, body = CapabilityDto), (status = 404, body = ErrorBody),
              (status = 422, description = "The id breaks the identifier grammar", body = ErrorBody)))]
pub(crate) async fn deactivate_capability(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CapabilityDto>, ApiError> {
    set_status(&st, id, CapabilityStatus::Inactive).await
}

/// Activates a capability again.
#[utoipa::path(post, path = "/v1/capabilities/{id}/activate", tag = "catalog",
    params(("id" = String, Path, description = "Capability id")),
    responses((status = 200, body = CapabilityDto), (status = 404, body = ErrorBody),
              (status = 422, description = "The id breaks the identifier grammar", body = ErrorBody)))]
pub(crate) async fn activate_capability(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CapabilityDto>, ApiError> {
    set_status(&st, id, CapabilityStatus::Active).await
}

/// Liveness; never requires a token.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Prometheus metrics: runs by status and state, transitions by type, planner calls and
/// rejections, the model planner's response format and fallbacks, node durations, store
/// commits.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn metrics_text(State(st): State<AppState>) -> Result<Response, ApiError> {
    let runs = read(&st, |s| s.list_runs(None)).await?;
    let planner = st.planner_metrics.as_ref().map(|m| m.snapshot());
    let body = metrics::render(&st.engine, &runs, planner.as_ref());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
pub(crate) async fn openapi() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned())
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}
