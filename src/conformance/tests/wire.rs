use std::collections::BTreeSet;

use super::*;
use crate::conformance::wire::{Format, SseParser, Stream, WireError, detect};
use crate::conformance::{Options, check_stream, rules_markdown};

fn jsonl(events: &[RunEvent]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect()
}

fn sse_text(events: &[RunEvent]) -> String {
    let mut text = String::from(": heartbeat\n\n");
    for e in events {
        text.push_str(&sse(e));
    }
    text
}

#[test]
fn both_formats_read_back_the_events() {
    let events = with_hitl().events();
    for (text, format) in [
        (jsonl(&events), Format::Jsonl),
        (sse_text(&events), Format::Sse),
    ] {
        assert_eq!(detect(&text).unwrap(), format);
        let stream = Stream::parse(&text).unwrap();
        assert_eq!(stream.format(), format);
        assert_eq!(stream.events(), events.as_slice());
        assert!(check_stream(&stream, &Options::default()).is_ok());
    }
    let stream = Stream::parse(&sse_text(&events)).unwrap();
    assert_eq!(
        stream.line_of(0),
        Some(3),
        "after the heartbeat comment and its blank line"
    );
    assert_eq!(stream.line_of(1), Some(7));
    let stream = Stream::parse(&format!("\n{}", jsonl(&events))).unwrap();
    assert_eq!(stream.line_of(0), Some(2));
}

#[test]
fn sse_frames_may_arrive_in_any_chunks() {
    let mut s = Script::new();
    s.planned()
        .go(RunInput::OperatorPause {
            reason: "für Kaffee ☕".into(),
        })
        .go(RunInput::Resume {
            reason: "weiter".into(),
            budgets: Default::default(),
        })
        .run_node("write")
        .done();
    let events = s.events();
    let text = sse_text(&events).replace('\n', "\r\n");
    let bytes = text.as_bytes();
    for size in [1, 2, 7, 64, bytes.len()] {
        let mut parser = SseParser::new();
        let mut stream = Stream::new(Format::Sse);
        for chunk in bytes.chunks(size) {
            for frame in parser.push(chunk).unwrap() {
                stream.push_frame(&frame).unwrap();
            }
        }
        assert_eq!(parser.finish().unwrap(), None);
        assert_eq!(stream.events(), events.as_slice(), "chunks of {size}");
    }
}

#[test]
fn sse_data_lines_join_and_an_unclosed_last_frame_counts() {
    let e = &linear().events()[0];
    let json = serde_json::to_string(e).unwrap();
    let comma = json.find(',').unwrap();
    let (head, tail) = json.split_at(comma + 1);
    let text = format!("event: plan_requested\nid: 1\ndata: {head}\ndata:{tail}\n\n");
    let stream = Stream::parse(&text).unwrap();
    assert_eq!(
        stream.events(),
        std::slice::from_ref(e),
        "data lines are joined with LF"
    );

    let text = format!("retry: 10\nevent: plan_requested\nid: 1\ndata: {json}");
    let stream = Stream::parse(&text).unwrap();
    assert_eq!(stream.events(), std::slice::from_ref(e));
}

#[test]
fn sse_frame_names_headers_that_do_not_match_the_data() {
    let events = linear().events();
    let text = sse_text(&events)
        .replacen("id: 4\n", "id: 40\n", 1)
        .replacen("event: node_complete\n", "event: node_done\n", 1);
    let stream = Stream::parse(&text).unwrap();
    let report = check_stream(&stream, &Options::default());
    assert_eq!(found(&report), [(Rule::SseFrame, 4), (Rule::SseFrame, 5)]);
    assert_eq!(
        report.violations()[0].message,
        "`id: 40` but the event's seq is 4"
    );
    assert!(
        report.violations()[1]
            .message
            .contains("`event: node_done`")
    );

    let text = sse_text(&events).replacen("id: 2\n", "", 1);
    let report = check_stream(&Stream::parse(&text).unwrap(), &Options::default());
    assert_eq!(found(&report), [(Rule::SseFrame, 2)]);
}

#[test]
fn unreadable_input_names_its_line() {
    assert!(matches!(detect("\n  \n"), Err(WireError::Empty)));
    assert!(matches!(
        detect("\n   4  plan_requested  Initial plan\n"),
        Err(WireError::UnknownFormat { line: 2 })
    ));
    let mut text = jsonl(&linear().events());
    text.push_str("{\"seq\": 9}\n");
    let err = Stream::parse(&text).unwrap_err();
    assert!(matches!(err, WireError::Event { line: 9, .. }), "{err}");
    assert!(
        err.to_string().starts_with("line 9: not a run event: "),
        "{err}"
    );
    let err = SseParser::new().push(b"data: \xff\xfe\n").unwrap_err();
    assert!(matches!(err, WireError::NotUtf8 { line: 1 }));
}

#[test]
fn the_docs_list_every_rule() {
    let doc = include_str!("../../../docs/CONFORMANCE.md");
    assert!(
        doc.contains(&rules_markdown()),
        "regenerate the table with `flexrun docs conformance`"
    );
    for rule in Rule::ALL {
        assert_eq!(rule.as_str().parse::<Rule>().unwrap(), *rule);
        assert!(!rule.description().is_empty());
    }
    let names: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Rule::ALL.len());
    assert!("seq-gaps".parse::<Rule>().is_err());
}
