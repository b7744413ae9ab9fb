//! The OpenAPI document, generated from the handlers' annotations and the DTOs.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto::EventDoc;
use super::routes;

/// The API's OpenAPI 3.1 document (served at `/v1/openapi.json`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "flexrun",
        description = "Plan and execute runs; follow them over Server-Sent Events; register facets and capabilities; answer HITL requests and steer runs. Every error answers `{\"error\":{\"code\",\"message\",\"details\"}}`."
    ),
    paths(
        routes::create_run,
        routes::list_runs,
        routes::get_run,
        routes::delete_run,
        routes::run_events,
        routes::stream_token,
        routes::current_plan,
        routes::plan_versions,
        routes::plan_version,
        routes::plan_diff,
        routes::list_hitl,
        routes::answer_hitl,
        routes::signal,
        routes::cancel,
        routes::pause,
        routes::resume,
        routes::list_facets,
        routes::register_facet,
        routes::list_capabilities,
        routes::register_capability,
        routes::get_capability,
        routes::deactivate_capability,
        routes::activate_capability,
        routes::healthz,
        routes::metrics_text,
        routes::openapi,
    ),
    components(schemas(EventDoc, routes::PlanFormat)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "runs", description = "Create, list, inspect and follow runs"),
        (name = "plans", description = "Plan versions, diffs and renderings"),
        (name = "steering", description = "HITL answers, signals, cancel, pause, resume"),
        (name = "catalog", description = "Facets and capabilities"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_the_error_shape() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/v1/runs",
            "/v1/runs/{id}/events",
            "/v1/runs/{id}/plan/diff",
            "/v1/runs/{id}/hitl/{requestId}",
            "/healthz",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert!(doc["components"]["schemas"]["RunRequest"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn the_executor_schema_lists_the_known_types_and_a_custom_one() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let variants = doc["components"]["schemas"]["ExecutorDto"]["oneOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(variants.len(), 5, "{variants:?}");
        let custom = &variants[4];
        assert_eq!(custom["required"], serde_json::json!(["type"]));
        assert_eq!(custom["additionalProperties"], true);
    }
}
