//! Reading a planner's text reply into a draft or delta: the one path every planner that
//! answers in text (a model, a script of model replies) goes through.
//!
//! The reader is lenient where the meaning is unambiguous and strict everywhere else:
//! - a JSON object inside a Markdown fence or surrounded by prose is taken out
//!   (`REPLY_EXTRACTED`, warning);
//! - fields the shape does not know are ignored (`REPLY_UNKNOWN_FIELD`, warning);
//! - a node's missing or unknown `kind`, and its missing `inputFacets`/`outputFacets`, are
//!   taken from its capability when the capability is in the catalog the planner was given
//!   (`REPLY_FIELD_FILLED`, warning);
//! - a single string where a list of strings is expected is read as a list of one, and an
//!   edge written as `["from","to"]` as `{from, to}` (`REPLY_VALUE_COERCED`, warning);
//! - anything else that is missing or of the wrong type is a `REPLY_SHAPE` error naming the
//!   JSON pointer, the expected and the found value, and text that holds no JSON object is a
//!   `REPLY_NOT_JSON` error. A reply with an error is recorded as
//!   [`PlannerOutput::Unparsed`], and validation rejects it with these diagnostics.
//!
//! Which of draft or delta is read follows the reply's own keys (`nodes` or `operations`),
//! so a delta sent for an initial plan reaches validation and gets its
//! `PLANNER_OUTPUT_INVALID` there, like the same mistake from any other planner.

use serde_json::{Map, Value};

use crate::catalog::{Capability, CapabilityKind};
use crate::diagnostics::{Diagnostic, DiagnosticCode, Severity};
use crate::fsm::{PlannerOutput, Purpose, UnparsedReply};
use crate::graph::{DeltaOp, PlanDelta, PlanDraft, PlanEdge, PlanNode};

/// Longest excerpt of the reply quoted in a diagnostic.
const FOUND_CHARS: usize = 120;

const KINDS: [CapabilityKind; 5] = [
    CapabilityKind::Structuring,
    CapabilityKind::Execution,
    CapabilityKind::Validation,
    CapabilityKind::Transformation,
    CapabilityKind::Routing,
];

/// Reads `text` as the answer to a request of `purpose`, with `capabilities` (what the
/// planner was offered) for the fill-ins. Returns the output and what reading found.
pub(crate) fn read(
    text: &str,
    purpose: Purpose,
    capabilities: &[Capability],
) -> (PlannerOutput, Vec<Diagnostic>) {
    let mut reader = Reader {
        capabilities,
        found: Vec::new(),
    };
    let value = match extract(text) {
        Ok((value, None)) => value,
        Ok((value, Some(around))) => {
            reader.found.push(
                Diagnostic::warning(
                    DiagnosticCode::ReplyExtracted,
                    format!("the JSON object was taken out of {around}"),
                )
                .hint("reply with the JSON object alone: no Markdown fence, no text around it"),
            );
            value
        }
        Err(diagnostic) => return (unparsed(text), vec![*diagnostic]),
    };
    let output = match &value {
        Value::Object(root) => {
            let as_delta = match purpose {
                Purpose::Initial => !root.contains_key("nodes") && root.contains_key("operations"),
                Purpose::Replan => root.contains_key("operations") || !root.contains_key("nodes"),
            };
            if as_delta {
                reader.delta(root).map(PlannerOutput::Delta)
            } else {
                reader.draft(root).map(PlannerOutput::Draft)
            }
        }
        other => {
            reader.shape("", "a JSON object", Some(other), None);
            None
        }
    };
    match output {
        Some(output) if !reader.has_errors() => (output, reader.found),
        Some(_) | None => (unparsed(text), reader.found),
    }
}

fn unparsed(text: &str) -> PlannerOutput {
    PlannerOutput::Unparsed(UnparsedReply::new(text))
}

