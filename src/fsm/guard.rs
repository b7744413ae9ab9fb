//! The guard predicates the rows of the edge table name, each written once. A guard reads
//! the run's data and the input and says whether its row applies, or why not.

use super::data::{RunCore, node_of, require};
use super::event::FollowUp;
use super::vocab::{Purpose, RunInput};

/// Always applies.
pub fn always(_: &RunCore, _: &RunInput) -> Result<(), String> {
    Ok(())
}

/// Planner attempts remain (and, for a planner failure, the error is retryable).
pub fn attempts_left(core: &RunCore, input: &RunInput) -> Result<(), String> {
    if let RunInput::PlannerFailed {
        retryable: false, ..
    } = input
    {
        return Err("the planner error is not retryable".into());
    }
    require(core.attempt < core.limits.max_attempts, || {
        format!(
            "attempt {} of {} used",
            core.attempt, core.limits.max_attempts
        )
    })
}

/// Planner attempts are used up, or (for a planner failure) the error is fatal.
pub fn no_attempts_left(core: &RunCore, input: &RunInput) -> Result<(), String> {
    require(attempts_left(core, input).is_err(), || {
        "planner attempts remain".into()
    })
}

/// The run plans its first version.
pub fn initial_plan(core: &RunCore, _: &RunInput) -> Result<(), String> {
    require(core.purpose == Purpose::Initial, || {
        "a draft was validated during a replan".into()
    })
}

/// The run plans a change to its current version.
pub fn replan(core: &RunCore, _: &RunInput) -> Result<(), String> {
    require(core.purpose == Purpose::Replan, || {
        "a delta was validated for an initial plan".into()
    })
}

/// The node named by the input is not in flight.
pub fn node_idle(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let node = node_of(input);
    require(!core.in_flight.contains_key(node), || {
        format!("node `{node}` is already in flight")
    })
}

/// The node named by the input is in flight.
pub fn node_in_flight(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let node = node_of(input);
    require(core.in_flight.contains_key(node), || {
        format!("node `{node}` is not in flight")
    })
}

/// Replans remain.
pub fn replans_left(core: &RunCore, _: &RunInput) -> Result<(), String> {
    require(core.replans < core.limits.max_replans, || {
        format!(
            "{} of {} replans used",
            core.replans, core.limits.max_replans
        )
    })
}

/// Replans are used up.
pub fn no_replans_left(core: &RunCore, input: &RunInput) -> Result<(), String> {
    require(replans_left(core, input).is_err(), || {
        "replans remain".into()
    })
}

/// No node is in flight.
pub fn nothing_in_flight(core: &RunCore, _: &RunInput) -> Result<(), String> {
    require(core.in_flight.is_empty(), || {
        "nodes are still in flight".into()
    })
}

/// The answer's follow-up is `continue`.
pub fn follow_up_continue(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let (next, _) = core.follow_up(input)?;
    require(next == FollowUp::Continue, || {
        format!("follow-up is {next:?}")
    })
}

/// The answer's follow-up is `replan` and replans remain.
pub fn follow_up_replan(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let (next, room) = core.follow_up(input)?;
    require(next == FollowUp::Replan && room, || {
        format!("follow-up is {next:?} (replans left: {room})")
    })
}

/// The answer's follow-up is `fail` (of a request other than a fallback request), or
/// `replan` with no replans left.
pub fn follow_up_fail(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let (next, room) = core.follow_up(input)?;
    let fallback = core.fallback_node().is_some();
    require(
        (next == FollowUp::Fail && !fallback) || (next == FollowUp::Replan && !room),
        || format!("follow-up is {next:?}"),
    )
}

/// The answer to a fallback request fails the node for good (option `fail`, or a rejection).
pub fn fallback_fail(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let (next, _) = core.follow_up(input)?;
    require(
        next == FollowUp::Fail && core.fallback_node().is_some(),
        || "not a fallback request answered with `fail`".into(),
    )
}

/// The node named by the input failed its last attempt and waits for the fallback ladder.
pub fn node_exhausted(core: &RunCore, input: &RunInput) -> Result<(), String> {
    let node = node_of(input);
    require(core.exhausted.contains_key(node), || {
        format!("node `{node}` has not failed its last attempt")
    })
}

/// No HITL request is pending (the run was paused by an operator or a policy).
pub fn no_hitl_pending(core: &RunCore, _: &RunInput) -> Result<(), String> {
    match &core.hitl {
        Some(p) => Err(format!(
            "hitl request `{}` must be answered to resume",
            p.request_id
        )),
        None => Ok(()),
    }
}
