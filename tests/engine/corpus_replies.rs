//! The reply corpus through the library: each reply as text from the ScriptedPlanner, read
//! by the same path as a model's replies.

use std::sync::Arc;

use flexrun::planner::ScriptStep;
use flexrun::{RunEnvelope, ScriptedPlanner};

use crate::corpus::{self, CASES, Case, DELTA, DRAFT};
use crate::support::TestEnv;

/// The script of a case: the reply, and the right one after a rejection.
fn script(case: &Case) -> Vec<ScriptStep> {
    let mut steps = Vec::new();
    if case.replan {
        steps.push(ScriptStep::Reply(DRAFT.to_owned()));
    }
    steps.push(ScriptStep::Reply(case.reply.to_owned()));
    if case.rejected() {
        steps.push(ScriptStep::Reply(case.fixed().to_owned()));
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_reply_is_diagnosed_and_the_revision_completes() {
    assert!(CASES.len() >= 25, "{} cases", CASES.len());
    assert!(DELTA.contains("baseVersion"));
    for case in CASES {
        let planner = ScriptedPlanner::new(script(case));
        let mut env = TestEnv::start(Some(Arc::new(planner.clone()))).await;
        let envelope: RunEnvelope = serde_json::from_value(corpus::envelope(case.replan)).unwrap();
        let run = env.engine.submit(envelope).await.unwrap();
        let events = env.until_complete(run).await;
        corpus::assert_run(case, &events);
        assert_eq!(
            planner.remaining(),
            0,
            "{}: every scripted reply was asked for",
            case.name
        );
        if case.rejected() {
            let requests = planner.requests();
            let revision = requests.last().unwrap();
            assert_eq!(
                corpus::codes(&revision.diagnostics, true),
                case.errors,
                "{}: the revision request carries the same codes",
                case.name
            );
            assert!(
                revision
                    .diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .all(|d| d.hint.is_some()),
                "{}: every error has a hint: {:?}",
                case.name,
                revision.diagnostics
            );
        }
    }
}
