//! A QA-style suite an embedding team keeps beside its service: scripted planner replies
//! (as a model would send them) against an in-memory store, asserting the events the
//! engine commits. `cargo test --example qa` runs it; `cargo test` builds and runs it too.

fn main() {
    println!("run `cargo test --example qa`");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flexrun::fsm::{EventBody, EventKind, RunOutcome};
    use flexrun::planner::ScriptStep;
    use flexrun::{Engine, MemoryStore, RunEnvelope, ScriptedPlanner, demo};
    use futures::StreamExt;
    use serde_json::json;

    const BRIEF_THEN_WRITE: &str = r#"{"nodes":[
        {"id":"brief","capabilityId":"brief.structurer","kind":"structuring",
         "inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"]},
        {"id":"write","capabilityId":"writer.en","kind":"execution",
         "inputFacets":["writerBrief"],"outputFacets":["copyVariants"]}],
        "edges":[{"from":"brief","to":"write"}]}"#;

    fn envelope() -> RunEnvelope {
        serde_json::from_value(json!({
            "objective": "a tagline",
            "inputs": {"objectiveBrief": "fresh bread for busy parents"},
            "outputContract": {"mode": "facets", "facets": ["copyVariants"]}
        }))
        .unwrap()
    }

    async fn engine(planner: ScriptedPlanner) -> Engine {
        let mut config = demo::config(Arc::new(MemoryStore::new()));
        config.planner = Arc::new(planner);
        Engine::open(config).await.unwrap()
    }

    #[tokio::test]
    async fn a_hallucinated_capability_is_diagnosed_and_the_revision_runs() {
        let wrong = BRIEF_THEN_WRITE.replace("writer.en", "ghostwriter");
        let planner = ScriptedPlanner::new([
            ScriptStep::Reply(format!("Here you go:\n```json\n{wrong}\n```")),
            ScriptStep::Reply(BRIEF_THEN_WRITE.to_owned()),
        ]);
        let engine = engine(planner.clone()).await;
        let run = engine.submit(envelope()).await.unwrap();
        let events: Vec<_> = engine.events(run, 0).unwrap().collect().await;
        let rejected = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::PlanRejected { diagnostics, .. } => Some(diagnostics.clone()),
                _ => None,
            })
            .expect("the first draft is rejected");
        let codes: Vec<&str> = rejected.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["REPLY_EXTRACTED", "CAPABILITY_NOT_REGISTERED"]);
        assert_eq!(
            planner.requests()[1].diagnostics,
            rejected,
            "sent back as they are"
        );
        assert_eq!(events.last().unwrap().kind(), EventKind::Complete);
        assert_eq!(
            engine.wait(run).await.unwrap().status,
            RunOutcome::Completed
        );
    }
}