/// Finds the JSON value of a reply: the whole text, else the first fenced block, else the
/// first balanced `{…}`. The second element names what surrounded it.
fn extract(text: &str) -> Result<(Value, Option<&'static str>), Box<Diagnostic>> {
    let t = text.trim();
    if t.is_empty() {
        return Err(not_json("the reply is empty", None, text));
    }
    let whole = serde_json::from_str::<Value>(t);
    if let Ok(value) = whole {
        return Ok((value, None));
    }
    if let Some(inner) = fenced(t)
        && let Ok(value) = serde_json::from_str::<Value>(inner)
    {
        return Ok((value, Some("a Markdown fence")));
    }
    let Some(start) = t.find('{') else {
        return Err(not_json(
            "the reply holds no JSON object",
            Some("one JSON object, starting with `{`"),
            t,
        ));
    };
    let candidate = &t[start..];
    match balanced_end(candidate) {
        Some(end) => match serde_json::from_str::<Value>(&candidate[..end]) {
            Ok(value) => Ok((value, Some("the text around it"))),
            Err(e) => Err(not_json(
                &format!("the reply's JSON does not parse: {e}"),
                Some("valid JSON (double-quoted strings, no trailing commas, no comments)"),
                excerpt_at(&candidate[..end], e.line(), e.column()),
            )),
        },
        None => {
            let message = match serde_json::from_str::<Value>(candidate) {
                Err(e) if e.is_eof() => format!(
                    "the reply's JSON object is not closed: it ends at line {} column {} (was the reply cut short?)",
                    e.line(),
                    e.column()
                ),
                Err(e) => format!("the reply's JSON does not parse: {e}"),
                Ok(_) => "the reply's JSON object is not closed".to_owned(),
            };
            Err(not_json(
                &message,
                Some("one complete JSON object"),
                tail(candidate),
            ))
        }
    }
}

fn not_json(message: &str, expected: Option<&str>, found: &str) -> Box<Diagnostic> {
    let mut d = Diagnostic::error(DiagnosticCode::ReplyNotJson, message)
        .hint("reply with exactly one JSON object of the draft or delta shape, and nothing else");
    d.expected = expected.map(str::to_owned);
    d.found = Some(shorten(found.trim()));
    Box::new(d)
}

/// The content of the first Markdown code fence (an info string such as `json` dropped).
fn fenced(text: &str) -> Option<&str> {
    let open = text.find("```")?;
    let rest = &text[open + 3..];
    let body_start = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let info = rest[..body_start].trim();
    let body = if info.is_empty() || info.chars().all(|c| c.is_ascii_alphanumeric()) {
        &rest[body_start..]
    } else {
        rest
    };
    let end = body.find("```").unwrap_or(body.len());
    Some(body[..end].trim())
}

