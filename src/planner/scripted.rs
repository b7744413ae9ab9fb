//! `ScriptedPlanner`: replays a script of drafts, deltas and errors, and records requests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{PlanRequest, PlanResponse, Planner, PlannerError};
use crate::fsm::PlannerOutput;
use crate::graph::{PlanDelta, PlanDraft};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptStep {
    /// Return this draft.
    Draft(PlanDraft),
    /// Return this delta.
    Delta(PlanDelta),
    /// Answer with this text, as a model would: read by [`PlanResponse::from_text`], the
    /// same path as a model planner's replies.
    Reply(String),
    /// Fail with this error.
    Error(PlannerError),
}

/// A planner that answers from a script, for tests and QA. Every request it receives is
/// recorded so tests can assert what the engine sent (e.g. diagnostics on a revision).
#[derive(Debug, Clone, Default)]
pub struct ScriptedPlanner {
    script: Arc<Mutex<VecDeque<ScriptStep>>>,
    requests: Arc<Mutex<Vec<PlanRequest>>>,
}

impl ScriptedPlanner {
    /// A planner that answers with `steps`, in order.
    pub fn new(steps: impl IntoIterator<Item = ScriptStep>) -> Self {
        Self {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
            requests: Arc::default(),
        }
    }

    /// Appends a step to the script.
    pub fn push(&self, step: ScriptStep) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(step);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<PlanRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Steps not yet used.
    pub fn remaining(&self) -> usize {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[async_trait]
impl Planner for ScriptedPlanner {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let step = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let answer = match step {
            Some(ScriptStep::Draft(d)) => Ok(PlanResponse::new(PlannerOutput::Draft(d))),
            Some(ScriptStep::Delta(d)) => Ok(PlanResponse::new(PlannerOutput::Delta(d))),
            Some(ScriptStep::Reply(text)) => Ok(PlanResponse::from_text(&text, &request)),
            Some(ScriptStep::Error(e)) => Err(e),
            None => Err(PlannerError::Fatal(
                "the planner script is exhausted".to_owned(),
            )),
        };
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        answer
    }
}
