//! Budgets: limits a run's policies put on what it spends, what it has spent, and the
//! thresholds `onBudget` triggers fire at.
//!
//! Five resources are measured: planner tokens (prompt + completion tokens of planner calls),
//! node tokens (tokens executors report for node attempts), cost (each node attempt's
//! capability `cost`, plus model tokens priced by the engine's [`Pricing`] table), wall time
//! (milliseconds the run spent executing, the clock `onTimeout` uses) and nodes (node attempts
//! dispatched). Spend is computed from the run's events, which carry the figures they come
//! from, so a restarted or replayed run accounts exactly the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BudgetResource {
    /// Prompt + completion tokens of planner calls.
    PlannerTokens,
    /// Tokens executors reported for node attempts.
    NodeTokens,
    /// Capability cost of node attempts plus priced model tokens.
    Cost,
    /// Milliseconds spent executing.
    WallTimeMs,
    /// Node attempts dispatched.
    Nodes,
}

impl BudgetResource {
    /// Every resource, in wire order.
    pub const ALL: [Self; 5] = [
        Self::PlannerTokens,
        Self::NodeTokens,
        Self::Cost,
        Self::WallTimeMs,
        Self::Nodes,
    ];

    /// The wire name (`plannerTokens`, `nodeTokens`, `cost`, `wallTimeMs`, `nodes`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlannerTokens => "plannerTokens",
            Self::NodeTokens => "nodeTokens",
            Self::Cost => "cost",
            Self::WallTimeMs => "wallTimeMs",
            Self::Nodes => "nodes",
        }
    }

    /// The resource with this wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The limits of a run: resource → limit. A resource without a limit is unbounded.
pub type Budgets = BTreeMap<BudgetResource, f64>;

/// Where an `onBudget` trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Threshold {
    /// A fraction of the resource's limit (`0 < f`; `1` is the whole budget).
    Fraction(f64),
    /// An absolute amount of the resource.
    Absolute(f64),
}

impl Threshold {
    /// The amount this threshold stands for under `limit` (`None`: a fraction of no limit).
    pub fn amount(self, limit: Option<f64>) -> Option<f64> {
        match self {
            Self::Absolute(amount) => Some(amount),
            Self::Fraction(f) => limit.map(|limit| limit * f),
        }
    }
}

/// What a run has spent, accumulated from its events.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    /// Prompt + completion tokens of planner calls.
    pub planner_tokens: u64,
    /// Tokens executors reported for node attempts.
    pub node_tokens: u64,
    /// Capability cost of node attempts plus priced model tokens.
    pub cost: f64,
    /// Milliseconds spent executing.
    pub wall_time_ms: u64,
    /// Node attempts dispatched.
    pub nodes: u64,
}

impl Spend {
    /// The amount spent of `resource`.
    #[allow(clippy::cast_precision_loss)]
    pub fn of(&self, resource: BudgetResource) -> f64 {
        match resource {
            BudgetResource::PlannerTokens => self.planner_tokens as f64,
            BudgetResource::NodeTokens => self.node_tokens as f64,
            BudgetResource::Cost => self.cost,
            BudgetResource::WallTimeMs => self.wall_time_ms as f64,
            BudgetResource::Nodes => self.nodes as f64,
        }
    }

    /// What is left of each limited resource (never below 0).
    pub fn remaining(&self, limits: &Budgets) -> Budgets {
        limits
            .iter()
            .map(|(&resource, &limit)| (resource, (limit - self.of(resource)).max(0.0)))
            .collect()
    }
}

/// The price of a model's tokens, in cost units per 1000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenPrice {
    /// Per 1000 prompt tokens.
    #[serde(default)]
    pub prompt_per_1k: f64,
    /// Per 1000 completion tokens.
    #[serde(default)]
    pub completion_per_1k: f64,
}

/// Model name → token price; `"*"` prices models not listed. Models without a price cost 0.
///
/// ```
/// use flexrun::policy::Pricing;
///
/// let pricing: Pricing = serde_json::from_str(
///     r#"{"gpt-4o-mini": {"promptPer1k": 0.15, "completionPer1k": 0.6}}"#)?;
/// assert!((pricing.price(Some("gpt-4o-mini"), 2000, 500) - 0.6).abs() < 1e-9);
/// assert_eq!(pricing.price(Some("other"), 2000, 500), 0.0);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pricing(pub BTreeMap<String, TokenPrice>);

impl Pricing {
    /// The cost of `prompt` and `completion` tokens of `model`.
    #[allow(clippy::cast_precision_loss)]
    pub fn price(&self, model: Option<&str>, prompt: u64, completion: u64) -> f64 {
        let price = model
            .and_then(|m| self.0.get(m))
            .or_else(|| self.0.get("*"));
        price.map_or(0.0, |p| {
            (prompt as f64 * p.prompt_per_1k + completion as f64 * p.completion_per_1k) / 1000.0
        })
    }
}

/// A run's budgets and spend. The engine keeps it up to date from the run's events (live,
/// and in the same way when a run is rebuilt from its stored events).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// The limits: the policies' budgets, as raised by operators since.
    pub limits: Budgets,
    /// What the run has spent; `wall_time_ms` is set by whoever knows the time.
    pub spend: Spend,
}

impl Ledger {
    /// A ledger with `limits` and nothing spent.
    pub fn new(limits: Budgets) -> Self {
        Self {
            limits,
            spend: Spend::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_fractions_of_the_limit_or_absolute() {
        assert_eq!(Threshold::Fraction(0.5).amount(Some(10.0)), Some(5.0));
        assert_eq!(Threshold::Fraction(0.5).amount(None), None);
        assert_eq!(Threshold::Absolute(3.0).amount(None), Some(3.0));
    }

    #[test]
    fn remaining_never_goes_below_zero() {
        let spend = Spend {
            cost: 12.0,
            nodes: 2,
            ..Spend::default()
        };
        let limits = Budgets::from([(BudgetResource::Cost, 10.0), (BudgetResource::Nodes, 5.0)]);
        let left = spend.remaining(&limits);
        assert_eq!(left[&BudgetResource::Cost], 0.0);
        assert_eq!(left[&BudgetResource::Nodes], 3.0);
    }

    #[test]
    fn resource_names_round_trip() {
        for r in BudgetResource::ALL {
            assert_eq!(BudgetResource::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
