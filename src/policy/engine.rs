//! The PolicyEngine: evaluates normalized runtime policies against run happenings.

use std::collections::BTreeMap;

use datalogic_rs::DataValue;
use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value};

use crate::catalog::CapabilityKind;
use crate::graph::PlanNode;

use super::budget::{BudgetResource, Budgets, Spend};
use super::condition::Condition;
use super::model::{NodeSelector, PolicyAction, PolicyTrigger, RuntimePolicy};

/// What is known about a node when a trigger concerns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    /// The node id.
    pub node_id: &'a str,
    /// The node's capability.
    pub capability_id: &'a str,
    /// The node's kind.
    pub kind: CapabilityKind,
    /// The node's stage label.
    pub stage: &'a str,
}

impl<'a> NodeFacts<'a> {
    /// The facts of a plan node.
    pub fn of(node: &'a PlanNode) -> Self {
        Self {
            node_id: &node.id,
            capability_id: &node.capability_id,
            kind: node.kind,
            stage: &node.stage,
        }
    }
}

/// The run data a JSON-Logic condition may read.
///
/// A condition sees `{"inputs": …, "facets": …, "output": …, "node": {"id", "capabilityId",
/// "kind", "stage"}}`; `output` and `node` are `null` for `onStart`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalData<'a> {
    /// The run's inputs.
    pub inputs: &'a Map<String, Value>,
    /// Every facet value produced so far.
    pub facets: &'a Map<String, Value>,
    /// The output of the node that just completed.
    pub output: Option<&'a Map<String, Value>>,
}

/// A policy that fired: the driver performs `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The policy.
    pub policy_id: String,
    /// What to do.
    pub action: PolicyAction,
    /// Human-readable: the action's rationale, question or reason, else what matched.
    pub reason: String,
}

/// A condition that could not be evaluated. The policy did not fire and its fire count is
/// unchanged; the driver should log it (it is not a run failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    /// The policy whose condition failed.
    pub policy_id: String,
    /// The evaluation error.
    pub message: String,
}

impl std::fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy \"{}\": condition evaluation failed: {}",
            self.policy_id, self.message
        )
    }
}

/// The outcome of evaluating conditional triggers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evaluation {
    /// Policies that fired, in declaration order.
    pub firings: Vec<Firing>,
    /// Conditions that failed to evaluate (those policies did not fire).
    pub warnings: Vec<PolicyWarning>,
}

#[derive(Debug, Clone)]
struct Slot {
    policy: RuntimePolicy,
    fires: u32,
}

impl Slot {
    /// Enabled and below its fire bound.
    fn is_live(&self) -> bool {
        self.policy.enabled && self.fires < self.policy.max_fires
    }

    fn fire(&mut self, matched: impl FnOnce() -> String) -> Firing {
        self.fires = self.fires.saturating_add(1);
        let reason = action_text(&self.policy.action)
            .map(str::to_owned)
            .unwrap_or_else(matched);
        Firing {
            policy_id: self.policy.id.clone(),
            action: self.policy.action.clone(),
            reason,
        }
    }
}

fn action_text(action: &PolicyAction) -> Option<&str> {
    let text = match action {
        PolicyAction::Replan { rationale } => rationale.as_deref(),
        PolicyAction::Hitl { question, .. } => Some(question.as_str()),
        PolicyAction::Pause { reason } | PolicyAction::Fail { reason } => reason.as_deref(),
    };
    text.filter(|t| !t.trim().is_empty())
}

/// Evaluates runtime policies and counts their fires.
///
/// Every evaluation method returns firings in policy declaration order, skips disabled policies
/// and policies that reached `maxFires`, and counts each fire. The engine is pure: the driver
/// records each fire in the run's event log and, after a restart, replays those records with
/// [`PolicyEngine::record_fire`].
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    slots: Vec<Slot>,
}

impl PolicyEngine {
    /// An engine over normalized runtime policies (conditions are already compiled).
    pub fn new(runtime: &[RuntimePolicy]) -> Self {
        Self {
            slots: runtime
                .iter()
                .map(|policy| Slot {
                    policy: policy.clone(),
                    fires: 0,
                })
                .collect(),
        }
    }

    /// The policies, in declaration order.
    pub fn policies(&self) -> impl Iterator<Item = &RuntimePolicy> {
        self.slots.iter().map(|slot| &slot.policy)
    }