/// The byte length of the balanced object `text` starts with, if it closes.
fn balanced_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                (false, _) => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn excerpt_at(text: &str, line: usize, column: usize) -> &str {
    let Some(line_text) = text.lines().nth(line.saturating_sub(1)) else {
        return text;
    };
    let mut start = column.saturating_sub(40).min(line_text.len());
    while !line_text.is_char_boundary(start) {
        start -= 1;
    }
    &line_text[start..]
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(FOUND_CHARS);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    &text[start..]
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= FOUND_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(FOUND_CHARS).collect();
    format!("{cut}…")
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(value: &Value) -> String {
    format!("{} {}", type_name(value), shorten(&value.to_string()))
}

struct Reader<'a> {
    capabilities: &'a [Capability],
    found: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn has_errors(&self) -> bool {
        self.found.iter().any(|d| d.severity == Severity::Error)
    }

    fn shape(
        &mut self,
        pointer: &str,
        expected: &str,
        found: Option<&Value>,
        node: Option<&str>,
    ) -> &mut Diagnostic {
        let at = if pointer.is_empty() { "/" } else { pointer };
        let found_text = found.map_or_else(|| "nothing".to_owned(), describe);
        let message = match found {
            None => format!(
                "the reply has no `{}` at {at}: {expected} is required",
                field_name(pointer)
            ),
            Some(_) => format!("the reply has {found_text} at {at} where {expected} is expected"),
        };
        let mut d = Diagnostic::error(DiagnosticCode::ReplyShape, message)
            .at(pointer)
            .expected_found(expected, found_text)
            .hint(format!(
                "give {at} as {expected}, following the draft or delta shape of the instructions"
            ));
        if let Some(node) = node {
            d = d.node(node);
        }
        self.found.push(d);
        let last = self.found.len() - 1;
        &mut self.found[last]
    }

    fn warn(&mut self, diagnostic: Diagnostic) {
        self.found.push(diagnostic);
    }

    fn unknown_fields(&mut self, object: &Map<String, Value>, known: &[&str], pointer: &str) {
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.warn(
                Diagnostic::warning(
                    DiagnosticCode::ReplyUnknownField,
                    format!("the reply has a field `{key}` at {pointer}/{key} that the shape does not know; it was ignored"),
                )
                .at(format!("{pointer}/{key}"))
                .hint(format!("use only the fields {}", known.join(", "))),
            );
        }
    }

    fn required_str(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
        pointer: &str,
        node: Option<&str>,
    ) -> Option<String> {
        let at = format!("{pointer}/{key}");
        match object.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            other => {
                self.shape(&at, "a string", other, node);
                None
            }
        }
    }

    fn optional_str(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
        pointer: &str,
        node: Option<&str>,
    ) -> String {
        let at = format!("{pointer}/{key}");
        match object.get(key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                self.warn(
                    Diagnostic::warning(
                        DiagnosticCode::ReplyValueCoerced,
                        format!("the reply has a list of strings at {at} where one string is expected; they were joined with newlines"),
                    )
                    .at(&at)
                    .hint("give one string"),
                );
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            other => {
                self.shape(&at, "a string", other, node);
                String::new()
            }
        }
    }

    /// A list of strings; `None` when the key is absent.
    fn string_list(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
        pointer: &str,
        node: Option<&str>,
    ) -> Option<Vec<String>> {
        let at = format!("{pointer}/{key}");
        match object.get(key)? {
            Value::Null => None,
            Value::String(s) => {
                self.warn(
                    Diagnostic::warning(
                        DiagnosticCode::ReplyValueCoerced,
                        format!("the reply has a string at {at} where a list of strings is expected; it was read as a list of one"),
                    )
                    .at(&at)
                    .hint(format!("write `{key}` as a JSON array of strings")),
                );
                Some(vec![s.clone()])
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            self.shape(&format!("{at}/{i}"), "a string", Some(other), node);
                        }
                    }
                }
                Some(out)
            }
            other => {
                let other = other.clone();
                self.shape(&at, "an array of strings", Some(&other), node);
                Some(Vec::new())
            }
        }
    }

    fn capability(&self, id: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.capability_id == id)
    }

    fn draft(&mut self, root: &Map<String, Value>) -> Option<PlanDraft> {
        self.unknown_fields(
            root,
            &["nodes", "edges", "systemInstructions", "rationale"],
            "",
        );
        let nodes = match root.get("nodes") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.node(v, &format!("/nodes/{i}")))
                .collect(),
            other => {
                self.shape("/nodes", "an array of nodes", other, None);
                Vec::new()
            }
        };
        let edges = match root.get("edges") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.edge(v, &format!("/edges/{i}")))
                .collect(),
            Some(other) => {
                let other = other.clone();
                self.shape(
                    "/edges",
                    "an array of {from, to} objects",
                    Some(&other),
                    None,
                );
                Vec::new()
            }
        };
        let system_instructions = self.optional_str(root, "systemInstructions", "", None);
        let rationale = self.optional_str(root, "rationale", "", None);
        Some(PlanDraft {
            nodes,
            edges,
            system_instructions,
            rationale,
        })
    }

    fn edge(&mut self, value: &Value, pointer: &str) -> Option<PlanEdge> {
        match value {
            Value::Object(edge) => {
                self.unknown_fields(edge, &["from", "to"], pointer);
                let from = self.required_str(edge, "from", pointer, None);
                let to = self.required_str(edge, "to", pointer, None);
                Some(PlanEdge::new(from?, to?))
            }
            Value::Array(pair) if pair.len() == 2 && pair.iter().all(Value::is_string) => {
                self.warn(
                    Diagnostic::warning(
                        DiagnosticCode::ReplyValueCoerced,
                        format!("the reply has an edge written as a pair at {pointer}; it was read as {{from, to}}"),
                    )
                    .at(pointer)
                    .hint("write each edge as {\"from\": upstream, \"to\": downstream}"),
                );
                Some(PlanEdge::new(pair[0].as_str()?, pair[1].as_str()?))
            }
            other => {
                self.shape(pointer, "an edge object {from, to}", Some(other), None);
                None
            }
        }
    }

    fn node(&mut self, value: &Value, pointer: &str) -> Option<PlanNode> {
        let Value::Object(node) = value else {
            self.shape(pointer, "a node object", Some(value), None);
            return None;
        };
        self.unknown_fields(
            node,
            &[
                "id",
                "stage",
                "capabilityId",
                "kind",
                "inputFacets",
                "outputFacets",
                "instructions",
                "rationale",
            ],
            pointer,
        );
        let id = self.required_str(node, "id", pointer, None);
        let named = id.as_deref();
        let capability_id = self.required_str(node, "capabilityId", pointer, named);
        let stage = self.optional_str(node, "stage", pointer, named);
        let rationale = self.optional_str(node, "rationale", pointer, named);
        let instructions = self
            .string_list(node, "instructions", pointer, named)
            .unwrap_or_default();
        let input_facets = self.string_list(node, "inputFacets", pointer, named);
        let output_facets = self.string_list(node, "outputFacets", pointer, named);
        let capability = capability_id
            .as_deref()
            .and_then(|c| self.capability(c))
            .cloned();
        let kind = self.kind(node, pointer, named, capability.as_ref());
        let id = id?;
        let capability_id = capability_id?;
        let input_facets = self.facets(
            input_facets,
            "inputFacets",
            pointer,
            &id,
            capability.as_ref(),
        );
        let output_facets = self.facets(
            output_facets,
            "outputFacets",
            pointer,
            &id,
            capability.as_ref(),
        );
        Some(PlanNode {
            id,
            stage,
            capability_id,
            kind: kind?,
            input_facets,
            output_facets,
            instructions,
            rationale,
        })
    }

    fn kind(
        &mut self,
        node: &Map<String, Value>,
        pointer: &str,
        id: Option<&str>,
        capability: Option<&Capability>,
    ) -> Option<CapabilityKind> {
        let at = format!("{pointer}/kind");
        let given = node.get("kind");
        if let Some(Value::String(s)) = given
            && let Some(kind) = KINDS.iter().copied().find(|k| k.as_str() == s)
        {
            return Some(kind);
        }
        let expected = format!(
            "one of {}",
            KINDS
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Some(capability) = capability else {
            self.shape(&at, &expected, given, id).hint =
                Some("use a capability from the catalog and copy its kind".to_owned());
            return None;
        };
        let what = match given {
            None => "has no `kind`".to_owned(),
            Some(v) => format!("has kind {}", describe(v)),
        };
        let mut d = Diagnostic::warning(
            DiagnosticCode::ReplyFieldFilled,
            format!(
                "node at {pointer} {what}; capability `{}` is {}, which was used",
                capability.capability_id,
                capability.kind.as_str()
            ),
        )
        .at(&at)
        .capability(&capability.capability_id)
        .expected_found(
            expected,
            given.map_or_else(|| "nothing".to_owned(), describe),
        )
        .hint(format!(
            "copy the capability's kind: `{}`",
            capability.kind.as_str()
        ));
        if let Some(id) = id {
            d = d.node(id);
        }
        self.warn(d);
        Some(capability.kind)
    }

    fn facets(
        &mut self,
        given: Option<Vec<String>>,
        key: &str,
        pointer: &str,
        id: &str,
        capability: Option<&Capability>,
    ) -> Vec<String> {
        if let Some(list) = given {
            return list;
        }
        let Some(capability) = capability else {
            return Vec::new();
        };
        let declared = if key == "inputFacets" {
            &capability.input_facets
        } else {
            &capability.output_facets
        };
        self.warn(
            Diagnostic::warning(
                DiagnosticCode::ReplyFieldFilled,
                format!(
                    "node `{id}` has no `{key}`; the {} declared by capability `{}` were used",
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    },
                    capability.capability_id
                ),
            )
            .at(format!("{pointer}/{key}"))
            .node(id)
            .capability(&capability.capability_id)
            .hint(format!("list the node's {key} as the catalog gives them")),
        );
        declared.clone()
    }

    fn delta(&mut self, root: &Map<String, Value>) -> Option<PlanDelta> {
        self.unknown_fields(root, &["baseVersion", "rationale", "operations"], "");
        let base_version = match root.get("baseVersion") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= u64::from(u32::MAX)) => {
                n.as_u64().and_then(|v| u32::try_from(v).ok())
            }
            other => {
                self.shape(
                    "/baseVersion",
                    "a non-negative integer (the current plan version)",
                    other,
                    None,
                );
                None
            }
        };
        let rationale = self.optional_str(root, "rationale", "", None);
        let operations = match root.get("operations") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.operation(v, &format!("/operations/{i}")))
                .collect(),
            other => {
                self.shape("/operations", "an array of operations", other, None);
                Vec::new()
            }
        };
        Some(PlanDelta {
            base_version: base_version?,
            rationale,
            operations,
        })
    }

    fn operation(&mut self, value: &Value, pointer: &str) -> Option<DeltaOp> {
        let Value::Object(op) = value else {
            self.shape(pointer, "an operation object", Some(value), None);
            return None;
        };
        const OPS: &str = "one of addNode, replaceNode, removeNode, addEdge, removeEdge";
        let name = match op.get("op") {
            Some(Value::String(s)) => s.as_str(),
            other => {
                self.shape(&format!("{pointer}/op"), OPS, other, None);
                return None;
            }
        };
        match name {
            "addNode" | "replaceNode" => {
                self.unknown_fields(op, &["op", "node"], pointer);
                let node = match op.get("node") {
                    Some(v) => self.node(v, &format!("{pointer}/node"))?,
                    None => {
                        self.shape(&format!("{pointer}/node"), "a node object", None, None);
                        return None;
                    }
                };
                Some(if name == "addNode" {
                    DeltaOp::AddNode { node }
                } else {
                    DeltaOp::ReplaceNode { node }
                })
            }
            "removeNode" => {
                self.unknown_fields(op, &["op", "nodeId"], pointer);
                let node_id = self.required_str(op, "nodeId", pointer, None)?;
                Some(DeltaOp::RemoveNode { node_id })
            }
            "addEdge" | "removeEdge" => {
                self.unknown_fields(op, &["op", "from", "to"], pointer);
                let from = self.required_str(op, "from", pointer, None);
                let to = self.required_str(op, "to", pointer, None);
                let (from, to) = (from?, to?);
                Some(if name == "addEdge" {
                    DeltaOp::AddEdge { from, to }
                } else {
                    DeltaOp::RemoveEdge { from, to }
                })
            }
            _ => {
                let found = Value::String(name.to_owned());
                let d = self.shape(&format!("{pointer}/op"), OPS, Some(&found), None);
                if let Some(meant) = meant_op(name) {
                    d.suggestions = vec![meant.to_owned()];
                    d.hint = Some(format!("write `\"op\":\"{meant}\"`"));
                }
                None
            }
        }
    }
}

