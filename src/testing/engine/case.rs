//! The harness: one run, the operations applied to it, and the checks.
//!
//! The harness follows the run's stream and replays every event on a [`ReferenceRun`]
//! (the *mirror*). Before each steering request it catches the mirror up with the committed
//! log; when the mirror is then quiescent — done, or paused with nothing running but human
//! nodes — the engine cannot move on its own, so the mirror's state is the engine's and the
//! reference automaton can be asked what the request must do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;
use tokio::time::timeout;

use super::report::{CaseReport, Rule, StepOutcome, StepRecord};
use super::{Answer, CaseOptions, Op, STALE_REQUEST_ID, SteerOp};
use crate::catalog::ExecutorSpec;
use crate::engine::{Engine, EngineError, EventStream, HitlAnswer, Steer, Steered};
use crate::envelope::RunEnvelope;
use crate::fsm::{
    EventBody, FsmError, HitlDecision, Limits, RunEvent, RunInput, RunOutcome, RunState,
};
use crate::ids::{RunId, Timestamp};
use crate::store::RunStatus;
use crate::testing::{ReferenceRun, check_stream};

/// Submits `envelope` to `engine`, applies `ops`, ends the run and checks everything it
/// saw (see the [module docs](super)). The harness must be the only one steering the run.
///
/// Every wait is bounded by [`CaseOptions::wait`]; a case that stalls reports
/// [`Rule::Stalled`] and cancels the run. Problems are reported, never panicked on.
pub async fn run_case(
    engine: &Engine,
    envelope: RunEnvelope,
    ops: &[Op],
    options: &CaseOptions,
) -> CaseReport {
    let mut report = CaseReport::default();
    let limits = match crate::policy::normalize(&envelope.policies) {
        Ok(p) => Limits {
            max_attempts: p.planner.max_attempts,
            max_replans: p.planner.max_replans,
        },
        Err(e) => {
            report.violate(None, Rule::Setup, format!("policies do not normalize: {e}"));
            return report;
        }
    };
    let run = match timeout(options.wait, engine.submit(envelope)).await {
        Ok(Ok(run)) => run,
        Ok(Err(e)) => {
            report.violate(None, Rule::Setup, format!("submit refused: {e}"));
            return report;
        }
        Err(_) => {
            report.violate(None, Rule::Stalled, "submit did not answer");
            return report;
        }
    };
    report.run_id = Some(run);
    let stream = match engine.events(run, 0) {
        Ok(stream) => stream,
        Err(e) => {
            report.violate(None, Rule::Setup, format!("events: {e}"));
            return report;
        }
    };
    let mut case = Case {
        engine,
        options,
        run,
        stream,
        stream_done: false,
        mirror: ReferenceRun::new(run, limits),
        capabilities: BTreeMap::new(),
        claims: Vec::new(),
        broken: false,
        report,
    };
    for op in ops {
        if case.broken {
            break;
        }
        case.apply(op, false).await;
    }
    case.finish().await;
    case.conclude().await;
    case.report
}

/// What an accepted request must show in the stream.
#[derive(Debug)]
enum Expect {
    Paused,
    Resumed,
    Resolved(String),
    Cancelled,
}

impl Expect {
    fn matches(&self, e: &RunEvent) -> bool {
        match (self, &e.body) {
            (Self::Paused, EventBody::RunPaused { .. })
            | (Self::Resumed, EventBody::RunResumed { .. }) => true,
            (Self::Resolved(id), EventBody::HitlResolved { request_id, .. }) => request_id == id,
            (
                Self::Resolved(_),
                EventBody::Complete {
                    status: RunOutcome::Failed,
                    ..
                },
            )
            | (
                Self::Cancelled,
                EventBody::Complete {
                    status: RunOutcome::Cancelled,
                    ..
                },
            ) => true,
            _ => false,
        }
    }
}

/// An accepted request: its event has a seq in `(after, upto]`.
#[derive(Debug)]
struct Claim {
    step: usize,
    expect: Expect,
    after: u64,
    upto: u64,
    /// The event the reference automaton emits for it, when the run was quiescent.
    predicted: Option<Box<RunEvent>>,
}