    /// The policy with this id.
    pub fn policy(&self, policy_id: &str) -> Option<&RuntimePolicy> {
        self.policies().find(|p| p.id == policy_id)
    }

    /// The run started executing: `onStart` policies whose condition (if any) holds.
    pub fn on_start(&mut self, data: &EvalData<'_>) -> Evaluation {
        let mut out = Evaluation::default();
        let arena = Bump::new();
        let mut scope: Option<&DataValue<'_>> = None;
        for slot in &mut self.slots {
            if !slot.is_live() {
                continue;
            }
            let PolicyTrigger::OnStart { condition } = &slot.policy.trigger else {
                continue;
            };
            if let Some(condition) = condition {
                let scope = *scope.get_or_insert_with(|| eval_scope(&arena, data, None));
                if !check(condition, scope, &arena, &slot.policy.id, &mut out.warnings) {
                    continue;
                }
            }
            out.firings.push(slot.fire(|| "run started".to_owned()));
        }
        out
    }

    /// A node completed: `onNodeComplete` policies whose selector matches and whose condition
    /// (if any) holds. The condition scope is built only when a matching policy has a condition.
    pub fn on_node_complete(&mut self, node: &NodeFacts<'_>, data: &EvalData<'_>) -> Evaluation {
        let mut out = Evaluation::default();
        let arena = Bump::new();
        let mut scope: Option<&DataValue<'_>> = None;
        for slot in &mut self.slots {
            if !slot.is_live() {
                continue;
            }
            let PolicyTrigger::OnNodeComplete {
                selector,
                condition,
            } = &slot.policy.trigger
            else {
                continue;
            };
            if !selects(selector.as_ref(), node) {
                continue;
            }
            if let Some(condition) = condition {
                let scope = *scope.get_or_insert_with(|| eval_scope(&arena, data, Some(node)));
                if !check(condition, scope, &arena, &slot.policy.id, &mut out.warnings) {
                    continue;
                }
            }
            out.firings.push(slot.fire(|| {
                format!(
                    "node \"{}\" ({}) completed",
                    node.node_id, node.capability_id
                )
            }));
        }
        out
    }

    /// A node's output failed its contract: `onValidationFail` policies whose selector matches.
    pub fn on_validation_fail(&mut self, node: &NodeFacts<'_>) -> Vec<Firing> {
        self.fire_where(
            |trigger| match trigger {
                PolicyTrigger::OnValidationFail { selector } => selects(selector.as_ref(), node),
                PolicyTrigger::OnStart { .. }
                | PolicyTrigger::OnNodeComplete { .. }
                | PolicyTrigger::OnTimeout { .. }
                | PolicyTrigger::OnMetricBelow { .. }
                | PolicyTrigger::OnBudget { .. }
                | PolicyTrigger::Manual { .. } => false,
            },
            || {
                format!(
                    "node \"{}\" ({}) failed validation",
                    node.node_id, node.capability_id
                )
            },
        )
    }

    /// Time passed: `onTimeout` policies whose `ms` is at most `elapsed_ms`.
    pub fn on_timeout(&mut self, elapsed_ms: u64) -> Vec<Firing> {
        self.fire_where(
            |trigger| match trigger {
                PolicyTrigger::OnTimeout { ms } => elapsed_ms >= *ms,
                PolicyTrigger::OnStart { .. }
                | PolicyTrigger::OnNodeComplete { .. }
                | PolicyTrigger::OnValidationFail { .. }
                | PolicyTrigger::OnMetricBelow { .. }
                | PolicyTrigger::OnBudget { .. }
                | PolicyTrigger::Manual { .. } => false,
            },
            || format!("run exceeded its time limit ({elapsed_ms} ms elapsed)"),
        )
    }

