//! A corpus of planner replies as real models write them, each with the diagnostic codes the
//! engine answers with. Shared by the HTTP scenarios (a wire-level fake model behind the
//! OpenAI-compatible planner), the library scenarios (the same text through the
//! ScriptedPlanner) and the convergence driver.

use flexrun::diagnostics::Diagnostic;
use flexrun::fsm::{EventBody, PlannerOutput, RunEvent, RunOutcome};
use serde_json::{Value, json};

/// The run's required outputs.
pub const OUTPUTS: &[&str] = &["copyVariants", "summary"];

/// A correct initial draft: brief → write → sum.
pub const DRAFT: &str = r#"{"nodes":[
 {"id":"brief","stage":"structuring","capabilityId":"brief.structurer","kind":"structuring",
  "inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],"instructions":[],"rationale":"structure the brief"},
 {"id":"write","stage":"generation","capabilityId":"writer.en","kind":"execution",
  "inputFacets":["writerBrief"],"outputFacets":["copyVariants"],"instructions":["keep it short"],"rationale":"write"},
 {"id":"sum","stage":"summary","capabilityId":"copy.summarizer","kind":"transformation",
  "inputFacets":["copyVariants"],"outputFacets":["summary"],"instructions":[],"rationale":"summarise"}],
 "edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}],
 "systemInstructions":"be concise","rationale":"structure, write, summarise"}"#;

/// A correct delta for the replan the policy asks after `brief` completed: a QA pass after
/// `write`.
pub const DELTA: &str = r#"{"baseVersion":1,"rationale":"add a QA pass","operations":[
 {"op":"addNode","node":{"id":"qa","stage":"qa","capabilityId":"qa.copy","kind":"validation",
  "inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"],"instructions":[],"rationale":"check"}},
 {"op":"addEdge","from":"write","to":"qa"}]}"#;

/// One realistic reply and what the engine must answer.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Short name.
    pub name: &'static str,
    /// A replan reply (the run first plans [`DRAFT`], completes `brief`, then replans).
    pub replan: bool,
    /// The reply's message content.
    pub reply: &'static str,
    /// Error codes of the `plan_rejected` (in order); empty when the reply is accepted.
    pub errors: &'static [&'static str],
    /// Warning codes on the `plan_accepted` / `plan_updated` of an accepted reply.
    pub warnings: &'static [&'static str],
}

impl Case {
    /// Whether the reply is rejected.
    pub fn rejected(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The reply that is right, sent after a rejection.
    pub fn fixed(&self) -> &'static str {
        if self.replan { DELTA } else { DRAFT }
    }
}

/// The run's policies: a QA replan once `brief.structurer` completed (replan cases only),
/// at most 4 nodes, `writer.formal` forbidden, 3 attempts.
pub fn policies(replan: bool) -> Value {
    let mut policies = json!({"planner": {"maxAttempts": 3, "maxNodes": 4,
        "forbiddenCapabilities": ["writer.formal"]}});
    if replan {
        policies["runtime"] = json!([{"id": "qa-gate",
            "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "brief.structurer"}},
            "action": {"type": "replan", "rationale": "add a QA pass"}}]);
    }
    policies
}

/// The run envelope of a case.
pub fn envelope(replan: bool) -> Value {
    json!({
        "objective": "tagline for a bakery",
        "inputs": {"objectiveBrief": "Fresh sourdough baked daily, for busy parents. Playful tone"},
        "outputContract": {"mode": "facets", "facets": OUTPUTS},
        "policies": policies(replan),
    })
}

const fn initial(
    name: &'static str,
    reply: &'static str,
    errors: &'static [&'static str],
    warnings: &'static [&'static str],
) -> Case {
    Case {
        name,
        replan: false,
        reply,
        errors,
        warnings,
    }
}

const fn replan(
    name: &'static str,
    reply: &'static str,
    errors: &'static [&'static str],
    warnings: &'static [&'static str],
) -> Case {
    Case {
        name,
        replan: true,
        reply,
        errors,
        warnings,
    }
}

