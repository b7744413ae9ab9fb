//! A property-test suite an embedding team keeps beside its service: random operators
//! (pauses, resumes, cancels, HITL answers, signals, at random moments) steer runs of an
//! engine built as the service builds it, and `flexrun::testing` checks every answer and
//! every streamed event against the reference automaton.
//!
//! Only `flexrun::…` is used, as from another crate; proptest comes re-exported.
//! `cargo test --features testing --example qa_steering` runs it (so does `scripts/test.sh`).

fn main() {
    println!("run `cargo test --features testing --example qa_steering`");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flexrun::planner::ScriptStep;
    use flexrun::prelude::{Capability, CapabilityKind, ExecutorSpec, Executors, NodeCall};
    use flexrun::testing::engine::{CaseOptions, CaseReport, Op, run_case, steering};
    use flexrun::testing::proptest::test_runner::{Config, TestCaseError, TestRunner};
    use flexrun::{CatalogPlanner, Engine, MemoryStore, Planner, RunEnvelope, ScriptedPlanner};
    use serde_json::json;

    /// The service's envelope: a human reviews the copy (a rejection replans), an operator
    /// checks the first node, and two signals replan or stop the run.
    fn envelope() -> RunEnvelope {
        serde_json::from_value(json!({
            "objective": "taglines for a bakery",
            "inputs": {"objectiveBrief": "fresh sourdough for busy parents"},
            "outputContract": {"mode": "facets", "facets": ["copyVariants", "summary"]},
            "policies": {
                "planner": {"maxAttempts": 2, "maxReplans": 2},
                "runtime": [
                    {"id": "review",
                     "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
                     "action": {"type": "hitl", "kind": "approval", "question": "Publish?",
                                "onApprove": "continue", "onReject": "replan"}},
                    {"id": "step", "maxFires": 1, "trigger": {"kind": "onNodeComplete"},
                     "action": {"type": "pause", "reason": "an operator checks the first node"}},
                    {"id": "needs-qa", "trigger": {"kind": "manual", "signal": "needs-qa"},
                     "action": {"type": "replan", "rationale": "the operator asked for QA"}},
                    {"id": "stop", "trigger": {"kind": "manual", "signal": "stop"},
                     "action": {"type": "fail", "reason": "stopped by the operator"}}
                ]
            }
        }))
        .expect("the envelope reads")
    }

    /// The service's engine: the demo catalog, the given planner, in memory. Its writer
    /// takes a few turns of the scheduler (as a model call would take time), so operators
    /// also act while nodes run. With `people`, summaries can be written by a person.
    async fn engine(planner: Arc<dyn Planner>, people: bool) -> Engine {
        let mut config = flexrun::demo::config(Arc::new(MemoryStore::new()));
        config.planner = planner;
        config.executors = slow_writer(config.executors);
        if people {
            config.capabilities.push(human_summary());
        }
        Engine::open(config).await.expect("the engine opens")
    }

    /// The demo executors, with a writer that takes a few turns of the scheduler.
    fn slow_writer(executors: Executors) -> Executors {
        executors.builtin_async("write_copy", |call: NodeCall| async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let variant = format!("{} today", call.objective);
            NodeCall::output(&json!({ "copyVariants": [variant] }))
        })
    }

    fn human_summary() -> Capability {
        Capability::new(
            "summary.human",
            CapabilityKind::Transformation,
            ExecutorSpec::Human,
        )
        .with_input_facets(["copyVariants"])
        .with_output_facets(["summary"])
    }

    /// Runs `cases` random cases, each on a fresh engine with the planner `planner()` makes;
    /// returns every passing report.
    fn check(cases: u32, people: bool, planner: impl Fn() -> Arc<dyn Planner>) -> Vec<CaseReport> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let reports = std::cell::RefCell::new(Vec::new());
        let ops = steering(&["needs-qa", "stop", "unheard"], 1..14);
        let result = TestRunner::new(config).run(&ops, |ops: Vec<Op>| {
            let report = rt.block_on(async {
                let engine = engine(planner(), people).await;
                let report = run_case(&engine, envelope(), &ops, &CaseOptions::default()).await;
                engine.shutdown().await;
                report
            });
            if !report.passed() {
                return Err(TestCaseError::fail(report.to_string()));
            }
            reports.borrow_mut().push(report);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        reports.into_inner()
    }

    #[test]
    fn random_operators_never_break_a_catalog_planned_run() {
        let reports = check(48, false, || Arc::new(CatalogPlanner));
        let accepted: usize = reports.iter().map(CaseReport::accepted).sum();
        let resolved = reports
            .iter()
            .flat_map(|r| &r.events)
            .filter(|e| e.kind().as_str() == "hitl_resolved")
            .count();
        let cancelled = reports
            .iter()
            .filter(|r| r.outcome == Some(flexrun::fsm::RunOutcome::Cancelled))
            .count();
        assert!(
            accepted > 0 && resolved > 0 && cancelled > 0,
            "{accepted} accepted, {resolved} resolved, {cancelled} cancelled"
        );
    }

    /// A scripted planner whose first draft names a capability that does not exist, and
    /// whose plan ends with a human node; replans find the script exhausted and fail.
    fn scripted() -> Arc<dyn Planner> {
        const DRAFT: &str = r#"{"nodes":[
            {"id":"brief","capabilityId":"brief.structurer","kind":"structuring",
             "inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},
            {"id":"write","capabilityId":"writer.en","kind":"execution",
             "inputFacets":["writerBrief"],"outputFacets":["copyVariants"]},
            {"id":"sum","capabilityId":"summary.human","kind":"transformation",
             "inputFacets":["copyVariants"],"outputFacets":["summary"]}],
            "edges":[{"from":"brief","to":"write"},{"from":"write","to":"sum"}]}"#;
        Arc::new(ScriptedPlanner::new([
            ScriptStep::Reply(DRAFT.replace("writer.en", "ghostwriter")),
            ScriptStep::Reply(DRAFT.to_owned()),
        ]))
    }

    #[test]
    fn random_operators_never_break_a_scripted_run() {
        let reports = check(24, true, scripted);
        assert!(reports.iter().all(|r| r.events.len() > 2));
    }
}