    /// The smallest `ms` among `onTimeout` policies that can still fire: when the driver should
    /// next call [`PolicyEngine::on_timeout`].
    pub fn next_timeout_ms(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|slot| slot.is_live())
            .filter_map(|slot| match &slot.policy.trigger {
                PolicyTrigger::OnTimeout { ms } => Some(*ms),
                PolicyTrigger::OnStart { .. }
                | PolicyTrigger::OnNodeComplete { .. }
                | PolicyTrigger::OnValidationFail { .. }
                | PolicyTrigger::OnMetricBelow { .. }
                | PolicyTrigger::OnBudget { .. }
                | PolicyTrigger::Manual { .. } => None,
            })
            .min()
    }

    /// A metric was reported: `onMetricBelow` policies on that metric whose threshold is
    /// strictly above `value`. A NaN value fires nothing.
    pub fn on_metric(&mut self, metric: &str, value: f64) -> Vec<Firing> {
        self.fire_where(
            |trigger| match trigger {
                PolicyTrigger::OnMetricBelow {
                    metric: name,
                    threshold,
                } => name == metric && value < *threshold,
                PolicyTrigger::OnStart { .. }
                | PolicyTrigger::OnNodeComplete { .. }
                | PolicyTrigger::OnValidationFail { .. }
                | PolicyTrigger::OnTimeout { .. }
                | PolicyTrigger::OnBudget { .. }
                | PolicyTrigger::Manual { .. } => false,
            },
            || format!("metric \"{metric}\" fell to {value}"),
        )
    }

    /// An external signal: `manual` policies whose `signal` is unset or equal to `signal`, and
    /// also the `manual` policy whose id the payload names as `policyId`.
    pub fn on_signal(&mut self, signal: &str, payload: &Value) -> Vec<Firing> {
        let named = payload.get("policyId").and_then(Value::as_str);
        let mut firings = Vec::new();
        for slot in &mut self.slots {
            if !slot.is_live() {
                continue;
            }
            let PolicyTrigger::Manual { signal: wanted } = &slot.policy.trigger else {
                continue;
            };
            let by_name = wanted.as_deref().is_none_or(|w| w == signal);
            let by_id = named == Some(slot.policy.id.as_str());
            if by_name || by_id {
                firings.push(slot.fire(|| format!("signal \"{signal}\"")));
            }
        }
        firings
    }

    /// Spend changed: `onBudget` policies whose threshold the spend of their resource has
    /// reached under `limits`. A fraction threshold of a resource without a limit never fires.
    pub fn on_budget(&mut self, spend: &Spend, limits: &Budgets) -> Vec<Firing> {
        let mut firings = Vec::new();
        for slot in &mut self.slots {
            if !slot.is_live() {
                continue;
            }
            let PolicyTrigger::OnBudget {
                resource,
                threshold,
            } = &slot.policy.trigger
            else {
                continue;
            };
            let limit = limits.get(resource).copied();
            let Some(amount) = threshold.amount(limit) else {
                continue;
            };
            let spent = spend.of(*resource);
            if spent >= amount {
                let name = resource.as_str();
                firings.push(slot.fire(|| match limit {
                    Some(limit) => format!("spent {spent} of the `{name}` budget of {limit}"),
                    None => format!("spent {spent} `{name}`"),
                }));
            }
        }
        firings
    }

    /// The smallest amount of executing time, in milliseconds, at which an `onBudget` policy
    /// on `wallTimeMs` that can still fire would fire under `limits`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn next_wall_time_budget_ms(&self, limits: &Budgets) -> Option<u64> {
        self.slots
            .iter()
            .filter(|slot| slot.is_live())
            .filter_map(|slot| match &slot.policy.trigger {
                PolicyTrigger::OnBudget {
                    resource: BudgetResource::WallTimeMs,
                    threshold,
                } => threshold
                    .amount(limits.get(&BudgetResource::WallTimeMs).copied())
                    .map(|ms| ms.max(0.0).ceil() as u64),
                _ => None,
            })
            .min()
    }

    /// A budget was raised: `onBudget` policies on `resource` may fire again.
    pub fn rearm_budget(&mut self, resource: BudgetResource) {
        for slot in &mut self.slots {
            if matches!(&slot.policy.trigger, PolicyTrigger::OnBudget { resource: r, .. } if *r == resource)
            {
                slot.fires = 0;
            }
        }
    }

    /// How many times each policy fired (policies that never fired are absent).
    pub fn fire_counts(&self) -> BTreeMap<String, u32> {
        self.slots
            .iter()
            .filter(|slot| slot.fires > 0)
            .map(|slot| (slot.policy.id.clone(), slot.fires))
            .collect()
    }

    /// Count one fire of `policy_id` without evaluating anything (rebuilding counts from the
    /// event log after a restart). Returns whether the policy is known.
    pub fn record_fire(&mut self, policy_id: &str) -> bool {
        match self.slots.iter_mut().find(|s| s.policy.id == policy_id) {
            Some(slot) => {
                slot.fires = slot.fires.saturating_add(1);
                true
            }
            None => false,
        }
    }

    fn fire_where(
        &mut self,
        matches: impl Fn(&PolicyTrigger) -> bool,
        matched: impl Fn() -> String,
    ) -> Vec<Firing> {
        self.slots
            .iter_mut()
            .filter(|slot| slot.is_live() && matches(&slot.policy.trigger))
            .map(|slot| slot.fire(&matched))
            .collect()
    }
}

