//! The checker of one run: walks its events once, keeping what each rule needs.

use std::collections::{BTreeMap, HashMap};

use super::nodes::NodeTrack;
use super::{Options, Report, Rule, RunSummary, Violation};
use crate::fsm::{EventBody, EventKind, FollowUp, RunEvent, RunMachine, RunOutcome};
use crate::ids::{IdKind, RunId, Timestamp, check_id};

/// What the checker knows about one HITL request.
#[derive(Debug)]
struct RequestTrack {
    /// The seq of its `hitl_request`.
    seq: u64,
    /// The node it concerns.
    node_id: Option<String>,
    /// The seq of its `hitl_resolved`.
    answered_at: Option<u64>,
}

/// The position of the event being checked.
#[derive(Debug, Clone, Copy)]
struct At {
    index: usize,
    seq: u64,
    kind: EventKind,
}

/// One run's checker.
pub(crate) struct RunCheck<'a> {
    pub(super) run_id: RunId,
    all: &'a [RunEvent],
    require_complete: bool,
    expected_run: Option<RunId>,
    /// The reference machine, until the first event it refuses.
    pub(super) machine: Option<RunMachine>,
    pub(super) legality_stopped_at: Option<u64>,
    next_seq: u64,
    /// Seq → index of the first event with it.
    seen: HashMap<u64, usize>,
    last_time: Option<(Timestamp, u64)>,
    complete: Option<(u64, RunOutcome)>,
    pub(super) version: u32,
    accepted_at: Option<u64>,
    replan_since: Option<u64>,
    paused_since: Option<(u64, EventKind)>,
    pub(super) nodes: BTreeMap<String, NodeTrack>,
    requests: BTreeMap<String, RequestTrack>,
    events: usize,
    at: Option<At>,
    /// Rules already flagged at the current event (one violation per rule and event).
    pub(super) flagged: Vec<Rule>,
    found: Vec<Violation>,
}

impl<'a> RunCheck<'a> {
    pub(crate) fn new(run_id: RunId, all: &'a [RunEvent], opts: &Options) -> Self {
        Self {
            run_id,
            all,
            require_complete: opts.require_complete,
            expected_run: opts.run,
            machine: Some(RunMachine::new(run_id, opts.limits)),
            legality_stopped_at: None,
            next_seq: 1,
            seen: HashMap::new(),
            last_time: None,
            complete: None,
            version: 0,
            accepted_at: None,
            replan_since: None,
            paused_since: None,
            nodes: BTreeMap::new(),
            requests: BTreeMap::new(),
            events: 0,
            at: None,
            flagged: Vec::new(),
            found: Vec::new(),
        }
    }

    pub(super) fn flag(&mut self, rule: Rule, message: impl Into<String>) {
        let Some(at) = self.at else { return };
        if self.flagged.contains(&rule) {
            return;
        }
        self.flagged.push(rule);
        self.found.push(Violation {
            run_id: self.run_id,
            seq: at.seq,
            index: at.index,
            kind: at.kind,
            rule,
            message: message.into(),
        });
    }

    /// Checks the event at `index` of the slice; `frame` is what is wrong with its SSE
    /// frame, if anything.
    pub(crate) fn observe(&mut self, index: usize, frame: Option<&str>) {
        let all = self.all;
        let event = &all[index];
        self.events += 1;
        self.at = Some(At {
            index,
            seq: event.seq,
            kind: event.kind(),
        });
        self.flagged.clear();
        if let Some(problem) = frame {
            self.flag(Rule::SseFrame, problem);
        }
        if let Some(run) = self.expected_run
            && event.run_id != run
        {
            let message = format!(
                "an event of run {} in the stream of run {run}",
                event.run_id
            );
            self.flag(Rule::RunId, message);
            return;
        }
        if let Some((seq, _)) = self.complete {
            self.flag(
                Rule::AfterComplete,
                format!("`{}` after the run's `complete` at seq {seq}", event.kind()),
            );
            return;
        }
        if !self.seq_rule(index, event) {
            return;
        }
        self.timestamp_rule(event);
        self.node_id_rule(event);
        self.id_grammar_rule(event);
        self.plan_version_rule(event);
        self.hold_rules(event);
        self.hitl_rules(event);
        self.node_rules(event);
        self.complete_rule(event);
        self.legality(event);
        if let EventBody::Complete { status, .. } = &event.body {
            self.complete = Some((event.seq, *status));
        }
    }