/// The corpus.
pub const CASES: &[Case] = &[
    initial(
        "fenced JSON",
        "```json\n{\"nodes\":[{\"id\":\"brief\",\"capabilityId\":\"brief.structurer\",\"kind\":\"structuring\",\"inputFacets\":[\"objectiveBrief\"],\"outputFacets\":[\"writerBrief\"]},{\"id\":\"write\",\"capabilityId\":\"writer.en\",\"kind\":\"execution\",\"inputFacets\":[\"writerBrief\"],\"outputFacets\":[\"copyVariants\"]},{\"id\":\"sum\",\"capabilityId\":\"copy.summarizer\",\"kind\":\"transformation\",\"inputFacets\":[\"copyVariants\"],\"outputFacets\":[\"summary\"]}],\"edges\":[{\"from\":\"brief\",\"to\":\"write\"},{\"from\":\"write\",\"to\":\"sum\"}]}\n```",
        &[],
        &["REPLY_EXTRACTED"],
    ),
    initial(
        "prose before and after",
        "Sure! Here is a plan that structures the brief, writes the copy and summarises it:\n{\"nodes\":[{\"id\":\"brief\",\"capabilityId\":\"brief.structurer\",\"kind\":\"structuring\",\"inputFacets\":[\"objectiveBrief\"],\"outputFacets\":[\"writerBrief\"]},{\"id\":\"write\",\"capabilityId\":\"writer.en\",\"kind\":\"execution\",\"inputFacets\":[\"writerBrief\"],\"outputFacets\":[\"copyVariants\"]},{\"id\":\"sum\",\"capabilityId\":\"copy.summarizer\",\"kind\":\"transformation\",\"inputFacets\":[\"copyVariants\"],\"outputFacets\":[\"summary\"]}],\"edges\":[{\"from\":\"brief\",\"to\":\"write\"},{\"from\":\"write\",\"to\":\"sum\"}]}\nLet me know if you want a formal tone instead.",
        &[],
        &["REPLY_EXTRACTED"],
    ),
    initial(
        "hallucinated capability",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"ghostwriter","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &["CAPABILITY_NOT_REGISTERED"],
        &[],
    ),
    initial(
        "wrong kind",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"validation","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &[],
        &["CAPABILITY_KIND_MISMATCH"],
    ),
    initial(
        "missing kind",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &[],
        &["REPLY_FIELD_FILLED"],
    ),
    initial(
        "extra fields",
        r#"{"plan_name":"bakery","nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],"dependsOn":[]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &[],
        &["REPLY_UNKNOWN_FIELD", "REPLY_UNKNOWN_FIELD"],
    ),
    initial(
        "instructions as one string",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"],"instructions":"keep it playful"},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &[],
        &["REPLY_VALUE_COERCED"],
    ),
    initial(
        "missing edge for a data dependency",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"write","to":"sum"}]}"#,
        &["INPUT_FACET_UNSATISFIED"],
        &[],
    ),
    initial(
        "edge to an unknown node",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"},{"from":"sum","to":"publish"}]}"#,
        &["DANGLING_EDGE"],
        &[],
    ),
    initial(
        "cycle",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"},{"from":"sum","to":"brief"}]}"#,
        &["CYCLE"],
        &[],
    ),
    initial(
        "duplicate ids",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"write","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"}]}"#,
        &["DUPLICATE_NODE_ID", "INPUT_FACET_UNSATISFIED"],
        &[],
    ),
    initial(
        "unknown facet",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief","toneGuide"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &["UNKNOWN_FACET"],
        &[],
    ),
    initial(
        "facet the capability does not declare",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants","summary"]}],"edges":[{"from":"brief","to":"write"}]}"#,
        &["CAPABILITY_FACET_MISMATCH"],
        &[],
    ),
    initial(
        "required output not produced",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]}],"edges":[{"from":"brief","to":"write"}]}"#,
        &["OUTPUT_FACET_UNCOVERED"],
        &[],
    ),
    initial(
        "empty plan",
        r#"{"nodes":[],"edges":[],"rationale":"nothing to do"}"#,
        &[
            "EMPTY_PLAN",
            "OUTPUT_FACET_UNCOVERED",
            "OUTPUT_FACET_UNCOVERED",
        ],
        &[],
    ),
    initial(
        "truncated JSON",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"wri"#,
        &["REPLY_NOT_JSON"],
        &[],
    ),
    initial(
        "trailing comma",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],},],"edges":[]}"#,
        &["REPLY_NOT_JSON"],
        &[],
    ),
    initial(
        "prose only",
        "I'm sorry, but I need more information about the bakery before I can plan this.",
        &["REPLY_NOT_JSON"],
        &[],
    ),
    initial(
        "nodes as an object",
        r#"{"nodes":{"brief":{"capabilityId":"brief.structurer","kind":"structuring"}},"edges":[]}"#,
        &["REPLY_SHAPE"],
        &[],
    ),
    initial(
        "a JSON array at the root",
        r#"[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring"}]"#,
        &["REPLY_SHAPE"],
        &[],
    ),
    initial(
        "node without a capability id",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]}],"edges":[{"from":"brief","to":"write"}]}"#,
        &["REPLY_SHAPE"],
        &[],
    ),
    initial(
        "a delta for an initial plan",
        r#"{"baseVersion":0,"operations":[{"op":"addNode","node":{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]}}]}"#,
        &["PLANNER_OUTPUT_INVALID"],
        &[],
    ),
    initial(
        "forbidden capability",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.formal","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &["POLICY_FORBIDDEN_CAPABILITY"],
        &[],
    ),
    initial(
        "too many nodes",
        r#"{"nodes":[{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"keys","capabilityId":"keywords.extract","kind":"transformation","inputFacets":["objectiveBrief"],"outputFacets":["keywords"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"qa","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"brief","to":"write"},{"from":"write","to":"qa"},{"from":"brief","to":"qa"},{"from":"write","to":"sum"}]}"#,
        &["POLICY_MAX_NODES_EXCEEDED"],
        &[],
    ),
    initial(
        "node id with surrounding spaces",
        r#"{"nodes":[{"id":" brief ","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":" brief ","to":"write"},{"from":"write","to":"sum"}]}"#,
        &["INVALID_NODE_ID"],
        &[],
    ),
    initial(
        "node id with a path and a dot-dot segment",
        r#"{"nodes":[{"id":"steps/../brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},{"id":"write","capabilityId":"writer.en","kind":"execution","inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},{"id":"sum","capabilityId":"copy.summarizer","kind":"transformation","inputFacets":["copyVariants"],"outputFacets":["summary"]}],"edges":[{"from":"steps/../brief","to":"write"},{"from":"write","to":"sum"}]}"#,
        &["INVALID_NODE_ID"],
        &[],
    ),
    replan(
        "delta adding a node whose id has a space",
        r#"{"baseVersion":1,"rationale":"add QA","operations":[{"op":"addNode","node":{"id":"qa pass","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]}},{"op":"addEdge","from":"write","to":"qa pass"}]}"#,
        &["INVALID_NODE_ID", "DANGLING_EDGE"],
        &[],
    ),
    replan(
        "delta on a stale base version",
        r#"{"baseVersion":2,"rationale":"add QA","operations":[{"op":"addNode","node":{"id":"qa","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]}},{"op":"addEdge","from":"write","to":"qa"}]}"#,
        &["STALE_BASE_VERSION"],
        &[],
    ),
    replan(
        "delta that replaces a completed node",
        r#"{"baseVersion":1,"rationale":"restructure","operations":[{"op":"replaceNode","node":{"id":"brief","capabilityId":"brief.structurer","kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],"instructions":["again"]}}]}"#,
        &["COMPLETED_NODE_MODIFIED"],
        &[],
    ),
    replan(
        "delta that removes a completed node",
        r#"{"baseVersion":1,"rationale":"drop the brief","operations":[{"op":"removeNode","nodeId":"brief"}]}"#,
        &["COMPLETED_NODE_MODIFIED"],
        &[],
    ),
    replan(
        "delta that removes a node others depend on",
        r#"{"baseVersion":1,"rationale":"skip writing","operations":[{"op":"removeNode","nodeId":"write"}]}"#,
        &["INPUT_FACET_UNSATISFIED", "OUTPUT_FACET_UNCOVERED"],
        &[],
    ),
    replan(
        "delta with an edge to an unknown node",
        r#"{"baseVersion":1,"rationale":"add QA","operations":[{"op":"addNode","node":{"id":"qa","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]}},{"op":"addEdge","from":"writer","to":"qa"}]}"#,
        &["DANGLING_EDGE"],
        &[],
    ),
    replan(
        "delta missing the edge its new node needs",
        r#"{"baseVersion":1,"rationale":"add QA","operations":[{"op":"addNode","node":{"id":"qa","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]}}]}"#,
        &["INPUT_FACET_UNSATISFIED"],
        &[],
    ),
    replan(
        "delta removing an edge that does not exist",
        r#"{"baseVersion":1,"rationale":"add QA","operations":[{"op":"addNode","node":{"id":"qa","capabilityId":"qa.copy","kind":"validation","inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"]}},{"op":"addEdge","from":"write","to":"qa"},{"op":"removeEdge","from":"brief","to":"sum"}]}"#,
        &["UNKNOWN_EDGE"],
        &[],
    ),
    replan(
        "delta with an unknown operation",
        r#"{"baseVersion":1,"rationale":"add QA","operations":[{"op":"insertNode","node":{"id":"qa","capabilityId":"qa.copy","kind":"validation"}}]}"#,
        &["REPLY_SHAPE"],
        &[],
    ),
    replan(
        "a whole draft for a replan",
        DRAFT,
        &["PLANNER_OUTPUT_INVALID"],
        &[],
    ),
    replan(
        "no change",
        r#"{"baseVersion":1,"rationale":"the plan already covers the trigger","operations":[]}"#,
        &[],
        &[],
    ),
    replan(
        "fenced delta with prose",
        "Here is the change:\n```json\n{\"baseVersion\":1,\"rationale\":\"add a QA pass\",\"operations\":[{\"op\":\"addNode\",\"node\":{\"id\":\"qa\",\"capabilityId\":\"qa.copy\",\"kind\":\"validation\",\"inputFacets\":[\"copyVariants\",\"writerBrief\"],\"outputFacets\":[\"qaReport\"]}},{\"op\":\"addEdge\",\"from\":\"write\",\"to\":\"qa\"}]}\n```",
        &[],
        &["REPLY_EXTRACTED"],
    ),
];

