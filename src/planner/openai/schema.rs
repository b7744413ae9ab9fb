//! The JSON Schemas sent as `response_format` for drafts and deltas (DESIGN §8 shapes).
//!
//! Every array has `maxItems` and every string a bounded length (unless configured off):
//! grammar-constrained small models otherwise loop until the token limit. Capability ids,
//! kinds and facet names are `enum`s drawn from the pruned catalog; with few enough
//! capabilities each node is an `anyOf` of one variant per capability, so a node's kind
//! and facets always fit its capability.

use serde_json::{Map, Value, json};

use crate::catalog::Capability;
use crate::graph::PlanSnapshot;

/// Most nodes a reply schema allows, whatever the policy says.
pub const NODE_CAP: u32 = 24;
/// Most delta operations a reply schema allows.
pub const OPERATION_CAP: u32 = 12;
/// Most node instructions a reply schema allows per node.
pub const INSTRUCTION_CAP: u32 = 3;
/// Up to this many capabilities, nodes are one `anyOf` variant per capability.
pub const VARIANT_CAP: usize = 24;

/// Pattern of node ids: short, lowercase, dash-separated.
pub const NODE_ID_PATTERN: &str = "^[a-z][a-z0-9-]{0,39}$";

/// Bounds applied to the reply schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub max_nodes: u32,
    pub max_string: Option<u32>,
}

impl Bounds {
    fn string(&self) -> Value {
        match self.max_string {
            Some(n) => json!({"type": "string", "maxLength": n}),
            None => json!({"type": "string"}),
        }
    }

    fn node_ref(&self) -> Value {
        json!({"type": "string", "pattern": NODE_ID_PATTERN})
    }
}

fn object(properties: Vec<(&str, Value)>) -> Value {
    let required: Vec<Value> = properties.iter().map(|(k, _)| json!(k)).collect();
    let props: Map<String, Value> = properties
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    let mut v: Vec<&str> = values.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    json!({"type": "string", "enum": v})
}

/// An array of exactly `names` (any order); an empty array when there are none.
fn facet_list(names: &[String]) -> Value {
    if names.is_empty() {
        return json!({"type": "array", "items": {"type": "string"}, "maxItems": 0});
    }
    json!({"type": "array", "items": string_enum(names.iter().map(String::as_str)),
           "minItems": names.len(), "maxItems": names.len()})
}

fn node_variant(cap: &Capability, b: &Bounds) -> Value {
    object(vec![
        ("id", b.node_ref()),
        ("stage", b.string()),
        ("capabilityId", string_enum([cap.capability_id.as_str()])),
        ("kind", string_enum([cap.kind.as_str()])),
        ("inputFacets", facet_list(&cap.input_facets)),
        ("outputFacets", facet_list(&cap.output_facets)),
        (
            "instructions",
            json!({"type": "array", "items": b.string(), "maxItems": INSTRUCTION_CAP}),
        ),
        ("rationale", b.string()),
    ])
}

fn node_generic(caps: &[&Capability], b: &Bounds) -> Value {
    let facets: Vec<&str> = caps
        .iter()
        .flat_map(|c| c.input_facets.iter().chain(&c.output_facets))
        .map(String::as_str)
        .collect();
    let widest = caps
        .iter()
        .map(|c| c.input_facets.len().max(c.output_facets.len()))
        .max()
        .unwrap_or(0);
    let facet_array = if facets.is_empty() {
        json!({"type": "array", "items": {"type": "string"}, "maxItems": 0})
    } else {
        json!({"type": "array", "items": string_enum(facets), "maxItems": widest})
    };
    object(vec![
        ("id", b.node_ref()),
        ("stage", b.string()),
        (
            "capabilityId",
            string_enum(caps.iter().map(|c| c.capability_id.as_str())),
        ),
        ("kind", string_enum(caps.iter().map(|c| c.kind.as_str()))),
        ("inputFacets", facet_array.clone()),
        ("outputFacets", facet_array),
        (
            "instructions",
            json!({"type": "array", "items": b.string(), "maxItems": INSTRUCTION_CAP}),
        ),
        ("rationale", b.string()),
    ])
}

