//! The one error shape of the API: `{"error":{"code","message","details"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::dto::{ErrorBody, ErrorDetail};
use crate::catalog::CatalogError;
use crate::engine::EngineError;
use crate::ids::IdError;
use crate::store::StoreError;

/// A failed request: an HTTP status, a stable code, a message and optional details.
///
/// Every failure of the API (rejected extractors, unknown routes, engine refusals, internal
/// errors) answers with this shape. Internal errors are logged and answered without their
/// text.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `RUN_NOT_FOUND`.
    pub code: &'static str,
    /// Human-readable message naming the offending input.
    pub message: String,
    /// Structured details (e.g. the offending field).
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `BAD_REQUEST`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    /// 422 `UNPROCESSABLE` for a semantically invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_FIELD", message)
            .with_details(json!({ "field": field }))
    }

    /// 404 for something other than a run.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the server log",
        )
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong bearer token",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::InvalidEnvelope { field, .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_ENVELOPE",
                message,
            )
            .with_details(json!({ "field": field })),
            EngineError::RunNotFound(run) => {
                Self::new(StatusCode::NOT_FOUND, "RUN_NOT_FOUND", message)
                    .with_details(json!({ "runId": run }))
            }
            EngineError::InvalidPolicies { field, .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_ENVELOPE",
                message,
            )
            .with_details(json!({ "field": field })),
            EngineError::IllegalTransition(_) => {
                Self::new(StatusCode::CONFLICT, "CONFLICT", message)
            }
            EngineError::InvalidAnswer {
                request_id, field, ..
            } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ANSWER", message)
                .with_details(json!({ "requestId": request_id, "field": field })),
            EngineError::UnknownHitlRequest { run, request_id } => {
                Self::new(StatusCode::CONFLICT, "CONFLICT", message)
                    .with_details(json!({ "runId": run, "requestId": request_id }))
            }
            EngineError::CapabilityFacets {
                capability_id,
                diagnostics,
            } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_CATALOG_ENTRY",
                message,
            )
            .with_details(json!({ "capabilityId": capability_id, "diagnostics": diagnostics })),
            EngineError::ExecutorRefused {
                capability_id,
                source,
            } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_CATALOG_ENTRY",
                message,
            )
            .with_details(json!({ "capabilityId": capability_id, "field": source.field })),
            e @ EngineError::Corrupt { .. } => Self::internal(&e),
            EngineError::RunEnded(run) => Self::new(StatusCode::CONFLICT, "RUN_ENDED", message)
                .with_details(json!({ "runId": run })),
            EngineError::RunActive(run) => Self::new(StatusCode::CONFLICT, "RUN_ACTIVE", message)
                .with_details(json!({ "runId": run })),
            EngineError::Catalog(CatalogError::InvalidId(e)) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_CATALOG_ENTRY",
                message,
            )
            .with_details(json!({ "field": e.field() })),
            EngineError::Catalog(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_CATALOG_ENTRY",
                message,
            ),
            EngineError::InvalidId(e) => Self::from(e),
            EngineError::Store(e) => Self::from(e),
            EngineError::IdempotencyKeyReused { key } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                message,
            )
            .with_details(json!({ "field": "Idempotency-Key", "key": key })),
            EngineError::IdempotencyKeyInUse { key } => {
                Self::new(StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_USE", message)
                    .with_details(json!({ "field": "Idempotency-Key", "key": key }))
            }
            EngineError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", message)
            }
            EngineError::OwnedElsewhere {
                run_id, instance, ..
            } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "RUN_MOVED",
                format!("run {run_id} moved to instance {instance} meanwhile; retry the request"),
            )
            .with_details(json!({ "runId": run_id, "instance": instance })),
            EngineError::Stranded { run_id, reason } => {
                tracing::error!(run_id = %run_id, reason = %reason, "request on a stranded run");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "RUN_STRANDED",
                    format!(
                        "run {run_id} is not being driven; it resumes when the server restarts"
                    ),
                )
                .with_details(json!({ "runId": run_id }))
            }
        }
    }
}

/// 422 `INVALID_FIELD` naming the identifier's field (a body field or a path parameter).
impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        Self::invalid_field(e.field(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let moved = self.code == "RUN_MOVED";
        let mut response = (self.status, Json(body)).into_response();
        if moved {
            // Tells an instance that forwarded the request to try the run's new driver.
            response
                .headers_mut()
                .insert(super::forward::MOVED, HeaderValue::from_static("1"));
        }
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flexrun\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunId;

    #[test]
    fn engine_errors_map_to_statuses_and_codes() {
        let run = RunId::new();
        let cases = [
            (
                EngineError::InvalidEnvelope {
                    field: "objective".into(),
                    message: "must not be empty".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_ENVELOPE",
            ),
            (
                EngineError::RunNotFound(run),
                StatusCode::NOT_FOUND,
                "RUN_NOT_FOUND",
            ),
            (
                EngineError::UnknownHitlRequest {
                    run,
                    request_id: "r1".into(),
                },
                StatusCode::CONFLICT,
                "CONFLICT",
            ),
            (
                EngineError::RunEnded(run),
                StatusCode::CONFLICT,
                "RUN_ENDED",
            ),
            (
                EngineError::RunActive(run),
                StatusCode::CONFLICT,
                "RUN_ACTIVE",
            ),
            (
                EngineError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "SHUTTING_DOWN",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (status, code));
        }
        let api = ApiError::from(EngineError::InvalidEnvelope {
            field: "outputContract.facets[0]".into(),
            message: "unknown facet".into(),
        });
        assert_eq!(
            api.details,
            Some(json!({"field": "outputContract.facets[0]"}))
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_text() {
        let api = ApiError::internal(&"disk on fire at /var/secret");
        assert!(!api.message.contains("secret"));
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