fn selects(selector: Option<&NodeSelector>, node: &NodeFacts<'_>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector
        .node_id
        .as_deref()
        .is_none_or(|id| id == node.node_id)
        && selector
            .capability_id
            .as_deref()
            .is_none_or(|id| id == node.capability_id)
        && selector.kind.is_none_or(|kind| kind == node.kind)
        && selector.stage.as_deref().is_none_or(|s| s == node.stage)
}

/// Evaluate `condition`; an evaluation error becomes a warning and counts as false.
fn check<'a>(
    condition: &'a Condition,
    scope: &'a DataValue<'a>,
    arena: &'a Bump,
    policy_id: &str,
    warnings: &mut Vec<PolicyWarning>,
) -> bool {
    match condition.is_truthy(scope, arena) {
        Ok(holds) => holds,
        Err(message) => {
            warnings.push(PolicyWarning {
                policy_id: policy_id.to_owned(),
                message,
            });
            false
        }
    }
}

/// Build `{"inputs", "facets", "output", "node"}` in `arena`.
fn eval_scope<'a>(
    arena: &'a Bump,
    data: &EvalData<'_>,
    node: Option<&NodeFacts<'_>>,
) -> &'a DataValue<'a> {
    let output = data
        .output
        .map_or(DataValue::Null, |map| object_in(arena, map));
    let node = node.map_or(DataValue::Null, |node| {
        DataValue::Object(arena.alloc_slice_copy(&[
            ("id", DataValue::String(arena.alloc_str(node.node_id))),
            (
                "capabilityId",
                DataValue::String(arena.alloc_str(node.capability_id)),
            ),
            ("kind", DataValue::String(node.kind.as_str())),
            ("stage", DataValue::String(arena.alloc_str(node.stage))),
        ]))
    });
    let fields = [
        ("inputs", object_in(arena, data.inputs)),
        ("facets", object_in(arena, data.facets)),
        ("output", output),
        ("node", node),
    ];
    arena.alloc(DataValue::Object(arena.alloc_slice_copy(&fields)))
}

