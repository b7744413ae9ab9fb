//! The run's data ([`RunCore`]) that the rows of [`super::table::EDGES`] read (`guard.rs`)
//! and change (`act.rs`), and what one transition produced ([`Ctx`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::event::{
    EventBody, FollowUp, HitlDecision, PlanPhase, RunError, RunEvent, RunOutcome, Trigger,
};
use super::vocab::{Command, Limits, PendingHitl, PendingOutput, PlanCall, Purpose, RunInput};
use crate::diagnostics::Diagnostic;
use crate::ids::{RunId, Timestamp};

/// The run's data: everything the guards read and the actions change, rebuilt from events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCore {
    pub(super) run_id: RunId,
    pub(super) limits: Limits,
    pub(super) seq: u64,
    pub(super) plan_version: u32,
    pub(super) purpose: Purpose,
    pub(super) attempt: u32,
    pub(super) replans: u32,
    pub(super) trigger: Option<Trigger>,
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) last_error: Option<String>,
    pub(super) pending_output: Option<PendingOutput>,
    pub(super) in_flight: BTreeMap<String, u32>,
    pub(super) hitl: Option<PendingHitl>,
    pub(super) outcome: Option<RunOutcome>,
    /// Nodes whose last attempt failed, waiting for what the fallback ladder does next (a
    /// human's answer, or the end of the run): node → (last attempt, last error).
    pub(super) exhausted: BTreeMap<String, (u32, String)>,
}

/// What a human chose for a node whose last attempt failed (the option of a fallback
/// request; see docs/POLICIES.md, "Fallback ladder").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackChoice {
    /// Run the node again, a fresh round of attempts.
    Retry,
    /// Complete the node with a supplied output.
    Skip,
    /// Ask the planner for a delta, the failure as the reason.
    Replan,
    /// Fail the run (`NODE_FAILED`).
    Fail,
}

impl FallbackChoice {
    /// The options a fallback request offers, in order.
    pub const OPTIONS: [&'static str; 4] = ["retry", "skip", "replan", "fail"];

    /// The choice an answer makes: its option (`retry`, `skip`, `replan`, `fail`); a
    /// rejection fails and a bare approval retries.
    pub fn of(decision: HitlDecision, text: Option<&str>) -> Result<Self, String> {
        match (decision, text) {
            (HitlDecision::Reject, _) => Ok(Self::Fail),
            (HitlDecision::Approve, None) => Ok(Self::Retry),
            (_, Some("retry")) => Ok(Self::Retry),
            (_, Some("skip")) => Ok(Self::Skip),
            (_, Some("replan")) => Ok(Self::Replan),
            (_, Some("fail")) => Ok(Self::Fail),
            (_, Some(other)) => Err(format!(
                "`{other}` is not an option of a fallback request; expected one of {}",
                Self::OPTIONS.join(", ")
            )),
            (_, None) => Err(format!(
                "a fallback request is answered with an option: {}",
                Self::OPTIONS.join(", ")
            )),
        }
    }

    fn follow_up(self) -> FollowUp {
        match self {
            Self::Retry | Self::Skip => FollowUp::Continue,
            Self::Replan => FollowUp::Replan,
            Self::Fail => FollowUp::Fail,
        }
    }
}

/// What one transition produced (events, commands, the row taken). Not persisted.
#[derive(Debug, Default)]
pub struct Ctx {
    pub(super) now: Timestamp,
    pub(super) restoring: bool,
    pub(super) events: Vec<RunEvent>,
    pub(super) commands: Vec<Command>,
    pub(super) rejected: Option<String>,
    pub(super) absorbed: bool,
    /// Index into `EDGES` of the row taken.
    pub(super) row: Option<usize>,
}

impl Ctx {
    pub(super) fn at(now: Timestamp, restoring: bool) -> Self {
        Self {
            now,
            restoring,
            ..Self::default()
        }
    }
}

impl RunCore {
    pub(super) fn new(run_id: RunId, limits: Limits) -> Self {
        Self {
            run_id,
            limits,
            seq: 0,
            plan_version: 0,
            purpose: Purpose::Initial,
            attempt: 0,
            replans: 0,
            trigger: None,
            diagnostics: Vec::new(),
            last_error: None,
            pending_output: None,
            in_flight: BTreeMap::new(),
            hitl: None,
            outcome: None,
            exhausted: BTreeMap::new(),
        }
    }

    /// The planner call to make in Requesting.
    pub(super) fn plan_call(&self) -> PlanCall {
        PlanCall {
            purpose: self.purpose,
            phase: self.phase(),
            attempt: self.attempt,
            trigger: self.trigger.clone(),
            diagnostics: self.diagnostics.clone(),
            error: self.last_error.clone(),
        }
    }

    /// The entry action's command of a state: call the planner (Requesting), validate
    /// (Validating), finish (Done). Nothing while restoring.
    pub(super) fn enter(&self, state: super::RunState, ctx: &mut Ctx) {
        if ctx.restoring {
            return;
        }
        let command = match state {
            super::RunState::Requesting => Some(Command::CallPlanner(self.plan_call())),
            super::RunState::Validating => self.pending_output.clone().map(Command::Validate),
            super::RunState::Done => self.outcome.map(Command::Finish),
            _ => None,
        };
        ctx.commands.extend(command);
    }

