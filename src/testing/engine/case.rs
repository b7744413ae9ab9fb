//! The harness: one run, the operations applied to it, and the checks.
//!
//! The harness follows the run's stream and replays every event on a [`RunMachine`] (the
//! *mirror*: replay is how the engine itself recovers runs, and the machine-level model holds
//! the machine to the table automaton). Before each steering request it catches the mirror
//! up with the committed log; when the mirror is then quiescent — done, or paused with
//! nothing running but human nodes — the engine cannot move on its own, so the mirror's state
//! is the engine's and a clone of the mirror can be asked what the request must do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use tokio::time::timeout;

use super::report::{CaseReport, Rule, StepOutcome, StepRecord};
use super::{Answer, CaseOptions, Op, SteerOp};
use crate::catalog::ExecutorSpec;
use crate::conformance::Options;
use crate::engine::{Engine, EventStream, Steer};
use crate::envelope::RunEnvelope;
use crate::fsm::{EventBody, Limits, RunEvent, RunMachine, RunOutcome, RunState};
use crate::ids::RunId;
use crate::testing::check_stream;

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
        mirror: RunMachine::new(run, limits),
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
pub(super) enum Expect {
    Paused,
    Resumed,
    Resolved(String),
    Cancelled,
}

impl Expect {
    pub(super) fn matches(&self, e: &RunEvent) -> bool {
        match self {
            Self::Paused => matches!(e.body, EventBody::RunPaused { .. }),
            Self::Resumed => matches!(e.body, EventBody::RunResumed { .. }),
            Self::Resolved(id) => {
                matches!(&e.body, EventBody::HitlResolved { request_id, .. } if request_id == id)
                    || matches!(
                        e.body,
                        EventBody::Complete {
                            status: RunOutcome::Failed,
                            ..
                        }
                    )
            }
            Self::Cancelled => matches!(
                e.body,
                EventBody::Complete {
                    status: RunOutcome::Cancelled,
                    ..
                }
            ),
        }
    }
}

/// An accepted request: its event has a seq in `(after, upto]`.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) step: usize,
    pub(super) expect: Expect,
    pub(super) after: u64,
    pub(super) upto: u64,
    /// The event the reference automaton emits for it, when the run was quiescent.
    pub(super) predicted: Option<Box<RunEvent>>,
}

pub(super) struct Case<'a> {
    pub(super) engine: &'a Engine,
    pub(super) options: &'a CaseOptions,
    pub(super) run: RunId,
    pub(super) stream: EventStream,
    pub(super) stream_done: bool,
    pub(super) mirror: RunMachine,
    /// Capability of each node's last `node_start`.
    pub(super) capabilities: BTreeMap<String, String>,
    pub(super) claims: Vec<Claim>,
    /// The mirror cannot follow any more, or the run stalled: no more operations.
    pub(super) broken: bool,
    pub(super) report: CaseReport,
}

impl Case<'_> {
    pub(super) fn seen(&self) -> u64 {
        self.report.events.last().map_or(0, |e| e.seq)
    }

    /// Takes the next event of the stream (waiting at most `wait`); false when none came.
    pub(super) async fn pull(&mut self) -> bool {
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

    pub(super) fn committed(&mut self, step: Option<usize>) -> Option<u64> {
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
    pub(super) async fn sync(&mut self) {
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
    pub(super) fn quiescent(&self) -> bool {
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
            self.cancel_broken().await;
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
        let contract = Options::default()
            .with_limits(self.mirror.core().limits())
            .for_run(self.run);
        if let Err(found) = check_stream(&self.report.events, &contract) {
            for v in found.violations() {
                self.report
                    .violate(None, Rule::Stream(v.rule), v.to_string());
            }
        }
        self.match_claims();
    }

    /// Cancels a run the harness can no longer follow, so that it ends; the cancel is a
    /// finishing step like any other.
    async fn cancel_broken(&mut self) {
        let before_seq = self.engine.head(self.run).map_or(0, |h| h.last_seq);
        let cancel = Steer::Cancel {
            reason: "the case cannot go on".to_owned(),
        };
        let answer = timeout(self.options.wait, self.engine.steer(self.run, cancel, None)).await;
        let outcome = match answer {
            Ok(Ok(steered)) => {
                let upto = self.engine.head(self.run).map_or(u64::MAX, |h| h.last_seq);
                self.claims.push(Claim {
                    step: self.report.steps.len(),
                    expect: Expect::Cancelled,
                    after: before_seq,
                    upto,
                    predicted: None,
                });
                StepOutcome::Accepted(steered.state)
            }
            Ok(Err(e)) => StepOutcome::Refused(e.to_string()),
            Err(_) => StepOutcome::NoAnswer,
        };
        self.report.steps.push(StepRecord {
            op: Op::Steer(SteerOp::Cancel),
            finishing: true,
            before_seq,
            quiescent: false,
            outcome,
        });
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
