//! Plan fixtures shared by the test binaries (included with `#[path]`).

use flexrun::catalog::CapabilityKind;
use flexrun::graph::{PlanDraft, PlanEdge, PlanNode};

/// A plan node with the given facets.
pub fn node(
    id: &str,
    cap: &str,
    kind: CapabilityKind,
    inputs: &[&str],
    outputs: &[&str],
) -> PlanNode {
    PlanNode {
        id: id.into(),
        stage: "s".into(),
        capability_id: cap.into(),
        kind,
        input_facets: inputs.iter().map(|s| s.to_string()).collect(),
        output_facets: outputs.iter().map(|s| s.to_string()).collect(),
        instructions: vec![],
        rationale: String::new(),
    }
}

/// brief (brief.structurer) → write (`writer`): the demo catalog's two-step copy plan.
pub fn draft(writer: &str) -> PlanDraft {
    PlanDraft {
        nodes: vec![
            node(
                "brief",
                "brief.structurer",
                CapabilityKind::Structuring,
                &["objectiveBrief"],
                &["writerBrief"],
            ),
            node(
                "write",
                writer,
                CapabilityKind::Execution,
                &["writerBrief"],
                &["copyVariants"],
            ),
        ],
        edges: vec![PlanEdge::new("brief", "write")],
        system_instructions: "be brief".into(),
        rationale: "two steps".into(),
    }
}
