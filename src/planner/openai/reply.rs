//! Strict checking of a planner reply: JSON, then the schema that was sent, then the DTO.

use serde_json::Value;

use super::client::shorten;
use crate::fsm::PlannerOutput;
use crate::graph::{PlanDelta, PlanDraft};
use crate::planner::Purpose;

/// Most schema violations quoted in an error.
const QUOTED_ERRORS: usize = 5;

/// The JSON text of a reply, without the Markdown fence some servers add when they do not
/// enforce the schema.
pub(crate) fn unfenced(content: &str) -> &str {
    let t = content.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// Parses and checks a reply against `schema`.
///
/// # Errors
/// A message saying what is wrong (not JSON, which schema paths fail, …) and quoting the
/// start of the reply; callers turn it into a retryable planner error.
pub(crate) fn parse_plan(
    content: &str,
    schema: &Value,
    purpose: Purpose,
) -> Result<PlannerOutput, String> {
    let what = match purpose {
        Purpose::Initial => "draft",
        Purpose::Replan => "delta",
    };
    let text = unfenced(content);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "the {what} reply is not valid JSON ({e}); it starts with `{}`",
            shorten(text, 160)
        )
    })?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the {what} reply schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| {
            let at = e.instance_path().as_str().to_owned();
            let at = if at.is_empty() {
                "(root)".to_owned()
            } else {
                at
            };
            format!("{at}: {}", shorten(&e.to_string(), 200))
        })
        .collect();
    if !errors.is_empty() {
        let more = errors.len().saturating_sub(QUOTED_ERRORS);
        let mut text = errors
            .into_iter()
            .take(QUOTED_ERRORS)
            .collect::<Vec<_>>()
            .join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        return Err(format!(
            "the {what} reply does not match its schema: {text}"
        ));
    }
    let output = match purpose {
        Purpose::Initial => serde_json::from_value::<PlanDraft>(value).map(PlannerOutput::Draft),
        Purpose::Replan => serde_json::from_value::<PlanDelta>(value).map(PlannerOutput::Delta),
    };
    output.map_err(|e| format!("the {what} reply does not fit the {what} shape: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::Capability;
    use crate::demo;
    use crate::planner::openai::schema::{Bounds, delta_schema, draft_schema};

    fn schema() -> Value {
        let caps = demo::capabilities();
        let refs: Vec<&Capability> = caps.iter().collect();
        draft_schema(
            &refs,
            &Bounds {
                max_nodes: 5,
                max_string: Some(100),
            },
        )
    }

    const GOOD: &str = r#"{"nodes":[{"id":"brief","stage":"structuring","capabilityId":"brief.structurer",
        "kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],
        "instructions":[],"rationale":"structure"}],"edges":[],"systemInstructions":"","rationale":"r"}"#;

    #[test]
    fn a_valid_draft_parses_even_inside_a_fence() {
        let out = parse_plan(GOOD, &schema(), Purpose::Initial).unwrap();
        let PlannerOutput::Draft(d) = out else {
            panic!("{out:?}")
        };
        assert_eq!(d.nodes[0].capability_id, "brief.structurer");
        let fenced = format!("```json\n{GOOD}\n```");
        assert!(parse_plan(&fenced, &schema(), Purpose::Initial).is_ok());
    }

    #[test]
    fn malformed_json_is_described_not_panicked() {
        let e = parse_plan(r#"{"nodes": [ {"id": "a""#, &schema(), Purpose::Initial).unwrap_err();
        assert!(e.starts_with("the draft reply is not valid JSON"), "{e}");
        assert!(e.contains(r#"{"nodes""#), "quotes the reply: {e}");
        let e = parse_plan("", &schema(), Purpose::Initial).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn schema_mismatches_name_their_paths() {
        let e = parse_plan(
            r#"{"nodes":[{"id":"x"}],"edges":[]}"#,
            &schema(),
            Purpose::Initial,
        )
        .unwrap_err();
        assert!(
            e.starts_with("the draft reply does not match its schema"),
            "{e}"
        );
        assert!(e.contains("(root)") && e.contains("/nodes/0"), "{e}");
        let many: Vec<Value> = (0..9)
            .map(|i| json!({"from": format!("n{i}"), "to": 3}))
            .collect();
        let v = json!({"nodes": [], "edges": many, "systemInstructions": "", "rationale": ""});
        let e = parse_plan(&v.to_string(), &schema(), Purpose::Initial).unwrap_err();
        assert!(e.contains("more"), "long error lists are cut: {e}");
    }

    #[test]
    fn a_delta_reply_becomes_a_delta() {
        let caps = demo::capabilities();
        let refs: Vec<&Capability> = caps.iter().collect();
        let schema = delta_schema(
            &refs,
            None,
            &[],
            &Bounds {
                max_nodes: 5,
                max_string: None,
            },
        );
        let out = parse_plan(
            r#"{"baseVersion":1,"rationale":"qa","operations":[{"op":"addEdge","from":"a","to":"b"}]}"#,
            &schema,
            Purpose::Replan,
        )
        .unwrap();
        assert!(matches!(out, PlannerOutput::Delta(d) if d.operations.len() == 1));
        let e = parse_plan(GOOD, &schema, Purpose::Replan).unwrap_err();
        assert!(e.contains("delta reply does not match"), "{e}");
    }
}