    /// `seq-gap`. False for an exact repeat of an earlier event, which is checked no further.
    fn seq_rule(&mut self, index: usize, event: &RunEvent) -> bool {
        let seq = event.seq;
        let expected = self.next_seq;
        if seq == expected {
            self.seen.insert(seq, index);
            self.next_seq = seq + 1;
            return true;
        }
        if seq < expected {
            if let Some(&first) = self.seen.get(&seq)
                && self.all[first] == *event
            {
                let message = format!("seq {seq} again: a repeat of the event at index {first}");
                self.flag(Rule::SeqGap, message);
                return false;
            }
            let message = if expected == 1 {
                format!("the first event has seq {seq}; seqs start at 1")
            } else {
                format!(
                    "seq {seq} does not rise: the previous event has seq {}",
                    expected - 1
                )
            };
            self.flag(Rule::SeqGap, message);
            return true;
        }
        let message = if expected == 1 {
            format!("the first event has seq {seq}; seqs start at 1")
        } else if seq == expected + 1 {
            format!(
                "seq {seq} after seq {}: seq {expected} is missing",
                expected - 1
            )
        } else {
            format!(
                "seq {seq} after seq {}: seqs {expected} to {} are missing",
                expected - 1,
                seq - 1
            )
        };
        self.flag(Rule::SeqGap, message);
        self.seen.insert(seq, index);
        self.next_seq = seq + 1;
        true
    }

    fn timestamp_rule(&mut self, event: &RunEvent) {
        match self.last_time {
            Some((latest, seq)) if event.timestamp < latest => {
                let message = format!(
                    "timestamp {} is before {latest} of seq {seq}",
                    event.timestamp
                );
                self.flag(Rule::TimestampOrder, message);
            }
            Some(_) | None => self.last_time = Some((event.timestamp, event.seq)),
        }
    }

