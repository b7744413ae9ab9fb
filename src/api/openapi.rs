//! The OpenAPI document, generated from the handlers' annotations and the DTOs.
//!
//! Two modifiers finish what the annotations leave out, over the whole document so that a
//! new route or DTO cannot miss them:
//! - [`NamedVariants`]: every inline object variant of a `oneOf` becomes a component of its
//!   own, so that code generators produce one model per variant (an internally tagged enum
//!   also gets a discriminator);
//! - [`CommonErrors`]: the 401 of every route behind the bearer token and the 413 / 415 of
//!   every route with a JSON body, with the error body.

use std::collections::BTreeMap;

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Discriminator, Object, OneOf, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema};

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
    modifiers(&BearerAuth, &NamedVariants, &CommonErrors),
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

/// Moves the inline object variants of every `oneOf` component into components of their
/// own, referenced from the `oneOf`.
///
/// A variant is named after the value of its tag (a string property that allows one value,
/// the same property in every variant) followed by the union's name without `Dto`:
/// `OutputContractDto`'s `json_schema` variant becomes `JsonSchemaOutputContract`. A variant
/// without a tag must carry a `title`, which becomes its name. When every variant has the
/// tag, the union gets a discriminator on it with one mapping per value.
struct NamedVariants;

impl Modify for NamedVariants {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut extracted = BTreeMap::new();
        for (union, schema) in &mut components.schemas {
            if let RefOr::T(Schema::OneOf(one_of)) = schema {
                name_variants(union, one_of, &mut extracted);
            }
        }
        for (name, variant) in extracted {
            let clash = components.schemas.insert(name.clone(), variant);
            assert!(clash.is_none(), "the variant component `{name}` clashes");
        }
    }
}

fn name_variants(union: &str, one_of: &mut OneOf, extracted: &mut BTreeMap<String, RefOr<Schema>>) {
    let inline: Vec<&Object> = one_of
        .items
        .iter()
        .filter_map(|item| match item {
            RefOr::T(Schema::Object(object)) if !object.properties.is_empty() => Some(object),
            _ => None,
        })
        .collect();
    if inline.is_empty() {
        return;
    }
    let tag = inline
        .first()
        .and_then(|first| {
            first
                .properties
                .keys()
                .find(|key| inline.iter().any(|o| tag_value(o, key).is_some()))
        })
        .cloned();
    let base = union.strip_suffix("Dto").unwrap_or(union);
    let mut mapping = BTreeMap::new();
    for item in &mut one_of.items {
        let RefOr::T(Schema::Object(object)) = item else {
            continue;
        };
        if object.properties.is_empty() {
            continue;
        }
        let value = tag.as_deref().and_then(|tag| tag_value(object, tag));
        let name = match (&value, &object.title) {
            (Some(value), _) => format!("{}{base}", pascal(value)),
            (None, Some(title)) => title.clone(),
            (None, None) => panic!("a variant of `{union}` has neither a tag nor a title"),
        };
        let reference = format!("#/components/schemas/{name}");
        if let Some(value) = value {
            mapping.insert(value, reference.clone());
        }
        let variant = std::mem::replace(item, RefOr::Ref(Ref::new(reference)));
        assert!(
            extracted.insert(name.clone(), variant).is_none(),
            "two variants are named `{name}`"
        );
    }
    if let Some(tag) = tag.filter(|_| mapping.len() == one_of.items.len()) {
        let mut discriminator = Discriminator::new(tag);
        discriminator.mapping = mapping;
        one_of.discriminator = Some(discriminator);
    }
}

/// The one value a string property `key` of `object` allows.
fn tag_value(object: &Object, key: &str) -> Option<String> {
    let RefOr::T(Schema::Object(property)) = object.properties.get(key)? else {
        return None;
    };
    match property.enum_values.as_deref() {
        Some([serde_json::Value::String(value)]) => Some(value.clone()),
        _ => None,
    }
}

/// `json_schema` → `JsonSchema`.
fn pascal(value: &str) -> String {
    value
        .split(['_', '-', '.'])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect()
}

/// Documents the errors every route of a kind can answer: 401 on each route behind the
/// bearer token (all but those whose `security` is `[{}]`), 413 and 415 on each route that
/// takes a JSON body.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let global = openapi.security.clone().unwrap_or_default();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_common_errors(operation, &global);
            }
        }
    }
}

fn add_common_errors(operation: &mut Operation, global: &[SecurityRequirement]) {
    let security = operation.security.as_deref().unwrap_or(global);
    let open = security.is_empty() || security.contains(&SecurityRequirement::default());
    let responses = &mut operation.responses.responses;
    if !open {
        let unauthorized = error_response(
            "`UNAUTHORIZED`: the server requires a bearer token (`--auth-token-env`) and the \
             request has none or another one",
        );
        let challenge = HeaderBuilder::new()
            .schema(String::schema())
            .description(Some("`Bearer`"))
            .build();
        let mut unauthorized = unauthorized;
        unauthorized
            .headers
            .insert("WWW-Authenticate".to_owned(), challenge);
        responses.insert("401".to_owned(), unauthorized.into());
    }
    if operation.request_body.is_some() {
        responses.insert(
            "413".to_owned(),
            error_response(
                "`PAYLOAD_TOO_LARGE`: the body is larger than the server's limit \
                 (`--body-limit`, 1 MiB by default)",
            )
            .into(),
        );
        responses.insert(
            "415".to_owned(),
            error_response(
                "`UNSUPPORTED_MEDIA_TYPE`: a body without `content-type: application/json`",
            )
            .into(),
        );
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    use utoipa::openapi::{ComponentsBuilder, OpenApiBuilder};

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
        assert_eq!(
            variants[4]["$ref"], "#/components/schemas/CustomExecutor",
            "{variants:?}"
        );
        let custom = &doc["components"]["schemas"]["CustomExecutor"];
        assert_eq!(custom["required"], serde_json::json!(["type"]));
        assert_eq!(custom["additionalProperties"], true);
        assert!(
            doc["components"]["schemas"]["ExecutorDto"]["discriminator"].is_null(),
            "a custom type has no tag value to map"
        );
    }

    #[test]
    fn inline_variants_become_components_named_after_their_tag() {
        let variant = |mode: &str, field: &str| {
            ObjectBuilder::new()
                .property(
                    "mode",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([mode])),
                )
                .property(field, ObjectBuilder::new().schema_type(Type::String))
                .required("mode")
        };
        let mut doc = OpenApiBuilder::new()
            .components(Some(
                ComponentsBuilder::new()
                    .schema(
                        "ShapeDto",
                        OneOfBuilder::new()
                            .item(variant("round_thing", "radius"))
                            .item(variant("box", "side")),
                    )
                    .build(),
            ))
            .build();
        NamedVariants.modify(&mut doc);
        let doc = serde_json::to_value(doc).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["ShapeDto"]["oneOf"],
            serde_json::json!([
                {"$ref": "#/components/schemas/RoundThingShape"},
                {"$ref": "#/components/schemas/BoxShape"},
            ])
        );
        assert_eq!(
            schemas["ShapeDto"]["discriminator"],
            serde_json::json!({"propertyName": "mode", "mapping": {
                "box": "#/components/schemas/BoxShape",
                "round_thing": "#/components/schemas/RoundThingShape",
            }})
        );
        assert!(schemas["RoundThingShape"]["properties"]["radius"].is_object());
        assert!(schemas["BoxShape"]["properties"]["side"].is_object());
    }
}
