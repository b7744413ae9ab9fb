//! Budget accounting from events: what each event adds to a run's [`Ledger`], and the ledger
//! of a stored run.

use crate::fsm::{EventBody, RunEvent};
use crate::ids::Timestamp;
use crate::policy::{Ledger, NormalizedPolicies};

use super::clock::ExecutionClock;

/// What one event changed in a [`Ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Accounted {
    /// The spend changed.
    pub spent: bool,
    /// A `run_resumed` set limits (`onBudget` policies on them may fire again).
    pub raised: bool,
}

/// Accounts one event: planner tokens and cost from `plan_generated`, a node attempt per
/// `node_start`, each attempt's spend from `node_complete`, `node_error` and
/// `validation_error`, and the limits a `run_resumed` set. Wall time is not an event's: the
/// caller sets `spend.wall_time_ms` from the execution clock.
pub(crate) fn account(ledger: &mut Ledger, body: &EventBody) -> Accounted {
    let spend = &mut ledger.spend;
    let mut out = Accounted::default();
    match body {
        EventBody::PlanGenerated { usage, cost, .. } => {
            if let Some(usage) = usage {
                spend.planner_tokens = spend
                    .planner_tokens
                    .saturating_add(usage.prompt_tokens.saturating_add(usage.completion_tokens));
                out.spent = true;
            }
            if let Some(cost) = cost {
                spend.cost += cost;
                out.spent = true;
            }
        }
        EventBody::NodeStart { .. } => {
            spend.nodes += 1;
            out.spent = true;
        }
        EventBody::NodeComplete {
            spend: Some(attempt),
            ..
        }
        | EventBody::NodeError {
            spend: Some(attempt),
            ..
        }
        | EventBody::ValidationError {
            spend: Some(attempt),
            ..
        } => {
            spend.cost += attempt.cost;
            if let Some(usage) = attempt.usage {
                spend.node_tokens = spend
                    .node_tokens
                    .saturating_add(usage.prompt_tokens.saturating_add(usage.completion_tokens));
            }
            out.spent = true;
        }
        EventBody::RunResumed { budgets, .. } if !budgets.is_empty() => {
            ledger
                .limits
                .extend(budgets.iter().map(|(&resource, &limit)| (resource, limit)));
            out.raised = true;
        }
        _ => {}
    }
    out
}

/// A run's budgets and spend as of `events` (all of them, in order) under `policies`, with
/// the executing time measured up to `now`: what its driver knows, rebuilt from the store.
pub fn ledger_of(policies: &NormalizedPolicies, events: &[RunEvent], now: Timestamp) -> Ledger {
    let mut ledger = Ledger::new(policies.budgets.clone());
    let mut clock = ExecutionClock::default();
    for event in events {
        clock.observe(event);
        account(&mut ledger, &event.body);
    }
    ledger.spend.wall_time_ms = clock.elapsed_ms(now).unwrap_or(0);
    ledger
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::{NodeSpend, TokenUsage};
    use crate::policy::{BudgetResource, Budgets};

    #[test]
    fn events_add_up_to_the_spend_and_a_resume_raises_the_limits() {
        let mut ledger = Ledger::new(Budgets::from([(BudgetResource::Cost, 1.0)]));
        let spend = Some(NodeSpend {
            cost: 0.75,
            usage: Some(TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
            }),
        });
        let bodies = [
            EventBody::NodeStart {
                attempt: 1,
                capability_id: "c".into(),
                idempotency_key: "k".into(),
            },
            EventBody::NodeComplete {
                attempt: 1,
                output: serde_json::Map::new(),
                duration_us: 1,
                spend,
            },
            EventBody::NodeError {
                attempt: 2,
                error: crate::fsm::RunError::new("E", "e"),
                will_retry: false,
                spend,
                retry_at: None,
            },
        ];
        for body in &bodies {
            assert!(account(&mut ledger, body).spent);
        }
        assert_eq!(ledger.spend.nodes, 1);
        assert_eq!(ledger.spend.node_tokens, 30);
        assert!((ledger.spend.cost - 1.5).abs() < 1e-12);
        let raise = EventBody::RunResumed {
            reason: "more".into(),
            budgets: Budgets::from([(BudgetResource::Cost, 5.0)]),
        };
        assert_eq!(
            account(&mut ledger, &raise),
            Accounted {
                spent: false,
                raised: true
            }
        );
        assert_eq!(ledger.limits[&BudgetResource::Cost], 5.0);
        let plain = EventBody::RunResumed {
            reason: "go".into(),
            budgets: Budgets::new(),
        };
        assert_eq!(account(&mut ledger, &plain), Accounted::default());
    }
}
