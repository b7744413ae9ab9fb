//! The query of `GET /v1/runs`: paging and filters, checked into a [`RunQuery`].

use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::dto::RunStatusDto;
use super::error::ApiError;
use crate::ids::{RunId, Timestamp};
use crate::store::RunQuery;

/// Runs per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;
/// The largest `limit`.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    /// Only runs with this status.
    status: Option<RunStatusDto>,
    /// Most runs in the page (1 to 1000, default 100).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// Where the page starts: the `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Only runs whose `metadata.correlationId` is this.
    correlation_id: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    created_after: Option<Timestamp>,
    /// Only runs created before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    created_before: Option<Timestamp>,
    /// `metadata.<key>=<value>`: only runs whose envelope metadata has the key with this value
    /// (a string, or the JSON text of a number or boolean); repeat for several keys.
    #[serde(flatten)]
    #[param(ignore)]
    metadata: std::collections::BTreeMap<String, String>,
}

impl ListQuery {
    pub(crate) fn into_query(self) -> Result<RunQuery, ApiError> {
        // A number, read here: the flattened metadata map makes serde see every value as text.
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(text) => text.parse::<usize>().unwrap_or(0),
        };
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                format!(
                    "limit: must be a whole number within 1..={MAX_PAGE}, found {:?}",
                    self.limit.unwrap_or_default()
                ),
            )
            .with_details(serde_json::json!({"field": "limit"})));
        }
        let before = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(cursor) => Some(cursor.parse::<RunId>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    format!("cursor: {cursor:?} is not a cursor of this API (use `nextCursor`)"),
                )
                .with_details(serde_json::json!({"field": "cursor"}))
            })?),
        };
        let mut metadata = Vec::new();
        if let Some(id) = self.correlation_id {
            metadata.push(("correlationId".to_owned(), serde_json::Value::String(id)));
        }
        for (param, value) in self.metadata {
            let Some(key) = param.strip_prefix("metadata.").filter(|k| !k.is_empty()) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    format!("{param}: unknown query parameter; expected status, limit, cursor, correlationId, createdAfter, createdBefore or metadata.<key>"),
                )
                .with_details(serde_json::json!({"field": param})));
            };
            metadata.push((key.to_owned(), serde_json::Value::String(value)));
        }
        Ok(RunQuery {
            before,
            status: self.status.map(Into::into),
            created_after: self.created_after,
            created_before: self.created_before,
            metadata,
            limit,
        })
    }
}
