//! What an executing or draining run does next, decided from its scheduler's facts.
//!
//! The driver knows which nodes are ready, done or out of attempts; the decision of what
//! that means — dispatch, wait, drain, or end the run (`NODE_FAILED`, `PLAN_STUCK`,
//! `GOAL_CONDITIONS_UNMET`, completed) — is made here, purely, so it is tested without a
//! runtime and is the same for every driver.

use serde_json::Value;

use super::event::RunError;
use super::vocab::{RunInput, RunState};

/// The scheduler's facts about a run's current plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress<'a> {
    /// Nodes in flight.
    pub in_flight: usize,
    /// Nodes ready to dispatch.
    pub ready: usize,
    /// Free dispatch slots (the concurrency bound minus the nodes in flight).
    pub slots: usize,
    /// Nodes in the plan.
    pub nodes: usize,
    /// Nodes completed.
    pub completed: usize,
    /// The first node that failed after its last attempt and whose ladder ends the run, if any.
    pub exhausted: Option<&'a str>,
    /// The first node that failed after its last attempt and whose ladder asks a human, if any.
    pub ask: Option<&'a str>,
    /// Nodes waiting for a retry's backoff to pass.
    pub waiting: usize,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Dispatch ready nodes (as many as there are slots).
    Dispatch,
    /// Wait for something outside: a node result, a human, the planner.
    Wait,
    /// Feed this input to the machine.
    Feed(RunInput),
    /// Ask a human what to do with this node, whose last attempt failed (the fallback
    /// ladder's `hitl` step).
    Ask(String),
}

/// What a run in `state` does next. `goal` computes the run's output and checks the goal
/// conditions; it is called only when every node has completed.
pub fn next(
    state: RunState,
    progress: &Progress<'_>,
    goal: impl FnOnce() -> Result<Value, String>,
) -> Next {
    let idle = progress.in_flight == 0;
    match state {
        RunState::Executing => {
            if let Some(node) = progress.exhausted {
                if !idle {
                    return Next::Wait;
                }
                let message = format!("node `{node}` failed after its last attempt");
                return fail("NODE_FAILED", message);
            }
            if let Some(node) = progress.ask {
                return Next::Ask(node.to_owned());
            }
            if progress.ready > 0 && progress.slots > 0 {
                return Next::Dispatch;
            }
            if !idle || progress.ready > 0 || progress.waiting > 0 {
                return Next::Wait;
            }
            if progress.completed < progress.nodes {
                return fail("PLAN_STUCK", "no node is ready and some never ran".into());
            }
            match goal() {
                Ok(output) => Next::Feed(RunInput::AllDone { output }),
                Err(message) => fail("GOAL_CONDITIONS_UNMET", message),
            }
        }
        RunState::Replanning if idle => Next::Feed(RunInput::Drained),
        RunState::New
        | RunState::Requesting
        | RunState::Validating
        | RunState::Replanning
        | RunState::Paused
        | RunState::Done => Next::Wait,
    }
}

fn fail(code: &str, message: String) -> Next {
    Next::Feed(RunInput::Fail {
        error: RunError::new(code, message),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(next: Next) -> String {
        match next {
            Next::Feed(RunInput::Fail { error }) => error.code,
            Next::Feed(RunInput::AllDone { .. }) => "completed".into(),
            Next::Feed(RunInput::Drained) => "drained".into(),
            other => format!("{other:?}"),
        }
    }

    fn ok() -> Result<Value, String> {
        Ok(json!({"x": 1}))
    }

    #[test]
    fn executing_decides_dispatch_wait_and_every_ending() {
        let running = Progress {
            in_flight: 1,
            ready: 2,
            slots: 1,
            nodes: 4,
            completed: 1,
            exhausted: None,
            ask: None,
            waiting: 0,
        };
        assert_eq!(next(RunState::Executing, &running, ok), Next::Dispatch);
        let full = Progress {
            slots: 0,
            ..running
        };
        assert_eq!(next(RunState::Executing, &full, ok), Next::Wait);

        let failed = Progress {
            exhausted: Some("b"),
            ..running
        };
        assert_eq!(
            next(RunState::Executing, &failed, ok),
            Next::Wait,
            "drain first"
        );
        let drained = Progress {
            in_flight: 0,
            ..failed
        };
        let Next::Feed(RunInput::Fail { error }) = next(RunState::Executing, &drained, ok) else {
            panic!("node failure ends the run");
        };
        assert_eq!(error.code, "NODE_FAILED");
        assert!(error.message.contains("`b`"));

        let stuck = Progress {
            in_flight: 0,
            ready: 0,
            slots: 1,
            nodes: 4,
            completed: 2,
            exhausted: None,
            ask: None,
            waiting: 0,
        };
        assert_eq!(code(next(RunState::Executing, &stuck, ok)), "PLAN_STUCK");
        let all = Progress {
            completed: 4,
            ..stuck
        };
        assert_eq!(code(next(RunState::Executing, &all, ok)), "completed");
        let unmet = next(RunState::Executing, &all, || Err("score below 3".into()));
        assert_eq!(code(unmet), "GOAL_CONDITIONS_UNMET");
    }

    #[test]
    fn an_exhausted_node_asks_a_human_at_once_and_a_backoff_waits() {
        let asking = Progress {
            in_flight: 1,
            ready: 1,
            slots: 1,
            nodes: 3,
            completed: 0,
            ask: Some("w"),
            ..Progress::default()
        };
        assert_eq!(
            next(RunState::Executing, &asking, ok),
            Next::Ask("w".into()),
            "no drain before asking"
        );
        let failing = Progress {
            exhausted: Some("x"),
            in_flight: 0,
            ..asking
        };
        assert_eq!(code(next(RunState::Executing, &failing, ok)), "NODE_FAILED");
        let backing_off = Progress {
            waiting: 1,
            nodes: 2,
            completed: 1,
            slots: 1,
            ..Progress::default()
        };
        assert_eq!(
            next(RunState::Executing, &backing_off, || panic!("not yet")),
            Next::Wait,
            "a node in backoff is not stuck"
        );
    }

    #[test]
    fn the_goal_is_checked_only_when_every_node_completed() {
        let stuck = Progress {
            nodes: 2,
            completed: 1,
            slots: 1,
            ..Progress::default()
        };
        let next = next(RunState::Executing, &stuck, || {
            panic!("goal checked too early")
        });
        assert_eq!(code(next), "PLAN_STUCK");
    }

    #[test]
    fn replanning_drains_and_other_states_wait() {
        let busy = Progress {
            in_flight: 1,
            ..Progress::default()
        };
        assert_eq!(next(RunState::Replanning, &busy, ok), Next::Wait);
        let idle = Progress::default();
        assert_eq!(code(next(RunState::Replanning, &idle, ok)), "drained");
        for state in [
            RunState::New,
            RunState::Requesting,
            RunState::Validating,
            RunState::Paused,
            RunState::Done,
        ] {
            assert_eq!(next(state, &idle, ok), Next::Wait, "{state}");
        }
    }
}