    pub(super) fn emit(&mut self, ctx: &mut Ctx, node_id: Option<&str>, body: EventBody) {
        self.seq += 1;
        ctx.events.push(RunEvent {
            seq: self.seq,
            run_id: self.run_id,
            timestamp: ctx.now,
            plan_version: self.plan_version,
            node_id: node_id.map(str::to_owned),
            body,
        });
    }

    pub(super) fn finish(
        &mut self,
        ctx: &mut Ctx,
        status: RunOutcome,
        output: Option<Value>,
        error: RunError,
    ) {
        self.outcome = Some(status);
        self.hitl = None;
        self.in_flight.clear();
        self.exhausted.clear();
        self.pending_output = None;
        let error = (status != RunOutcome::Completed).then_some(error);
        let body = EventBody::Complete {
            status,
            output,
            error,
        };
        self.emit(ctx, None, body);
    }

    pub(super) fn fail(&mut self, ctx: &mut Ctx, code: &str, message: String) {
        self.finish(ctx, RunOutcome::Failed, None, RunError::new(code, message));
    }

    pub(super) fn phase(&self) -> PlanPhase {
        match (self.purpose, self.attempt) {
            (Purpose::Initial, 1) => PlanPhase::Initial,
            (Purpose::Replan, 1) => PlanPhase::Replan,
            (Purpose::Initial | Purpose::Replan, _) => PlanPhase::Revision,
        }
    }

    /// What answering the pending request leads to, replans permitting.
    pub(super) fn follow_up(&self, input: &RunInput) -> Result<(FollowUp, bool), String> {
        let RunInput::HitlAnswered {
            request_id,
            decision,
            ..
        } = input
        else {
            return Err("not a hitl answer".into());
        };
        let Some(pending) = &self.hitl else {
            return Err("no hitl request is pending".into());
        };
        if pending.request_id != *request_id {
            return Err(format!("hitl request `{request_id}` is not pending"));
        }
        if let Some(choice) = self.fallback_choice(input) {
            return Ok((choice?.follow_up(), self.replans < self.limits.max_replans));
        }
        let next = match decision {
            HitlDecision::Reject => pending.on_reject,
            HitlDecision::Approve | HitlDecision::Option | HitlDecision::Freeform => {
                pending.on_approve
            }
        };
        Ok((next, self.replans < self.limits.max_replans))
    }
}

impl RunCore {
    /// The node the pending request asks about when it is a fallback request (a human asked
    /// what to do with a node whose last attempt failed).
    pub(super) fn fallback_node(&self) -> Option<&str> {
        let pending = self.hitl.as_ref()?;
        let node = pending.node_id.as_deref()?;
        (pending.policy_id.is_none() && self.exhausted.contains_key(node)).then_some(node)
    }

    /// The choice an answer to the pending fallback request makes (`None` when the pending
    /// request is not a fallback request).
    pub(super) fn fallback_choice(
        &self,
        input: &RunInput,
    ) -> Option<Result<FallbackChoice, String>> {
        self.fallback_node()?;
        let RunInput::HitlAnswered { decision, text, .. } = input else {
            return None;
        };
        Some(FallbackChoice::of(*decision, text.as_deref()))
    }
}

/// A guard: `Ok` when its row applies, or why not.
pub type GuardFn = fn(&RunCore, &RunInput) -> Result<(), String>;

/// A row action: changes the run's data and emits the row's one event.
pub type ActionFn = fn(&mut RunCore, &mut Ctx, &RunInput);

pub(super) fn require(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

pub(super) fn node_of(input: &RunInput) -> &str {
    match input {
        RunInput::NodeDispatched { node_id, .. }
        | RunInput::NodeSucceeded { node_id, .. }
        | RunInput::NodeFailed { node_id, .. }
        | RunInput::OutputInvalid { node_id, .. }
        | RunInput::NodeSkipped { node_id, .. } => node_id,
        _ => "",
    }
}

/// Read access for checkers outside the machine (the reference models of `flexrun::testing`).
impl RunCore {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The limits the run enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The last seq produced.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The current plan version (0 before the first plan).
    pub fn plan_version(&self) -> u32 {
        self.plan_version
    }

    /// Why the planner is (or was last) asked.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Replans used so far.
    pub fn replans(&self) -> u32 {
        self.replans
    }

    /// Nodes in flight with their attempt numbers.
    pub fn in_flight(&self) -> &BTreeMap<String, u32> {
        &self.in_flight
    }

    /// The pending HITL request, if the run waits on one.
    pub fn pending_hitl(&self) -> Option<&PendingHitl> {
        self.hitl.as_ref()
    }

    /// How the run ended, once done.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.outcome
    }

    /// Nodes whose last attempt failed, waiting for the fallback ladder's next step, with
    /// their last attempt and error.
    pub fn exhausted(&self) -> &BTreeMap<String, (u32, String)> {
        &self.exhausted
    }
}