/// What the reference automaton says a request does, asked when the run is quiescent.
#[derive(Debug)]
enum Expected {
    Accept(Option<Box<RunEvent>>),
    Refuse,
    Ended,
}

struct Case<'a> {
    engine: &'a Engine,
    options: &'a CaseOptions,
    run: RunId,
    stream: EventStream,
    stream_done: bool,
    mirror: ReferenceRun,
    /// Capability of each node's last `node_start`.
    capabilities: BTreeMap<String, String>,
    claims: Vec<Claim>,
    /// The mirror cannot follow any more, or the run stalled: no more operations.
    broken: bool,
    report: CaseReport,
}

impl Case<'_> {
    fn seen(&self) -> u64 {
        self.report.events.last().map_or(0, |e| e.seq)
    }

    /// Takes the next event of the stream (waiting at most `wait`); false when none came.
    async fn pull(&mut self) -> bool {
        if self.stream_done {
            return false;
        }
        let event = match timeout(self.options.wait, self.stream.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                self.stream_done = true;
                return false;
            }
            Err(_) => {
                let detail = format!(
                    "no event within {:?} after seq {} in state {}",
                    self.options.wait,
                    self.seen(),
                    self.mirror.state()
                );
                self.report.violate(None, Rule::Stalled, detail);
                self.broken = true;
                return false;
            }
        };
        if !self.broken
            && let Err(e) = self.mirror.replay(&event)
        {
            self.report.violate(None, Rule::Replay, e.to_string());
            self.broken = true;
        }
        if let EventBody::NodeStart { capability_id, .. } = &event.body {
            let node = event.node_id.clone().unwrap_or_default();
            self.capabilities.insert(node, capability_id.clone());
        }
        self.report.events.push(event);
        true
    }

    fn committed(&mut self, step: Option<usize>) -> Option<u64> {
        match self.engine.head(self.run) {
            Ok(head) => Some(head.last_seq),
            Err(e) => {
                self.report.violate(step, Rule::Setup, format!("head: {e}"));
                self.broken = true;
                None
            }
        }
    }

    /// Follows the stream up to what is committed now.
    async fn sync(&mut self) {
        let Some(target) = self.committed(None) else {
            return;
        };
        while !self.broken && self.seen() < target {
            if !self.pull().await && !self.broken {
                let detail = format!(
                    "the stream ended at seq {} but seq {target} is committed",
                    self.seen()
                );
                self.report.violate(None, Rule::Store, detail);
                self.broken = true;
            }
        }
    }

    /// Done, or paused with nothing in flight but human nodes (which wait for answers).
    fn quiescent(&self) -> bool {
        match self.mirror.state() {
            RunState::Done => true,
            RunState::Paused => {
                let catalog = self.engine.catalog();
                self.mirror.in_flight().keys().all(|node| {
                    self.capabilities
                        .get(node)
                        .and_then(|c| catalog.registry.get(c))
                        .is_some_and(|c| matches!(c.executor, ExecutorSpec::Human))
                })
            }
            RunState::New
            | RunState::Requesting
            | RunState::Validating
            | RunState::Executing
            | RunState::Replanning => false,
        }
    }

    async fn apply(&mut self, op: &Op, finishing: bool) {
        self.sync().await;
        if self.broken {
            return;
        }
        let before_seq = self.seen();
        let quiescent = self.quiescent();
        let outcome = match op {
            Op::Steer(steer) => {
                let step = self.report.steps.len();
                self.steer(step, steer, quiescent).await
            }
            Op::NextEvent if quiescent => StepOutcome::Waited(0),
            Op::NextEvent => StepOutcome::Waited(usize::from(self.pull().await)),
            Op::Quiesce => StepOutcome::Waited(self.quiesce().await),
        };
        self.report.steps.push(StepRecord {
            op: op.clone(),
            finishing,
            before_seq,
            quiescent,
            outcome,
        });
    }

    /// Follows the stream until the run is quiescent; returns how many events came.
    async fn quiesce(&mut self) -> usize {
        let mut n = 0;
        while !self.broken && !self.quiescent() && self.pull().await {
            n += 1;
        }
        n
    }

    async fn steer(&mut self, step: usize, op: &SteerOp, quiescent: bool) -> StepOutcome {
        let pending = self.mirror.pending_hitl().map(|p| p.request_id.clone());
        let (steer, input) = translate(op, pending);
        let expected = quiescent.then(|| self.expected(input.as_ref()));
        let after = self.seen();
        let answer =
            match timeout(self.options.wait, self.engine.steer(self.run, steer, None)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let detail = format!("{op:?} did not answer within {:?}", self.options.wait);
                    self.report.violate(Some(step), Rule::Stalled, detail);
                    self.broken = true;
                    return StepOutcome::Refused("no answer".to_owned());
                }
            };
        let upto = self.committed(Some(step)).unwrap_or(u64::MAX);
        match answer {
            Ok(steered) => {
                self.accepted(step, op, input.as_ref(), &steered, expected, (after, upto));
                StepOutcome::Accepted(steered.state)
            }
            Err(e) => {
                self.refused(step, op, input.as_ref(), &e, expected);
                StepOutcome::Refused(e.to_string())
            }
        }
    }

    fn expected(&self, input: Option<&RunInput>) -> Expected {
        if self.mirror.state() == RunState::Done {
            return Expected::Ended;
        }
        let Some(input) = input else {
            return Expected::Accept(None);
        };
        match self.mirror.clone().apply(input, Timestamp::now()) {
            Ok(step) if step.events.is_empty() => Expected::Ended,
            Ok(step) => Expected::Accept(step.events.into_iter().next().map(Box::new)),
            Err(_) => Expected::Refuse,
        }
    }

    fn accepted(
        &mut self,
        step: usize,
        op: &SteerOp,
        input: Option<&RunInput>,
        steered: &Steered,
        expected: Option<Expected>,
        (after, upto): (u64, u64),
    ) {
        let state = self.mirror.state();
        let predicted = match expected {
            Some(Expected::Accept(event)) => event,
            Some(Expected::Refuse) => {
                let detail =
                    format!("the engine accepted {op:?}; the reference refuses it in {state}");
                self.report.violate(Some(step), Rule::Acceptance, detail);
                None
            }
            Some(Expected::Ended) => {
                let detail = format!("the engine accepted {op:?} after the run ended");
                self.report.violate(Some(step), Rule::Acceptance, detail);
                None
            }
            None => None,
        };
        let expect = match op {
            SteerOp::Pause => Expect::Paused,
            SteerOp::Resume => Expect::Resumed,
            SteerOp::Cancel => Expect::Cancelled,
            SteerOp::Answer(_) | SteerOp::AnswerStale => {
                Expect::Resolved(answered_id(input).unwrap_or_default().to_owned())
            }
            SteerOp::Signal(_) => return,
        };
        let lands = match op {
            SteerOp::Pause => steered.state == RunState::Paused,
            SteerOp::Cancel => {
                steered.state == RunState::Done && steered.status == RunStatus::Cancelled
            }
            SteerOp::Resume | SteerOp::Answer(_) | SteerOp::AnswerStale | SteerOp::Signal(_) => {
                true
            }
        };
        if !lands {
            let detail = format!(
                "{op:?} was accepted but left the run {} ({:?})",
                steered.state, steered.status
            );
            self.report.violate(Some(step), Rule::Acceptance, detail);
        }
        self.claims.push(Claim {
            step,
            expect,
            after,
            upto,
            predicted,
        });
    }

    fn refused(
        &mut self,
        step: usize,
        op: &SteerOp,
        input: Option<&RunInput>,
        e: &EngineError,
        expected: Option<Expected>,
    ) {
        let ended = matches!(e, EngineError::RunEnded(_));
        let fits = match (e, op) {
            (EngineError::RunEnded(_), _) => match self.engine.head(self.run) {
                Ok(head) => head.status.is_terminal(),
                Err(_) => false,
            },
            (
                EngineError::IllegalTransition(FsmError::IllegalTransition { input: kind, .. }),
                SteerOp::Pause | SteerOp::Resume | SteerOp::Cancel,
            ) => Some(*kind) == input.map(RunInput::kind),
            (
                EngineError::UnknownHitlRequest { request_id, .. },
                SteerOp::Answer(_) | SteerOp::AnswerStale,
            ) => Some(request_id.as_str()) == answered_id(input),
            (_, _) => false,
        };
        if !fits {
            let detail = format!("{op:?} failed with an error that is not its refusal: {e}");
            self.report
                .violate(Some(step), Rule::UnexpectedError, detail);
        }
        let state = self.mirror.state();
        let wrong = match expected {
            Some(Expected::Accept(_)) => Some("the reference accepts it"),
            Some(Expected::Ended) if !ended => Some("the run has ended"),
            Some(Expected::Refuse) if ended => Some("the run has not ended"),
            Some(Expected::Ended | Expected::Refuse) | None => None,
        };
        if let Some(why) = wrong {
            let detail = format!("the engine refused {op:?} in {state} ({e}) but {why}");
            self.report.violate(Some(step), Rule::Acceptance, detail);
        }
    }

    /// Answers and resumes until the run ends, cancelling after the last round.
    async fn finish(&mut self) {
        for _ in 0..self.options.finish_rounds {
            self.apply(&Op::Quiesce, true).await;
            if self.broken || self.mirror.state() == RunState::Done {
                return;
            }
            let op = match self.mirror.pending_hitl() {
                Some(_) => SteerOp::Answer(Answer::Approve),
                None => SteerOp::Resume,
            };
            self.apply(&Op::Steer(op), true).await;
        }
        if !self.broken && self.mirror.state() != RunState::Done {
            self.apply(&Op::Steer(SteerOp::Cancel), true).await;
            self.apply(&Op::Quiesce, true).await;
        }
    }

    /// Waits for the end, reads the stored log and runs the checks over the whole run.
    async fn conclude(&mut self) {
        let wait = self.options.wait;
        if self.broken {
            let _ = timeout(wait, self.engine.cancel(self.run, "the case broke")).await;
        }
        let result = match timeout(wait, self.engine.wait(self.run)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                self.report.violate(None, Rule::NotEnded, e.to_string());
                return;
            }
            Err(_) => {
                let detail = format!("the run did not end within {wait:?}");
                self.report.violate(None, Rule::NotEnded, detail);
                return;
            }
        };
        self.report.outcome = Some(result.status);
        if !self.broken {
            while self.pull().await {}
        }
        let stored = match self.engine.events(self.run, 0) {
            Ok(stream) => timeout(wait, stream.collect::<Vec<_>>()).await.ok(),
            Err(_) => None,
        };
        let Some(stored) = stored else {
            self.report
                .violate(None, Rule::Store, "the stored log cannot be read");
            return;
        };
        if self.broken {
            self.report.events = stored;
        } else if !same_log(&stored, &self.report.events) {
            let detail = format!(
                "streamed {} events, stored {}",
                self.report.events.len(),
                stored.len()
            );
            self.report.violate(None, Rule::Store, detail);
        }
        let last = self.report.events.last().map(|e| e.body.clone());
        if !matches!(last, Some(EventBody::Complete { status, .. }) if status == result.status) {
            let detail = format!("wait says {:?}, the log ends {last:?}", result.status);
            self.report.violate(None, Rule::Store, detail);
        }
        if let Err(v) = check_stream(&self.report.events) {
            self.report
                .violate(None, Rule::Stream(v.rule), v.to_string());
        }
        self.match_claims();
    }

    /// Pairs every accepted request with its event, and every steering event with a request.
    fn match_claims(&mut self) {
        let mut claimed = BTreeSet::new();
        let events = std::mem::take(&mut self.report.events);
        for claim in std::mem::take(&mut self.claims) {
            let found = events.iter().find(|e| {
                e.seq > claim.after
                    && e.seq <= claim.upto
                    && !claimed.contains(&e.seq)
                    && claim.expect.matches(e)
            });
            let Some(event) = found else {
                let detail = format!(
                    "no {:?} event in seqs {}..={}",
                    claim.expect,
                    claim.after + 1,
                    claim.upto
                );
                self.report
                    .violate(Some(claim.step), Rule::MissingEvent, detail);
                continue;
            };
            claimed.insert(event.seq);
            if let Some(p) = &claim.predicted {
                let same = event.seq == claim.after + 1
                    && event.body == p.body
                    && event.plan_version == p.plan_version
                    && event.node_id == p.node_id;
                if !same {
                    let detail = format!("the engine emitted {event:?}, the reference {p:?}");
                    self.report
                        .violate(Some(claim.step), Rule::EventMismatch, detail);
                }
            }
        }
        for e in &events {
            let steering = matches!(
                e.body,
                EventBody::RunPaused { .. }
                    | EventBody::RunResumed { .. }
                    | EventBody::HitlResolved { .. }
                    | EventBody::Complete {
                        status: RunOutcome::Cancelled,
                        ..
                    }
            );
            if steering && !claimed.contains(&e.seq) {
                let detail = format!(
                    "`{}` at seq {} answers no accepted request",
                    e.kind(),
                    e.seq
                );
                self.report.violate(None, Rule::UnexplainedEvent, detail);
            }
        }
        self.report.events = events;
    }
}

