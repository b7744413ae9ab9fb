//! Structured diagnostics produced by validation and sent back to the planner.
//!
//! A draft or delta is rejected iff at least one diagnostic has [`Severity::Error`].
//! Codes are stable: they are part of the wire contract and documented in
//! `docs/DIAGNOSTICS.md`.

use serde::{Deserialize, Serialize};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The draft or delta cannot be accepted.
    Error,
    /// Worth telling the planner, but does not block acceptance.
    Warning,
}

/// Stable diagnostic codes (serialized as `SCREAMING_SNAKE_CASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum DiagnosticCode {
    /// A node names a capability the registry does not know.
    CapabilityNotRegistered,
    /// A node names a capability that is registered but inactive.
    CapabilityInactive,
    /// A node's `kind` differs from its capability's kind.
    CapabilityKindMismatch,
    /// A node uses a facet the capability does not declare.
    CapabilityFacetMismatch,
    /// A facet name is not in the catalog.
    UnknownFacet,
    /// A required output facet of the run is produced by no node.
    OutputFacetUncovered,
    /// A node input facet is neither produced upstream nor supplied by the run inputs.
    InputFacetUnsatisfied,
    /// The plan graph has a cycle.
    Cycle,
    /// An edge names a node that does not exist.
    DanglingEdge,
    /// Two nodes share one id.
    DuplicateNodeId,
    /// An edge is added twice or removed while absent.
    DuplicateEdge,
    /// An edge to remove does not exist.
    UnknownEdge,
    /// A delta names a node that does not exist.
    UnknownNode,
    /// A delta changes or removes a completed node.
    CompletedNodeModified,
    /// A delta changes or removes a running node.
    RunningNodeModified,
    /// A delta is based on a version other than the current one.
    StaleBaseVersion,
    /// A draft has no nodes, or a delta would leave the plan without nodes.
    EmptyPlan,
    /// A node id is empty or malformed.
    InvalidNodeId,
    /// A facet used in a direction it does not allow (e.g. an input-only facet as output).
    FacetContractDirectionMismatch,
    /// Two facets merged into one contract disagree on a property type.
    FacetContractTypeConflict,
    /// Two facets merged into one contract disagree on an enum.
    FacetContractEnumConflict,
    /// A facet schema or a compiled contract is not a valid JSON Schema.
    FacetContractSchemaInvalid,
    /// The plan exceeds the planner policy's maximum node count.
    PolicyMaxNodesExceeded,
    /// The plan uses a capability the planner policy forbids.
    PolicyForbiddenCapability,
    /// The plan uses a node kind the planner policy forbids.
    PolicyForbiddenKind,
    /// The plan lacks a capability or kind the planner policy requires.
    PolicyRequirementMissing,
    /// The planner returned something of the wrong shape (e.g. a delta for an initial plan).
    PlannerOutputInvalid,
    /// The reply holds no JSON object that parses (prose only, truncated or malformed JSON).
    ReplyNotJson,
    /// The reply is JSON but a field is missing or has the wrong type; `pointer`, `expected`
    /// and `found` say where and what.
    ReplyShape,
    /// The JSON object was taken out of a Markdown fence or surrounding prose (warning).
    ReplyExtracted,
    /// The reply has a field the draft or delta shape does not know; it was ignored (warning).
    ReplyUnknownField,
    /// A node field the reply left out (or gave an unknown value) was filled in from the
    /// node's capability (warning).
    ReplyFieldFilled,
    /// A single string was given where a list of strings is expected; it was read as a list
    /// of one (warning).
    ReplyValueCoerced,
}