/// The operation an unknown name most likely means, from common synonyms.
fn meant_op(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let edge = lower.contains("edge") || lower.contains("link") || lower.contains("depend");
    let verb = |words: &[&str]| words.iter().any(|w| lower.starts_with(w));
    if verb(&[
        "add", "insert", "create", "new", "append", "connect", "link",
    ]) {
        Some(if edge { "addEdge" } else { "addNode" })
    } else if verb(&["remove", "delete", "drop", "disconnect", "unlink"]) {
        Some(if edge { "removeEdge" } else { "removeNode" })
    } else if verb(&["replace", "update", "modify", "change", "edit", "set"]) && !edge {
        Some("replaceNode")
    } else {
        None
    }
}

fn field_name(pointer: &str) -> &str {
    pointer.rsplit('/').next().unwrap_or(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo;

    const GOOD: &str = r#"{"nodes":[{"id":"brief","stage":"structuring","capabilityId":"brief.structurer",
        "kind":"structuring","inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],
        "instructions":[],"rationale":"structure"}],"edges":[],"systemInstructions":"","rationale":"r"}"#;

    fn read_initial(text: &str) -> (PlannerOutput, Vec<Diagnostic>) {
        read(text, Purpose::Initial, &demo::capabilities())
    }

    fn codes(found: &[Diagnostic]) -> Vec<(&'static str, Severity)> {
        found
            .iter()
            .map(|d| (d.code.as_str(), d.severity))
            .collect()
    }

    fn draft(output: PlannerOutput) -> PlanDraft {
        match output {
            PlannerOutput::Draft(d) => d,
            other => panic!("not a draft: {other:?}"),
        }
    }

    #[test]
    fn a_clean_reply_reads_without_findings() {
        let (out, found) = read_initial(GOOD);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(draft(out).nodes[0].capability_id, "brief.structurer");
    }

    #[test]
    fn fences_and_prose_are_extracted_with_a_warning() {
        for text in [
            format!("```json\n{GOOD}\n```"),
            format!("```\n{GOOD}\n```"),
            format!("Here is the plan:\n{GOOD}\nHope this helps!"),
            format!("Sure. ```json\n{GOOD}``` Anything else?"),
        ] {
            let (out, found) = read_initial(&text);
            assert_eq!(
                codes(&found),
                [("REPLY_EXTRACTED", Severity::Warning)],
                "{text}"
            );
            assert_eq!(draft(out).nodes.len(), 1);
        }
    }

    #[test]
    fn text_without_json_and_broken_json_are_not_json() {
        for (text, says) in [
            ("", "empty"),
            ("I cannot help with that.", "no JSON object"),
            (r#"{"nodes": oops}"#, "does not parse"),
            (r#"{"nodes":[{"id":"a",}]}"#, "does not parse"),
            (r#"{"nodes":[{"id":"brief","stage":"struct"#, "not closed"),
        ] {
            let (out, found) = read_initial(text);
            assert!(matches!(out, PlannerOutput::Unparsed(_)), "{text}");
            assert_eq!(
                codes(&found),
                [("REPLY_NOT_JSON", Severity::Error)],
                "{text}"
            );
            assert!(
                found[0].message.contains(says),
                "{text}: {}",
                found[0].message
            );
            assert!(found[0].found.is_some());
        }
    }

    #[test]
    fn unparsed_content_is_bounded() {
        let long = format!("no plan here {}", "x".repeat(10_000));
        let (out, _) = read_initial(&long);
        let PlannerOutput::Unparsed(reply) = out else {
            panic!("{out:?}")
        };
        assert_eq!(reply.bytes, long.len());
        assert_eq!(reply.content.len(), UnparsedReply::MAX_BYTES);
        assert!(reply.is_cut());
    }

    #[test]
    fn wrong_types_name_pointer_expected_and_found() {
        let (out, found) = read_initial(
            r#"{"nodes":[{"id":7,"capabilityId":"writer.en","kind":"execution"}],"edges":"none"}"#,
        );
        assert!(matches!(out, PlannerOutput::Unparsed(_)));
        let shape: Vec<_> = found
            .iter()
            .filter(|d| d.code == DiagnosticCode::ReplyShape)
            .map(|d| {
                (
                    d.pointer.as_deref().unwrap(),
                    d.expected.as_deref().unwrap(),
                    d.found.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("/nodes/0/id", "a string", "a number 7"),
                (
                    "/edges",
                    "an array of {from, to} objects",
                    "a string \"none\""
                ),
            ]
        );
    }

    #[test]
    fn what_the_catalog_fixes_is_filled_in_with_warnings() {
        let (out, found) = read_initial(
            r#"{"nodes":[{"id":"write","capabilityId":"writer.en","instructions":"be brief","extra":1}]}"#,
        );
        let d = draft(out);
        let node = &d.nodes[0];
        assert_eq!(node.kind, CapabilityKind::Execution);
        assert_eq!(node.input_facets, ["writerBrief"]);
        assert_eq!(node.output_facets, ["copyVariants"]);
        assert_eq!(node.instructions, ["be brief"]);
        let mut got: Vec<_> = codes(&found).into_iter().map(|(c, _)| c).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "REPLY_FIELD_FILLED",
                "REPLY_FIELD_FILLED",
                "REPLY_FIELD_FILLED",
                "REPLY_UNKNOWN_FIELD",
                "REPLY_VALUE_COERCED"
            ]
        );
        assert!(found.iter().all(|d| d.severity == Severity::Warning));
    }

    #[test]
    fn a_missing_kind_of_an_unknown_capability_is_not_guessed() {
        let (out, found) = read_initial(r#"{"nodes":[{"id":"w","capabilityId":"ghostwriter"}]}"#);
        assert!(matches!(out, PlannerOutput::Unparsed(_)));
        assert_eq!(codes(&found), [("REPLY_SHAPE", Severity::Error)]);
        assert_eq!(found[0].pointer.as_deref(), Some("/nodes/0/kind"));
        assert_eq!(found[0].node_id.as_deref(), Some("w"));
    }

    #[test]
    fn deltas_read_by_their_keys_whatever_was_asked() {
        let delta = r#"{"baseVersion":1,"operations":[{"op":"addEdge","from":"a","to":"b"},{"op":"removeNode","nodeId":"c"}]}"#;
        let (out, found) = read(delta, Purpose::Replan, &demo::capabilities());
        assert!(found.is_empty(), "{found:?}");
        assert!(matches!(out, PlannerOutput::Delta(d) if d.operations.len() == 2));
        let (out, _) = read(delta, Purpose::Initial, &demo::capabilities());
        assert!(
            matches!(out, PlannerOutput::Delta(_)),
            "validation says PLANNER_OUTPUT_INVALID"
        );
        let (out, _) = read(GOOD, Purpose::Replan, &demo::capabilities());
        assert!(matches!(out, PlannerOutput::Draft(_)));
        let (out, found) = read(
            r#"{"baseVersion":"1","operations":[{"op":"insertNode"}]}"#,
            Purpose::Replan,
            &demo::capabilities(),
        );
        assert!(matches!(out, PlannerOutput::Unparsed(_)));
        let pointers: Vec<_> = found.iter().filter_map(|d| d.pointer.as_deref()).collect();
        assert_eq!(pointers, ["/baseVersion", "/operations/0/op"]);
    }

    #[test]
    fn edge_pairs_are_read_as_edges() {
        let text = r#"{"nodes":[],"edges":[["a","b"],{"from":"b","to":"c"}]}"#;
        let (out, found) = read_initial(text);
        assert_eq!(
            draft(out).edges,
            [PlanEdge::new("a", "b"), PlanEdge::new("b", "c")]
        );
        assert_eq!(codes(&found), [("REPLY_VALUE_COERCED", Severity::Warning)]);
    }
}