fn object_in<'a>(arena: &'a Bump, map: &Map<String, Value>) -> DataValue<'a> {
    DataValue::Object(arena.alloc_slice_fill_iter(map.iter().map(|(key, value)| {
        (
            &*arena.alloc_str(key),
            DataValue::from_serde_value_in(value, arena),
        )
    })))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::normalize;

    fn engine(runtime: Value) -> PolicyEngine {
        let policies = normalize(&json!({ "runtime": runtime })).unwrap_or_else(|e| panic!("{e}"));
        PolicyEngine::new(&policies.runtime)
    }

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("expected an object, got {other}"),
        }
    }

    fn write_node() -> NodeFacts<'static> {
        NodeFacts {
            node_id: "write",
            capability_id: "writer.en",
            kind: CapabilityKind::Execution,
            stage: "generation",
        }
    }

    fn ids(firings: &[Firing]) -> Vec<&str> {
        firings.iter().map(|f| f.policy_id.as_str()).collect()
    }

    fn on_complete(
        engine: &mut PolicyEngine,
        node: &NodeFacts<'_>,
        facets: Value,
        output: Value,
    ) -> Evaluation {
        let inputs = obj(json!({"objectiveBrief": "launch", "tone": "formal"}));
        let facets = obj(facets);
        let output = obj(output);
        let data = EvalData {
            inputs: &inputs,
            facets: &facets,
            output: Some(&output),
        };
        engine.on_node_complete(node, &data)
    }

    fn complete_policy(id: &str, selector: Value) -> Value {
        json!({"id": id, "maxFires": 100,
               "trigger": {"kind": "onNodeComplete", "selector": selector},
               "action": {"type": "replan"}})
    }

    #[test]
    fn selector_fields_must_all_match() {
        let mut e = engine(json!([
            {"id": "any", "maxFires": 100, "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}},
            complete_policy("by-node", json!({"nodeId": "write"})),
            complete_policy("by-cap", json!({"capabilityId": "writer.en"})),
            complete_policy("by-kind", json!({"kind": "execution"})),
            complete_policy("by-stage", json!({"stage": "generation"})),
            complete_policy("all", json!({"nodeId": "write", "capabilityId": "writer.en",
                                          "kind": "execution", "stage": "generation"})),
            complete_policy("wrong-stage", json!({"capabilityId": "writer.en", "stage": "qa"})),
            complete_policy("wrong-kind", json!({"kind": "validation"})),
        ]));
        let out = on_complete(&mut e, &write_node(), json!({}), json!({}));
        assert_eq!(
            ids(&out.firings),
            ["any", "by-node", "by-cap", "by-kind", "by-stage", "all"]
        );
        let other = NodeFacts {
            node_id: "review",
            capability_id: "critic",
            kind: CapabilityKind::Validation,
            stage: "qa",
        };
        let out = on_complete(&mut e, &other, json!({}), json!({}));
        assert_eq!(ids(&out.firings), ["any", "wrong-kind"]);
    }

    #[test]
    fn node_facts_of_a_plan_node() {
        let node: PlanNode = serde_json::from_value(json!({
            "id": "write", "stage": "generation", "capabilityId": "writer.en", "kind": "execution"
        }))
        .unwrap();
        assert_eq!(NodeFacts::of(&node), write_node());
    }

    #[test]
    fn condition_reads_output_facets_inputs_and_node() {
        let mut e = engine(json!([
            {"id": "low-score", "maxFires": 100,
             "trigger": {"kind": "onNodeComplete", "condition": {"<": [{"var": "output.score"}, 0.5]}},
             "action": {"type": "replan", "rationale": "score too low"}},
            {"id": "has-brief", "maxFires": 100,
             "trigger": {"kind": "onNodeComplete", "condition": {"var": "facets.brief"}},
             "action": {"type": "pause"}},
            {"id": "formal", "maxFires": 100,
             "trigger": {"kind": "onNodeComplete", "condition": {"==": [{"var": "inputs.tone"}, "formal"]}},
             "action": {"type": "pause", "reason": "formal tone"}},
            {"id": "writer", "maxFires": 100,
             "trigger": {"kind": "onNodeComplete",
                         "condition": {"and": [{"==": [{"var": "node.capabilityId"}, "writer.en"]},
                                               {"==": [{"var": "node.kind"}, "execution"]},
                                               {"==": [{"var": "node.id"}, "write"]},
                                               {"==": [{"var": "node.stage"}, "generation"]}]}},
             "action": {"type": "fail"}}
        ]));
        let out = on_complete(
            &mut e,
            &write_node(),
            json!({"brief": "x"}),
            json!({"score": 0.2}),
        );
        assert_eq!(
            ids(&out.firings),
            ["low-score", "has-brief", "formal", "writer"]
        );
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        assert_eq!(out.firings[0].reason, "score too low");
        assert_eq!(
            out.firings[1].reason,
            "node \"write\" (writer.en) completed"
        );

        let out = on_complete(
            &mut e,
            &write_node(),
            json!({"brief": ""}),
            json!({"score": 0.9}),
        );
        assert_eq!(ids(&out.firings), ["formal", "writer"]);
    }

    #[test]
    fn condition_error_is_a_warning_and_does_not_fire_or_count() {
        let mut e = engine(json!([
            {"id": "div", "trigger": {"kind": "onNodeComplete",
                                      "condition": {"/": [1, {"var": "output.n"}]}},
             "action": {"type": "replan"}}
        ]));
        let out = on_complete(&mut e, &write_node(), json!({}), json!({"n": 0}));
        assert!(out.firings.is_empty());
        assert_eq!(out.warnings.len(), 1);
        assert_eq!(out.warnings[0].policy_id, "div");
        assert!(
            out.warnings[0]
                .to_string()
                .starts_with("policy \"div\": condition evaluation failed:"),
            "{}",
            out.warnings[0]
        );
        assert!(e.fire_counts().is_empty());
        let out = on_complete(&mut e, &write_node(), json!({}), json!({"n": 2}));
        assert_eq!(ids(&out.firings), ["div"]);
    }

    #[test]
    fn condition_is_not_evaluated_when_the_selector_does_not_match() {
        let mut e = engine(json!([
            {"id": "div", "trigger": {"kind": "onNodeComplete", "selector": {"nodeId": "other"},
                                      "condition": {"/": [1, {"var": "output.n"}]}},
             "action": {"type": "replan"}}
        ]));
        let out = on_complete(&mut e, &write_node(), json!({}), json!({"n": 0}));
        assert_eq!(out, Evaluation::default());
    }

    #[test]
    fn max_fires_bounds_each_policy() {
        let mut e = engine(json!([
            {"id": "twice", "maxFires": 2, "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}},
            {"id": "once", "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}}
        ]));
        let fired: Vec<Vec<String>> = (0..4)
            .map(|_| {
                on_complete(&mut e, &write_node(), json!({}), json!({}))
                    .firings
                    .into_iter()
                    .map(|f| f.policy_id)
                    .collect()
            })
            .collect();
        assert_eq!(
            fired,
            [
                vec!["twice".to_owned(), "once".to_owned()],
                vec!["twice".to_owned()],
                vec![],
                vec![]
            ]
        );
        assert_eq!(
            e.fire_counts(),
            BTreeMap::from([("once".to_owned(), 1), ("twice".to_owned(), 2)])
        );
    }

    #[test]
    fn disabled_policies_never_fire() {
        let mut e = engine(json!([
            {"id": "off", "enabled": false, "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}},
            {"id": "off-start", "enabled": false, "trigger": {"kind": "onStart"}, "action": {"type": "pause"}},
            {"id": "off-signal", "enabled": false, "trigger": {"kind": "manual"}, "action": {"type": "pause"}},
            {"id": "off-timeout", "enabled": false, "trigger": {"kind": "onTimeout", "ms": 1}, "action": {"type": "fail"}}
        ]));
        assert!(
            on_complete(&mut e, &write_node(), json!({}), json!({}))
                .firings
                .is_empty()
        );
        let empty = Map::new();
        let data = EvalData {
            inputs: &empty,
            facets: &empty,
            output: None,
        };
        assert!(e.on_start(&data).firings.is_empty());
        assert!(
            e.on_signal("go", &json!({"policyId": "off-signal"}))
                .is_empty()
        );
        assert!(e.on_timeout(10).is_empty());
        assert_eq!(e.next_timeout_ms(), None);
        assert!(e.fire_counts().is_empty());
    }

    #[test]
    fn on_start_fires_start_policies_whose_condition_holds() {
        let mut e = engine(json!([
            {"id": "always", "trigger": {"kind": "onStart"}, "action": {"type": "pause"}},
            {"id": "if-draft", "trigger": {"kind": "onStart", "condition": {"var": "inputs.draft"}},
             "action": {"type": "hitl", "question": "review the draft first?"}},
            {"id": "not-start", "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}}
        ]));
        let inputs = obj(json!({"draft": "text"}));
        let facets = Map::new();
        let data = EvalData {
            inputs: &inputs,
            facets: &facets,
            output: None,
        };
        let out = e.on_start(&data);
        assert_eq!(ids(&out.firings), ["always", "if-draft"]);
        assert_eq!(out.firings[0].reason, "run started");
        assert_eq!(out.firings[1].reason, "review the draft first?");
        assert!(e.on_start(&data).firings.is_empty(), "maxFires 1 reached");
    }

    #[test]
    fn validation_failures_match_selectors() {
        let mut e = engine(json!([
            {"id": "writer-invalid", "trigger": {"kind": "onValidationFail", "selector": {"capabilityId": "writer.en"}},
             "action": {"type": "hitl", "question": "fix the copy?", "onReject": "replan"}},
            {"id": "critic-invalid", "trigger": {"kind": "onValidationFail", "selector": {"capabilityId": "critic"}},
             "action": {"type": "fail"}}
        ]));
        let firings = e.on_validation_fail(&write_node());
        assert_eq!(ids(&firings), ["writer-invalid"]);
        assert_eq!(firings[0].reason, "fix the copy?");
        assert!(matches!(
            firings[0].action,
            PolicyAction::Hitl {
                on_reject: crate::hitl::FollowUp::Replan,
                ..
            }
        ));
    }

    #[test]
    fn timeouts_fire_once_elapsed_reaches_ms() {
        let mut e = engine(json!([
            {"id": "slow", "trigger": {"kind": "onTimeout", "ms": 1000}, "action": {"type": "pause"}},
            {"id": "very-slow", "trigger": {"kind": "onTimeout", "ms": 5000}, "action": {"type": "fail", "reason": "run too slow"}}
        ]));
        assert_eq!(e.next_timeout_ms(), Some(1000));
        assert!(e.on_timeout(999).is_empty());
        let firings = e.on_timeout(1000);
        assert_eq!(ids(&firings), ["slow"]);
        assert_eq!(
            firings[0].reason,
            "run exceeded its time limit (1000 ms elapsed)"
        );
        assert_eq!(e.next_timeout_ms(), Some(5000));
        assert_eq!(ids(&e.on_timeout(7000)), ["very-slow"]);
        assert_eq!(e.next_timeout_ms(), None);
        assert!(e.on_timeout(10_000).is_empty());
    }

    #[test]
    fn metrics_fire_strictly_below_threshold() {
        let mut e = engine(json!([
            {"id": "low", "maxFires": 5, "trigger": {"kind": "onMetricBelow", "metric": "score", "threshold": 0.5},
             "action": {"type": "replan"}}
        ]));
        assert!(e.on_metric("score", 0.5).is_empty());
        assert!(e.on_metric("other", 0.1).is_empty());
        assert!(e.on_metric("score", f64::NAN).is_empty());
        let firings = e.on_metric("score", 0.25);
        assert_eq!(ids(&firings), ["low"]);
        assert_eq!(firings[0].reason, "metric \"score\" fell to 0.25");
    }

    #[test]
    fn signals_route_by_name_wildcard_and_policy_id() {
        let manual = |id: &str, signal: Option<&str>| {
            json!({"id": id, "maxFires": 100, "trigger": {"kind": "manual", "signal": signal},
                   "action": {"type": "pause"}})
        };
        let mut e = engine(json!([
            manual("stop", Some("stop")),
            manual("any", None),
            manual("budget", Some("budget")),
            {"id": "complete", "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}}
        ]));
        assert_eq!(ids(&e.on_signal("stop", &Value::Null)), ["stop", "any"]);
        assert_eq!(ids(&e.on_signal("other", &json!({}))), ["any"]);
        assert_eq!(
            ids(&e.on_signal("other", &json!({"policyId": "budget"}))),
            ["any", "budget"]
        );
        assert_eq!(
            ids(&e.on_signal("other", &json!({"policyId": "complete"}))),
            ["any"],
            "a policyId selects manual policies only"
        );
        assert_eq!(
            ids(&e.on_signal("stop", &json!({"policyId": "stop"}))),
            ["stop", "any"],
            "a policy fires at most once per signal"
        );
        assert_eq!(e.on_signal("x", &json!({}))[0].reason, "signal \"x\"");
    }

    #[test]
    fn record_fire_restores_counts_after_restart() {
        let runtime = json!([
            {"id": "twice", "maxFires": 2, "trigger": {"kind": "onNodeComplete"}, "action": {"type": "replan"}},
            {"id": "once", "trigger": {"kind": "manual"}, "action": {"type": "pause"}}
        ]);
        let mut before = engine(runtime.clone());
        on_complete(&mut before, &write_node(), json!({}), json!({}));
        before.on_signal("go", &Value::Null);
        let counts = before.fire_counts();
        assert_eq!(
            counts,
            BTreeMap::from([("once".to_owned(), 1), ("twice".to_owned(), 1)])
        );

        let mut after = engine(runtime);
        for (id, n) in &counts {
            for _ in 0..*n {
                assert!(after.record_fire(id));
            }
        }
        assert!(!after.record_fire("unknown"));
        assert_eq!(after.fire_counts(), counts);
        assert!(after.on_signal("go", &Value::Null).is_empty());
        let out = on_complete(&mut after, &write_node(), json!({}), json!({}));
        assert_eq!(ids(&out.firings), ["twice"]);
        assert!(
            on_complete(&mut after, &write_node(), json!({}), json!({}))
                .firings
                .is_empty()
        );
    }

    #[test]
    fn clones_count_independently_and_policies_are_listed() {
        let mut a = engine(json!([
            {"id": "p", "trigger": {"kind": "manual"}, "action": {"type": "pause"}}
        ]));
        let mut b = a.clone();
        assert_eq!(a.on_signal("s", &Value::Null).len(), 1);
        assert_eq!(b.on_signal("s", &Value::Null).len(), 1);
        assert_eq!(a.policies().count(), 1);
        assert_eq!(a.policy("p").map(|p| p.max_fires), Some(1));
        assert!(a.policy("q").is_none());
    }
}
