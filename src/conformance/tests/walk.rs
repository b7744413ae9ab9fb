//! Random walks of the run machine under the engine's conventions (attempts rise by one, a
//! completed or finally failed node is not dispatched again in the same plan version, HITL
//! request ids are fresh) always conform: the checker has no false positives there.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::conformance::{Options, check, check_with};
use crate::fsm::{Purpose, RunState};

const NODES: [&str; 4] = ["brief", "write", "qa", "human"];

struct Walker {
    s: Script,
    attempts: BTreeMap<String, u32>,
    completed: BTreeSet<String>,
    /// Node → plan version of its final failure.
    failed_in: BTreeMap<String, u32>,
    requests: u32,
}

impl Walker {
    fn new() -> Self {
        Self {
            s: Script::new(),
            attempts: BTreeMap::new(),
            completed: BTreeSet::new(),
            failed_in: BTreeMap::new(),
            requests: 0,
        }
    }

    fn results(&self, c: u8, out: &mut Vec<RunInput>) {
        for node in self.s.machine.in_flight().keys() {
            let will_retry = c.is_multiple_of(2);
            out.push(RunInput::NodeSucceeded {
                node_id: node.clone(),
                output: Map::new(),
                duration_us: 1,
                spend: None,
            });
            out.push(RunInput::NodeFailed {
                node_id: node.clone(),
                error: RunError::new("HTTP_500", "boom"),
                will_retry,
                spend: None,
                retry_at: None,
            });
            out.push(RunInput::OutputInvalid {
                node_id: node.clone(),
                errors: vec!["/copy: missing".into()],
                will_retry,
                spend: None,
                retry_at: None,
            });
        }
    }

    fn candidates(&self, c: u8) -> Vec<RunInput> {
        let m = &self.s.machine;
        let version = m.plan_version();
        let mut out = Vec::new();
        match m.state() {
            RunState::New => out.push(RunInput::Start),
            RunState::Requesting => {
                let output = match m.purpose() {
                    Purpose::Initial => PlannerOutput::Draft(PlanDraft::default()),
                    Purpose::Replan => PlannerOutput::Delta(PlanDelta {
                        base_version: version,
                        rationale: String::new(),
                        operations: vec![],
                    }),
                };
                out.push(returned(output));
                out.push(RunInput::PlannerFailed {
                    error: "429".into(),
                    retryable: !c.is_multiple_of(3),
                });
            }
            RunState::Validating => {
                out.push(match m.purpose() {
                    Purpose::Initial => RunInput::DraftValid {
                        nodes: 4,
                        edges: 0,
                        warnings: vec![],
                    },
                    Purpose::Replan => RunInput::DeltaValid {
                        diff: PlanDiff {
                            from_version: version,
                            to_version: version + 1,
                            ..PlanDiff::default()
                        },
                        warnings: vec![],
                    },
                });
                out.push(RunInput::PlanInvalid {
                    diagnostics: vec![],
                });
            }
            RunState::Executing => {
                for node in NODES {
                    let idle = !m.in_flight().contains_key(node)
                        && !self.completed.contains(node)
                        && self.failed_in.get(node) != Some(&version);
                    if idle {
                        out.push(RunInput::NodeDispatched {
                            node_id: node.to_owned(),
                            capability_id: "writer.en".to_owned(),
                            attempt: self.attempts.get(node).copied().unwrap_or(0) + 1,
                        });
                    }
                }
                self.results(c, &mut out);
                let on_reject =
                    [FollowUp::Continue, FollowUp::Replan, FollowUp::Fail][c as usize % 3];
                let node = m.in_flight().keys().next().map(String::as_str);
                let request = format!("gate-{}", self.requests + 1);
                out.push(hitl(&request, node, on_reject));
                out.push(RunInput::PolicyReplan {
                    policy_id: "qa-gate".into(),
                    trigger: trigger(TriggerSource::Policy),
                });
                out.push(RunInput::PolicyPause {
                    policy_id: "hold".into(),
                    trigger: trigger(TriggerSource::Policy),
                });
                out.push(RunInput::OperatorPause {
                    reason: "op".into(),
                });
                if m.in_flight().is_empty() {
                    out.push(RunInput::AllDone { output: json!({}) });
                }
                out.push(RunInput::Cancel {
                    reason: "op".into(),
                });
            }
            RunState::Replanning => {
                self.results(c, &mut out);
                if m.in_flight().is_empty() {
                    out.push(RunInput::Drained);
                }
                out.push(RunInput::Fail {
                    error: RunError::new("POLICY_FAILED", "stop"),
                });
            }
            RunState::Paused => {
                self.results(c, &mut out);
                match m.pending_hitl() {
                    Some(pending) => out.push(RunInput::HitlAnswered {
                        request_id: pending.request_id.clone(),
                        decision: if c.is_multiple_of(2) {
                            HitlDecision::Approve
                        } else {
                            HitlDecision::Reject
                        },
                        text: None,
                        responder: None,
                    }),
                    None => out.push(RunInput::Resume {
                        reason: "op".into(),
                        budgets: Default::default(),
                    }),
                }
                out.push(RunInput::Cancel {
                    reason: "op".into(),
                });
            }
            RunState::Done => {}
        }
        out
    }

    fn step(&mut self, pick: u8, flavour: u8) {
        let candidates = self.candidates(flavour);
        if candidates.is_empty() {
            return;
        }
        let input = candidates[pick as usize % candidates.len()].clone();
        let version = self.s.machine.plan_version();
        if !self.s.try_go(&input) {
            return;
        }
        match &input {
            RunInput::NodeDispatched {
                node_id, attempt, ..
            } => {
                self.attempts.insert(node_id.clone(), *attempt);
            }
            RunInput::NodeSucceeded { node_id, .. } => {
                self.completed.insert(node_id.clone());
            }
            RunInput::NodeFailed {
                node_id,
                will_retry: false,
                retry_at: None,
                ..
            }
            | RunInput::OutputInvalid {
                node_id,
                will_retry: false,
                retry_at: None,
                ..
            } => {
                self.failed_in.insert(node_id.clone(), version);
            }
            RunInput::HitlRequested { .. } => self.requests += 1,
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_legal_walks_conform(steps in proptest::collection::vec((any::<u8>(), any::<u8>()), 1..90)) {
        let mut w = Walker::new();
        for (pick, flavour) in steps {
            w.step(pick, flavour);
        }
        let events = &w.s.events;
        let report = check_with(events, &Options::live());
        let kinds: Vec<_> = events.iter().map(|e| e.kind().as_str()).collect();
        prop_assert!(report.is_ok(), "{report}\n{kinds:?}");
        if w.s.machine.state() == RunState::Done {
            prop_assert!(check(events).is_ok());
        }
        if let Some(last) = events.len().checked_sub(1).filter(|n| *n > 0) {
            let mut cut = events.clone();
            cut.remove(last / 2);
            let report = check_with(&cut, &Options::live());
            prop_assert_eq!(report.first().map(|v| (v.rule, v.index)), Some((Rule::SeqGap, last / 2)));
        }
    }
}