/// Error codes of the first `plan_rejected`.
pub fn rejected_codes(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::PlanRejected { diagnostics, .. } => Some(codes(diagnostics, true)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Warning codes of the case's plan version: the last `plan_accepted` (initial cases) or
/// `plan_updated` (replan cases).
pub fn accepted_warnings(case: &Case, events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .rev()
        .find_map(|e| match (&e.body, case.replan) {
            (EventBody::PlanAccepted { warnings, .. }, false)
            | (EventBody::PlanUpdated { warnings, .. }, true) => Some(codes(warnings, false)),
            _ => None,
        })
        .unwrap_or_default()
}

/// The codes of `diagnostics` of one severity, in order.
pub fn codes(diagnostics: &[Diagnostic], errors: bool) -> Vec<String> {
    diagnostics
        .iter()
        .filter(|d| d.is_error() == errors)
        .map(|d| d.code.as_str().to_owned())
        .collect()
}

/// Everything the corpus promises of one run: the rejection's exact codes, the acceptance's
/// warnings, an `unparsed` record for what could not be read, and a completed run.
pub fn assert_run(case: &Case, events: &[RunEvent]) {
    let kinds: Vec<&str> = events.iter().map(|e| e.kind().as_str()).collect();
    assert_eq!(
        rejected_codes(events),
        case.errors,
        "{}: {kinds:?}",
        case.name
    );
    let warnings = if case.rejected() {
        &[][..]
    } else {
        case.warnings
    };
    assert_eq!(accepted_warnings(case, events), warnings, "{}", case.name);
    let rejections = kinds.iter().filter(|k| **k == "plan_rejected").count();
    assert_eq!(
        rejections,
        usize::from(case.rejected()),
        "{}: {kinds:?}",
        case.name
    );
    let no_planner_errors = events
        .iter()
        .all(|e| !matches!(&e.body, EventBody::PlanRequested { error: Some(_), .. }));
    assert!(
        no_planner_errors,
        "{}: a wrong reply is never a planner error",
        case.name
    );
    let unreadable = case.errors.iter().any(|c| c.starts_with("REPLY_"));
    let unparsed = events.iter().any(|e| {
        matches!(&e.body, EventBody::PlanGenerated { output, .. }
            if matches!(output.as_ref(), PlannerOutput::Unparsed(r) if !r.content.is_empty() || case.reply.is_empty()))
    });
    assert_eq!(
        unparsed, unreadable,
        "{}: unreadable replies are recorded as unparsed",
        case.name
    );
    match events.last().map(|e| &e.body) {
        Some(EventBody::Complete { status, .. }) => {
            assert_eq!(*status, RunOutcome::Completed, "{}: {kinds:?}", case.name)
        }
        other => panic!("{}: the run did not complete: {other:?}", case.name),
    }
}