    fn node_id_rule(&mut self, event: &RunEvent) {
        let kind = event.kind();
        match &event.body {
            EventBody::NodeStart { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. } => {
                if event.node_id.is_none() {
                    self.flag(Rule::NodeId, format!("`{kind}` carries no nodeId"));
                }
            }
            EventBody::HitlRequest { .. } => {}
            EventBody::HitlResolved { request_id, .. } => {
                let Some(request) = self.requests.get(request_id) else {
                    return;
                };
                if request.node_id != event.node_id {
                    let message = format!(
                        "nodeId {} but request `{request_id}` (seq {}) concerns {}",
                        node_words(event.node_id.as_deref()),
                        request.seq,
                        node_words(request.node_id.as_deref())
                    );
                    self.flag(Rule::NodeId, message);
                }
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanUpdated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::PolicyTriggered { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => {
                if let Some(node) = &event.node_id {
                    let message = format!(
                        "`{kind}` names node `{node}`; only node and hitl events name a node"
                    );
                    self.flag(Rule::NodeId, message);
                }
            }
        }
    }

    fn id_grammar_rule(&mut self, event: &RunEvent) {
        let mut ids: Vec<(IdKind, &str, &str)> = Vec::new();
        if let Some(node) = &event.node_id {
            ids.push((IdKind::Node, "nodeId", node));
        }
        match &event.body {
            EventBody::NodeStart { capability_id, .. } => {
                ids.push((IdKind::Capability, "payload.capabilityId", capability_id));
            }
            EventBody::PolicyTriggered { policy_id, .. } => {
                ids.push((IdKind::Policy, "payload.policyId", policy_id));
            }
            EventBody::HitlRequest {
                request_id,
                policy_id,
                ..
            } => {
                ids.push((IdKind::HitlRequest, "payload.requestId", request_id));
                if let Some(policy) = policy_id {
                    ids.push((IdKind::Policy, "payload.policyId", policy));
                }
            }
            EventBody::HitlResolved { request_id, .. } => {
                ids.push((IdKind::HitlRequest, "payload.requestId", request_id));
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanUpdated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => {}
        }
        let problem = ids
            .into_iter()
            .find_map(|(kind, field, value)| check_id(kind, field, value).err());
        if let Some(e) = problem {
            self.flag(Rule::IdGrammar, e.to_string());
        }
    }

    fn plan_version_rule(&mut self, event: &RunEvent) {
        let before = self.version;
        match &event.body {
            EventBody::PlanAccepted { version, .. } => {
                if let Some(at) = self.accepted_at {
                    let message =
                        format!("a second `plan_accepted`; version 1 was accepted at seq {at}");
                    self.flag(Rule::PlanVersion, message);
                } else {
                    if *version != 1 {
                        let message = format!(
                            "`plan_accepted` has version {version}; the first plan is version 1"
                        );
                        self.flag(Rule::PlanVersion, message);
                    }
                    self.accepted_at = Some(event.seq);
                    self.version = 1;
                }
            }
            EventBody::PlanUpdated {
                previous_version,
                version,
                diff,
                ..
            } => {
                let next = before + 1;
                if self.accepted_at.is_none() {
                    self.flag(
                        Rule::PlanVersion,
                        "`plan_updated` before any `plan_accepted`",
                    );
                } else if (*previous_version, *version) != (before, next) {
                    let message = format!(
                        "`plan_updated` goes from version {previous_version} to {version}; \
                         the current version is {before}, so it goes from {before} to {next}"
                    );
                    self.flag(Rule::PlanVersion, message);
                } else if (diff.from_version, diff.to_version) != (before, next) {
                    let message = format!(
                        "its diff goes from version {} to {}, not from {before} to {next}",
                        diff.from_version, diff.to_version
                    );
                    self.flag(Rule::PlanVersion, message);
                }
                self.version = next;
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeStart { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::PolicyTriggered { .. }
            | EventBody::HitlRequest { .. }
            | EventBody::HitlResolved { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => {}
        }
        if event.plan_version != self.version {
            let message = format!(
                "planVersion is {} but the plan version current after this event is {}",
                event.plan_version, self.version
            );
            self.flag(Rule::PlanVersion, message);
        }
    }

    /// `dispatch-during-replan` and `dispatch-while-paused`.
    fn hold_rules(&mut self, event: &RunEvent) {
        let seq = event.seq;
        if let EventBody::NodeStart { .. } = &event.body {
            let node = node_words(event.node_id.as_deref());
            if let Some(since) = self.replan_since {
                let message = format!(
                    "{node} started while a replan is pending (asked at seq {since}, no `plan_updated` since)"
                );
                self.flag(Rule::DispatchDuringReplan, message);
            }
            if let Some((since, kind)) = self.paused_since {
                let message =
                    format!("{node} started while the run is paused (`{kind}` at seq {since})");
                self.flag(Rule::DispatchWhilePaused, message);
            }
        }
        let kind = event.kind();
        match &event.body {
            EventBody::PolicyTriggered { action, .. } => match action.as_str() {
                "replan" => self.replan_since = Some(seq),
                "pause" => self.paused_since = Some((seq, kind)),
                _ => {}
            },
            EventBody::HitlRequest { .. } | EventBody::RunPaused { .. } => {
                self.paused_since = Some((seq, kind));
            }
            EventBody::HitlResolved { next, .. } => {
                self.paused_since = None;
                if *next == FollowUp::Replan {
                    self.replan_since = Some(seq);
                }
            }
            EventBody::RunResumed { .. } => self.paused_since = None,
            EventBody::PlanUpdated { .. } => self.replan_since = None,
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeStart { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::Complete { .. } => {}
        }
    }

    /// `hitl-answered-once` and `hitl-request-unique`.
    fn hitl_rules(&mut self, event: &RunEvent) {
        match &event.body {
            EventBody::HitlRequest { request_id, .. } => {
                if let Some(earlier) = self.requests.get(request_id) {
                    let message = format!(
                        "request id `{request_id}` was already used at seq {}",
                        earlier.seq
                    );
                    self.flag(Rule::HitlRequestUnique, message);
                }
                let track = RequestTrack {
                    seq: event.seq,
                    node_id: event.node_id.clone(),
                    answered_at: None,
                };
                self.requests.insert(request_id.clone(), track);
            }
            EventBody::HitlResolved { request_id, .. } => {
                let message = match self.requests.get_mut(request_id) {
                    None => format!("answers request `{request_id}`, which was never made"),
                    Some(RequestTrack {
                        answered_at: Some(at),
                        ..
                    }) => format!("answers request `{request_id}` again (answered at seq {at})"),
                    Some(request) => {
                        request.answered_at = Some(event.seq);
                        return;
                    }
                };
                self.flag(Rule::HitlAnsweredOnce, message);
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanUpdated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeStart { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::PolicyTriggered { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => {}
        }
    }
}

/// `node \`x\`` or `no node`, for messages.
fn node_words(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("node `{n}`"),
        None => "no node".to_owned(),
    }
}

impl RunCheck<'_> {
    fn complete_rule(&mut self, event: &RunEvent) {
        let EventBody::Complete {
            status,
            output,
            error,
        } = &event.body
        else {
            return;
        };
        let problem = match (status, output, error) {
            (RunOutcome::Completed, None, _) => {
                Some("a completed run's `complete` has no output".to_owned())
            }
            (RunOutcome::Completed, Some(_), Some(e)) => Some(format!(
                "a completed run's `complete` carries the error `{}`",
                e.code
            )),
            (RunOutcome::Failed | RunOutcome::Cancelled, _, None) => Some(format!(
                "a {} run's `complete` carries no error",
                status_word(*status)
            )),
            (RunOutcome::Failed | RunOutcome::Cancelled, Some(_), Some(_)) => Some(format!(
                "a {} run's `complete` carries an output",
                status_word(*status)
            )),
            (RunOutcome::Cancelled, None, Some(e)) if e.code != "CANCELLED" => Some(format!(
                "a cancelled run's error is `{}`, not `CANCELLED`",
                e.code
            )),
            (RunOutcome::Completed, Some(_), None)
            | (RunOutcome::Failed | RunOutcome::Cancelled, None, Some(_)) => None,
        };
        if let Some(message) = problem {
            self.flag(Rule::CompletePayload, message);
        }
    }

    /// The run's summary and violations, once every event was observed.
    pub(crate) fn finish(mut self, report: &mut Report) {
        if let (true, None, Some(at)) = (self.require_complete, self.complete, self.at) {
            self.flagged.clear();
            let message = format!(
                "the stream ends at seq {} (`{}`) without `complete`",
                at.seq, at.kind
            );
            self.flag(Rule::CompleteMissing, message);
        }
        report.runs.push(RunSummary {
            run_id: self.run_id,
            events: self.events,
            violations: self.found.len(),
            outcome: self.complete.map(|(_, outcome)| outcome),
            legality_stopped_at: self.legality_stopped_at,
        });
        report.events += self.events;
        report.violations.append(&mut self.found);
    }
}

fn status_word(status: RunOutcome) -> &'static str {
    match status {
        RunOutcome::Completed => "completed",
        RunOutcome::Failed => "failed",
        RunOutcome::Cancelled => "cancelled",
    }
}