/// The schema of one node over `caps` (must be non-empty).
pub(crate) fn node_schema(caps: &[&Capability], b: &Bounds) -> Value {
    if caps.len() == 1 {
        return node_variant(caps[0], b);
    }
    if caps.len() <= VARIANT_CAP {
        let variants: Vec<Value> = caps.iter().map(|c| node_variant(c, b)).collect();
        return json!({"anyOf": variants});
    }
    node_generic(caps, b)
}

fn edge_schema(b: &Bounds) -> Value {
    object(vec![("from", b.node_ref()), ("to", b.node_ref())])
}

/// The draft schema.
pub(crate) fn draft_schema(caps: &[&Capability], b: &Bounds) -> Value {
    let max_nodes = b.max_nodes.clamp(1, NODE_CAP);
    object(vec![
        (
            "nodes",
            json!({"type": "array", "items": node_schema(caps, b), "minItems": 1, "maxItems": max_nodes}),
        ),
        (
            "edges",
            json!({"type": "array", "items": edge_schema(b), "maxItems": (max_nodes * 2).min(2 * NODE_CAP)}),
        ),
        ("systemInstructions", b.string()),
        ("rationale", b.string()),
    ])
}

/// The delta schema against `plan`; `pending` are the ids of nodes not yet completed.
pub(crate) fn delta_schema(
    caps: &[&Capability],
    plan: Option<&PlanSnapshot>,
    pending: &[&str],
    b: &Bounds,
) -> Value {
    let op = |name: &str| string_enum([name]);
    let node = node_schema(caps, b);
    let mut variants = vec![
        object(vec![("op", op("addNode")), ("node", node.clone())]),
        object(vec![
            ("op", op("addEdge")),
            ("from", b.node_ref()),
            ("to", b.node_ref()),
        ]),
        object(vec![
            ("op", op("removeEdge")),
            ("from", b.node_ref()),
            ("to", b.node_ref()),
        ]),
    ];
    if !pending.is_empty() {
        variants.push(object(vec![("op", op("replaceNode")), ("node", node)]));
        variants.push(object(vec![
            ("op", op("removeNode")),
            ("nodeId", string_enum(pending.iter().copied())),
        ]));
    }
    let base = plan.map_or_else(
        || json!({"type": "integer", "minimum": 1}),
        |p| json!({"type": "integer", "enum": [p.version]}),
    );
    object(vec![
        ("baseVersion", base),
        ("rationale", b.string()),
        (
            "operations",
            json!({"type": "array", "items": {"anyOf": variants}, "maxItems": OPERATION_CAP}),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo;
    use crate::graph::{PlanDelta, PlanDraft, PlanEdge, PlanNode};

    fn bounds() -> Bounds {
        Bounds {
            max_nodes: 50,
            max_string: Some(200),
        }
    }

    fn node(id: &str, cap: &Capability) -> PlanNode {
        PlanNode {
            id: id.into(),
            stage: "s".into(),
            capability_id: cap.capability_id.clone(),
            kind: cap.kind,
            input_facets: cap.input_facets.clone(),
            output_facets: cap.output_facets.clone(),
            instructions: vec![],
            rationale: String::new(),
        }
    }

    #[test]
    fn a_catalog_draft_validates_and_a_mismatched_node_does_not() {
        let caps = demo::capabilities();
        let refs: Vec<&Capability> = caps.iter().collect();
        let schema = draft_schema(&refs, &bounds());
        let v = jsonschema::validator_for(&schema).unwrap();
        let draft = PlanDraft {
            nodes: vec![node("brief", &caps[0]), node("write", &caps[1])],
            edges: vec![PlanEdge::new("brief", "write")],
            system_instructions: String::new(),
            rationale: "r".into(),
        };
        let mut value = serde_json::to_value(&draft).unwrap();
        assert!(
            v.is_valid(&value),
            "{:?}",
            v.iter_errors(&value)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        value["nodes"][1]["kind"] = json!("validation");
        assert!(!v.is_valid(&value), "kind must fit the capability");
        value["nodes"][1]["kind"] = json!("execution");
        value["nodes"][1]["id"] = json!("Write Node");
        assert!(!v.is_valid(&value), "ids follow the pattern");
        value["nodes"][1]["id"] = json!("write");
        value["nodes"][1]["capabilityId"] = json!("writer.de");
        assert!(!v.is_valid(&value), "capability ids are an enum");
    }

    #[test]
    fn arrays_and_strings_are_bounded() {
        let caps = demo::capabilities();
        let refs: Vec<&Capability> = caps.iter().collect();
        let schema = draft_schema(
            &refs,
            &Bounds {
                max_nodes: 3,
                max_string: Some(10),
            },
        );
        assert_eq!(schema["properties"]["nodes"]["maxItems"], 3);
        assert_eq!(schema["properties"]["edges"]["maxItems"], 6);
        assert_eq!(schema["properties"]["rationale"]["maxLength"], 10);
        let big = draft_schema(&refs, &bounds());
        assert_eq!(big["properties"]["nodes"]["maxItems"], NODE_CAP);
        let unbounded = draft_schema(
            &refs,
            &Bounds {
                max_nodes: 3,
                max_string: None,
            },
        );
        assert!(
            unbounded["properties"]["rationale"]
                .get("maxLength")
                .is_none()
        );
    }

    #[test]
    fn many_capabilities_fall_back_to_one_generic_node() {
        let mut caps = Vec::new();
        for i in 0..(VARIANT_CAP + 1) {
            let mut c = demo::capabilities()[1].clone();
            c.capability_id = format!("writer.{i}");
            caps.push(c);
        }
        let refs: Vec<&Capability> = caps.iter().collect();
        let schema = node_schema(&refs, &bounds());
        assert!(schema.get("anyOf").is_none());
        assert_eq!(
            schema["properties"]["capabilityId"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            VARIANT_CAP + 1
        );
    }

    #[test]
    fn deltas_pin_the_base_version_and_removable_nodes() {
        let caps = demo::capabilities();
        let refs: Vec<&Capability> = caps.iter().collect();
        let plan = PlanSnapshot {
            version: 2,
            nodes: vec![node("brief", &caps[0]), node("write", &caps[1])],
            edges: vec![PlanEdge::new("brief", "write")],
            system_instructions: String::new(),
            rationale: String::new(),
        };
        let schema = delta_schema(&refs, Some(&plan), &["write"], &bounds());
        let v = jsonschema::validator_for(&schema).unwrap();
        let delta = PlanDelta {
            base_version: 2,
            rationale: "qa".into(),
            operations: vec![
                crate::graph::DeltaOp::AddNode {
                    node: node("qa", &caps[3]),
                },
                crate::graph::DeltaOp::AddEdge {
                    from: "write".into(),
                    to: "qa".into(),
                },
                crate::graph::DeltaOp::RemoveNode {
                    node_id: "write".into(),
                },
            ],
        };
        let mut value = serde_json::to_value(&delta).unwrap();
        assert!(
            v.is_valid(&value),
            "{:?}",
            v.iter_errors(&value)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        value["baseVersion"] = json!(1);
        assert!(!v.is_valid(&value), "stale base version");
        value["baseVersion"] = json!(2);
        value["operations"][2]["nodeId"] = json!("brief");
        assert!(!v.is_valid(&value), "only pending nodes may be removed");
        let none_pending = delta_schema(&refs, Some(&plan), &[], &bounds());
        let ops = none_pending["properties"]["operations"]["items"]["anyOf"]
            .as_array()
            .unwrap();
        assert_eq!(
            ops.len(),
            3,
            "no replace/remove variants without pending nodes"
        );
    }
}
