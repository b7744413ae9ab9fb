//! The docs cannot drift from the code: generated sections and vocabularies are compared.

use flexrun::diagnostics::DiagnosticCode;
use flexrun::fsm::EventKind;
use flexrun::policy::{PolicyError, normalize};
use serde_json::{Value, json};

use crate::support::json_blocks;

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn architecture_state_table_is_generated_from_the_edge_table() {
    let text = doc("ARCHITECTURE.md");
    let begin = "<!-- generated:states begin -->\n";
    let start = text.find(begin).expect("begin marker") + begin.len();
    let end = text
        .find("<!-- generated:states end -->")
        .expect("end marker");
    assert_eq!(
        &text[start..end],
        flexrun::fsm::table::docs_section(),
        "regenerate with `flexrun docs states`"
    );
}

#[test]
fn every_event_kind_is_documented_and_nothing_else() {
    let text = doc("EVENTS.md");
    let documented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .collect();
    let code: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(documented, code);
}

#[test]
fn every_diagnostic_code_is_documented_and_nothing_else() {
    let text = doc("DIAGNOSTICS.md");
    let documented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let code: Vec<&str> = DiagnosticCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, code);
}

/// The spellings the normalizer lists when it refuses `document`'s unknown variant: the
/// trigger kinds, action types, … it accepts, from the code itself.
fn accepted(document: Value) -> Vec<&'static str> {
    match normalize(&document) {
        Err(PolicyError::UnknownVariant { expected, .. }) => expected,
        other => panic!("expected an unknown-variant error, got {other:?}"),
    }
}

/// The keys the normalizer reads in the object that `document` gives an extra key.
fn keys_read(document: Value) -> Vec<&'static str> {
    match normalize(&document) {
        Err(PolicyError::UnknownKeys { expected, .. }) => expected,
        other => panic!("expected an unknown-key error on {document}, got {other:?}"),
    }
}

fn runtime_policy(trigger: Value, action: Value) -> Value {
    json!({"runtime": [{"id": "p", "trigger": trigger, "action": action}]})
}

fn with_unknown_key(mut object: Value) -> Value {
    object["zzUnknown"] = json!(1);
    object
}

/// The text of `heading` (a whole heading line) up to the next heading of any level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no `{heading}` heading"))
        + heading.len()
        + 2;
    let end = text[start..].find("\n#").map_or(text.len(), |i| start + i);
    &text[start..end]
}

#[track_caller]
fn assert_documents(section: &str, keys: &[&str], what: &str) {
    for key in keys {
        assert!(
            section.contains(&format!("`{key}`")),
            "POLICIES.md does not document `{key}` of {what}"
        );
    }
}

#[test]
fn every_trigger_and_action_the_normalizer_accepts_is_documented_with_its_fields() {
    let text = doc("POLICIES.md");
    let kinds = accepted(runtime_policy(
        json!({"kind": "?"}),
        json!({"type": "pause"}),
    ));
    let types = accepted(runtime_policy(
        json!({"kind": "manual"}),
        json!({"type": "?"}),
    ));
    let documented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .collect();
    let code: Vec<&str> = kinds.iter().chain(&types).copied().collect();
    assert_eq!(
        documented, code,
        "one `### `name`` heading per trigger and action"
    );
    assert_documents(section(&text, "## Triggers"), &["kind"], "a trigger");
    assert_documents(section(&text, "## Actions"), &["type"], "an action");

    for (name, is_trigger) in kinds
        .iter()
        .map(|k| (*k, true))
        .chain(types.iter().map(|t| (*t, false)))
    {
        let body = section(&text, &format!("### `{name}`"));
        let Some(block) = json_blocks(body).into_iter().next() else {
            let refused = normalize(&runtime_policy(
                json!({"kind": "manual"}),
                json!({ "type": name }),
            ));
            assert!(
                matches!(refused, Err(PolicyError::UnsupportedAction { .. })),
                "`{name}` has no example, so it must be refused: {refused:?}"
            );
            assert!(body.contains("unsupported action"), "{name}");
            continue;
        };
        let (tag, embed): (&str, fn(Value) -> Value) = if is_trigger {
            ("kind", |t| runtime_policy(t, json!({"type": "pause"})))
        } else {
            ("type", |a| runtime_policy(json!({"kind": "manual"}), a))
        };
        assert_eq!(block.value[tag], name, "the example of `{name}`");
        normalize(&embed(block.value.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys = keys_read(embed(with_unknown_key(block.value)));
        let fields: Vec<&str> = keys.into_iter().filter(|k| *k != tag).collect();
        assert_documents(body, &fields, name);
    }
}

#[test]
fn every_planner_runtime_and_selector_key_is_documented() {
    let text = doc("POLICIES.md");
    let planner = keys_read(json!({"planner": {"zzUnknown": 1}}));
    assert_documents(section(&text, "## Planner policies"), &planner, "planner");
    let policy = with_unknown_key(
        json!({"id": "p", "trigger": {"kind": "manual"}, "action": {"type": "pause"}}),
    );
    let runtime = keys_read(json!({ "runtime": [policy] }));
    assert_documents(section(&text, "## Runtime policies"), &runtime, "runtime");
    let selector = keys_read(runtime_policy(
        json!({"kind": "onNodeComplete", "selector": {"zzUnknown": 1}}),
        json!({"type": "pause"}),
    ));
    assert_documents(
        section(&text, "### Node selectors"),
        &selector,
        "a selector",
    );
    let root = keys_read(json!({"zzUnknown": 1}));
    assert_documents(&text, &root, "the policies document");
}

/// Every JSON block of POLICIES.md is something the engine accepts: an envelope, a
/// policies document, a runtime policy, a trigger, an action, a catalog entry or a request body.
#[test]
fn every_json_block_of_the_policies_doc_is_accepted() {
    let blocks = json_blocks(&doc("POLICIES.md"));
    assert!(blocks.len() > 15, "{}", blocks.len());
    for block in blocks {
        let v = block.value;
        let whereabouts = format!("a block under `{}`: {v}", block.heading);
        let has = |key: &str| v.get(key).is_some();
        let normalized = if has("objective") {
            let envelope: flexrun::RunEnvelope = serde_json::from_value(v.clone()).unwrap();
            normalize(&envelope.policies).map(drop)
        } else if has("error") {
            assert_eq!(v["error"]["code"], "INVALID_ENVELOPE", "{whereabouts}");
            continue;
        } else if has("capabilityId") {
            serde_json::from_value::<flexrun::catalog::Capability>(v.clone()).unwrap();
            continue;
        } else if has("direction") {
            serde_json::from_value::<flexrun::catalog::Facet>(v.clone()).unwrap();
            continue;
        } else if has("name") {
            assert!(
                v["name"].as_str().is_some_and(|n| !n.is_empty()),
                "{whereabouts}"
            );
            assert!(
                v["payload"].is_object() || v["payload"].is_null(),
                "{whereabouts}"
            );
            continue;
        } else if has("trigger") {
            normalize(&json!({ "runtime": [v.clone()] })).map(drop)
        } else if has("planner") || has("runtime") || has("budgets") {
            normalize(&v).map(drop)
        } else if has("retry") || has("then") {
            normalize(&json!({ "fallback": v.clone() })).map(drop)
        } else if has("type") {
            normalize(&runtime_policy(json!({"kind": "manual"}), v.clone())).map(drop)
        } else if has("kind") {
            normalize(&runtime_policy(v.clone(), json!({"type": "pause"}))).map(drop)
        } else {
            panic!("unclassified {whereabouts}");
        };
        normalized.unwrap_or_else(|e| panic!("{whereabouts}: {e}"));
    }
}