impl DiagnosticCode {
    /// The stable wire spelling, e.g. `CAPABILITY_NOT_REGISTERED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CapabilityNotRegistered => "CAPABILITY_NOT_REGISTERED",
            Self::CapabilityInactive => "CAPABILITY_INACTIVE",
            Self::CapabilityKindMismatch => "CAPABILITY_KIND_MISMATCH",
            Self::CapabilityFacetMismatch => "CAPABILITY_FACET_MISMATCH",
            Self::UnknownFacet => "UNKNOWN_FACET",
            Self::OutputFacetUncovered => "OUTPUT_FACET_UNCOVERED",
            Self::InputFacetUnsatisfied => "INPUT_FACET_UNSATISFIED",
            Self::Cycle => "CYCLE",
            Self::DanglingEdge => "DANGLING_EDGE",
            Self::DuplicateNodeId => "DUPLICATE_NODE_ID",
            Self::DuplicateEdge => "DUPLICATE_EDGE",
            Self::UnknownEdge => "UNKNOWN_EDGE",
            Self::UnknownNode => "UNKNOWN_NODE",
            Self::CompletedNodeModified => "COMPLETED_NODE_MODIFIED",
            Self::RunningNodeModified => "RUNNING_NODE_MODIFIED",
            Self::StaleBaseVersion => "STALE_BASE_VERSION",
            Self::EmptyPlan => "EMPTY_PLAN",
            Self::InvalidNodeId => "INVALID_NODE_ID",
            Self::FacetContractDirectionMismatch => "FACET_CONTRACT_DIRECTION_MISMATCH",
            Self::FacetContractTypeConflict => "FACET_CONTRACT_TYPE_CONFLICT",
            Self::FacetContractEnumConflict => "FACET_CONTRACT_ENUM_CONFLICT",
            Self::FacetContractSchemaInvalid => "FACET_CONTRACT_SCHEMA_INVALID",
            Self::PolicyMaxNodesExceeded => "POLICY_MAX_NODES_EXCEEDED",
            Self::PolicyForbiddenCapability => "POLICY_FORBIDDEN_CAPABILITY",
            Self::PolicyForbiddenKind => "POLICY_FORBIDDEN_KIND",
            Self::PolicyRequirementMissing => "POLICY_REQUIREMENT_MISSING",
            Self::PlannerOutputInvalid => "PLANNER_OUTPUT_INVALID",
            Self::ReplyNotJson => "REPLY_NOT_JSON",
            Self::ReplyShape => "REPLY_SHAPE",
            Self::ReplyExtracted => "REPLY_EXTRACTED",
            Self::ReplyUnknownField => "REPLY_UNKNOWN_FIELD",
            Self::ReplyFieldFilled => "REPLY_FIELD_FILLED",
            Self::ReplyValueCoerced => "REPLY_VALUE_COERCED",
        }
    }

    /// Every code, in declaration order (used by the docs drift test).
    pub const ALL: &'static [DiagnosticCode] = &[
        Self::CapabilityNotRegistered,
        Self::CapabilityInactive,
        Self::CapabilityKindMismatch,
        Self::CapabilityFacetMismatch,
        Self::UnknownFacet,
        Self::OutputFacetUncovered,
        Self::InputFacetUnsatisfied,
        Self::Cycle,
        Self::DanglingEdge,
        Self::DuplicateNodeId,
        Self::DuplicateEdge,
        Self::UnknownEdge,
        Self::UnknownNode,
        Self::CompletedNodeModified,
        Self::RunningNodeModified,
        Self::StaleBaseVersion,
        Self::EmptyPlan,
        Self::InvalidNodeId,
        Self::FacetContractDirectionMismatch,
        Self::FacetContractTypeConflict,
        Self::FacetContractEnumConflict,
        Self::FacetContractSchemaInvalid,
        Self::PolicyMaxNodesExceeded,
        Self::PolicyForbiddenCapability,
        Self::PolicyForbiddenKind,
        Self::PolicyRequirementMissing,
        Self::PlannerOutputInvalid,
        Self::ReplyNotJson,
        Self::ReplyShape,
        Self::ReplyExtracted,
        Self::ReplyUnknownField,
        Self::ReplyFieldFilled,
        Self::ReplyValueCoerced,
    ];
}

impl std::fmt::Display for DiagnosticCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about a draft, a delta or a node contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Stable machine-readable code.
    pub code: DiagnosticCode,
    /// Error or warning.
    pub severity: Severity,
    /// Human-readable explanation naming the offending input.
    pub message: String,
    /// The plan node concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The capability concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_id: Option<String>,
    /// The facet concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facet: Option<String>,
    /// A suggestion for the planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Where in the planner's reply, as a JSON pointer (`/nodes/1/kind`), for reply findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// What the shape expects at `pointer` (e.g. `string`, `one of: structuring, execution`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the reply holds there, shortened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// Ids that would fix the finding (capabilities or nodes), best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<String>,
}

impl Diagnostic {
    /// An error diagnostic with the given code and message.
    pub fn error(code: DiagnosticCode, message: impl Into<String>) -> Self {
        Self {
            code,
            severity: Severity::Error,
            message: message.into(),
            node_id: None,
            capability_id: None,
            facet: None,
            hint: None,
            pointer: None,
            expected: None,
            found: None,
            suggestions: Vec::new(),
        }
    }

    /// A warning diagnostic with the given code and message.
    pub fn warning(code: DiagnosticCode, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    /// Names the node concerned.
    pub fn node(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Names the capability concerned.
    pub fn capability(mut self, capability_id: impl Into<String>) -> Self {
        self.capability_id = Some(capability_id.into());
        self
    }

    /// Names the facet concerned.
    pub fn facet(mut self, facet: impl Into<String>) -> Self {
        self.facet = Some(facet.into());
        self
    }

    /// Adds a hint for the planner.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Names the place in the reply (a JSON pointer).
    pub fn at(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    /// Says what was expected and what was found.
    pub fn expected_found(mut self, expected: impl Into<String>, found: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self.found = Some(found.into());
        self
    }

    /// Lists ids that would fix the finding.
    pub fn suggest<'s>(mut self, ids: impl IntoIterator<Item = &'s str>) -> Self {
        self.suggestions = ids.into_iter().map(str::to_owned).collect();
        self
    }

    /// True when this diagnostic blocks acceptance.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// True when any diagnostic in the list is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_spelling() {
        for code in DiagnosticCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }

    #[test]
    fn warnings_do_not_block() {
        let w = Diagnostic::warning(DiagnosticCode::UnknownFacet, "facet `x` unused");
        let e = Diagnostic::error(DiagnosticCode::Cycle, "cycle through `a`").node("a");
        assert!(!has_errors(std::slice::from_ref(&w)));
        assert!(has_errors(&[w, e.clone()]));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["code"], "CYCLE");
        assert_eq!(json["nodeId"], "a");
        assert!(json.get("facet").is_none());
    }
}
