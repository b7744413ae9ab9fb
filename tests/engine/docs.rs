//! The docs cannot drift from the code: generated sections and vocabularies are compared.

use flexrun::diagnostics::DiagnosticCode;
use flexrun::fsm::EventKind;

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