fn same_log(a: &[Arc<RunEvent>], b: &[Arc<RunEvent>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

const REASON: &str = "steered by the test harness";

/// The request id an answer goes to: the pending one, else one that is not pending.
fn answer_id(op: &SteerOp, pending: Option<&String>) -> String {
    match (op, pending) {
        (SteerOp::Answer(_), Some(id)) => id.clone(),
        _ => STALE_REQUEST_ID.to_owned(),
    }
}

fn answered_id(input: Option<&RunInput>) -> Option<&str> {
    match input {
        Some(RunInput::HitlAnswered { request_id, .. }) => Some(request_id),
        _ => None,
    }
}

/// The engine request for `op`, and the machine input it becomes (none for a signal).
fn translate(op: &SteerOp, pending: Option<String>) -> (Steer, Option<RunInput>) {
    let reason = REASON.to_owned();
    match op {
        SteerOp::Pause => (
            Steer::Pause {
                reason: reason.clone(),
            },
            Some(RunInput::OperatorPause { reason }),
        ),
        SteerOp::Resume => (
            Steer::Resume {
                reason: reason.clone(),
            },
            Some(RunInput::Resume { reason }),
        ),
        SteerOp::Cancel => (
            Steer::Cancel {
                reason: reason.clone(),
            },
            Some(RunInput::Cancel { reason }),
        ),
        SteerOp::Answer(_) | SteerOp::AnswerStale => {
            let request_id = answer_id(op, pending.as_ref());
            let (decision, text) = match op {
                SteerOp::Answer(Answer::Reject) => (HitlDecision::Reject, None),
                SteerOp::Answer(Answer::Text(t)) => (HitlDecision::Freeform, Some(t.clone())),
                _ => (HitlDecision::Approve, None),
            };
            let mut answer = HitlAnswer::new(decision);
            answer.text = text.clone();
            let input = RunInput::HitlAnswered {
                request_id: request_id.clone(),
                decision,
                text,
                responder: None,
            };
            (Steer::Answer { request_id, answer }, Some(input))
        }
        SteerOp::Signal(name) => (
            Steer::Signal {
                name: name.clone(),
                payload: json!({}),
            },
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::InputKind;

    #[test]
    fn requests_become_the_inputs_the_driver_feeds() {
        let (steer, input) = translate(
            &SteerOp::Answer(Answer::Text("ok".into())),
            Some("h".into()),
        );
        assert_eq!(steer.operation(), "answer");
        assert_eq!(
            input,
            Some(RunInput::HitlAnswered {
                request_id: "h".into(),
                decision: HitlDecision::Freeform,
                text: Some("ok".into()),
                responder: None
            })
        );
        let (_, stale) = translate(&SteerOp::Answer(Answer::Approve), None);
        assert_eq!(answered_id(stale.as_ref()), Some(STALE_REQUEST_ID));
        let (_, pause) = translate(&SteerOp::Pause, None);
        assert_eq!(pause.map(|i| i.kind()), Some(InputKind::OperatorPause));
        let (signal, none) = translate(&SteerOp::Signal("go".into()), None);
        assert_eq!(signal.operation(), "signal");
        assert_eq!(none, None);
    }
}
