//! The counted regression guard: a small workload whose per-step *work* (allocations, store
//! commits, bytes written) is compared against recorded baselines plus a margin.
//!
//! Nothing here is timed. The figures are counts divided by executed steps, which repeat from
//! run to run (see `docs/BENCHMARKS.md`, "Regression guard"), so a rise past the margin means
//! the engine does more work per step than when the baseline was taken.

use serde::{Deserialize, Serialize};

use super::{AllocCounter, BenchOptions, BenchReport, Consumer, Level, Scenario, Variant};

/// The thresholds file: default margin and the guarded cases with their baselines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Thresholds {
    /// How the baselines were measured (free text, e.g. the build profile).
    #[serde(default)]
    pub note: String,
    /// Allowed relative rise over a baseline, e.g. `0.1` for +10%.
    pub margin: f64,
    /// The guarded cases.
    pub cases: Vec<GuardCase>,
}

/// One guarded workload and its recorded baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct GuardCase {
    /// Stable name, used in messages.
    pub name: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Plan size N.
    pub nodes: usize,
    /// Runs R.
    pub runs: usize,
    /// Durability level.
    pub durability: Level,
    /// A margin for this case instead of the file's, with the reason in `margin_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Why this case has its own margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_reason: Option<String>,
    /// Recorded figures (absent until `--update-thresholds` measures them).
    #[serde(default)]
    pub baseline: Option<Metrics>,
}

/// The counted figures the guard compares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Metrics {
    /// Allocations per executed step.
    pub allocs_per_step: f64,
    /// Store transactions per executed step.
    pub commits_per_step: f64,
    /// Serialized bytes written to the store per executed step.
    pub bytes_per_step: f64,
}

impl Metrics {
    fn named(&self) -> [(&'static str, f64); 3] {
        [
            ("allocs_per_step", self.allocs_per_step),
            ("commits_per_step", self.commits_per_step),
            ("bytes_per_step", self.bytes_per_step),
        ]
    }

    fn from_report(report: &BenchReport) -> Self {
        Self {
            allocs_per_step: report.allocs_per_step.unwrap_or(0.0),
            commits_per_step: report.commits_per_step,
            bytes_per_step: report.bytes_per_step,
        }
    }
}

/// One metric of one case against its limit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct MetricCheck {
    /// Case name.
    pub case: String,
    /// Metric name (`allocs_per_step`, `commits_per_step`, `bytes_per_step`).
    pub metric: &'static str,
    /// This measurement.
    pub measured: f64,
    /// The recorded baseline.
    pub baseline: f64,
    /// `baseline × (1 + margin)`.
    pub limit: f64,
    /// `measured <= limit`.
    pub ok: bool,
}

/// What the guard prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct GuardReport {
    /// Every metric of every case.
    pub checks: Vec<MetricCheck>,
    /// `case metric` of each check over its limit.
    pub regressions: Vec<String>,
    /// No regression.
    pub ok: bool,
}

/// The cases of a fresh thresholds file: a single run in memory and at D1, and a small
/// fan-out whose commits are grouped.
pub fn default_thresholds() -> Thresholds {
    let case = |name: &str, scenario, nodes, runs, durability| GuardCase {
        name: name.to_owned(),
        scenario,
        nodes,
        runs,
        durability,
        margin: None,
        margin_reason: None,
        baseline: None,
    };
    Thresholds {
        note: String::new(),
        margin: 0.10,
        cases: vec![
            case(
                "linear-n200-memory",
                Scenario::Linear,
                200,
                1,
                Level::Memory,
            ),
            case("linear-n200-d1", Scenario::Linear, 200, 1, Level::D1),
            case("fanout-n20-r20-d1", Scenario::Fanout, 20, 20, Level::D1),
        ],
    }
}

/// Runs every case once (warm-up first, allocations counted) and returns its figures.
///
/// # Errors
/// A benchmark run that fails.
pub async fn measure(
    thresholds: &Thresholds,
    counter: AllocCounter,
) -> Result<Vec<Metrics>, Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(thresholds.cases.len());
    for case in &thresholds.cases {
        let opts = BenchOptions {
            scenario: case.scenario,
            nodes: case.nodes,
            runs: case.runs,
            level: case.durability,
            variant: Variant::Interrupt,
            warmup: true,
            dir: None,
            consumer: Consumer::Park,
            alloc_counter: Some(counter),
            postgres: None,
        };
        out.push(Metrics::from_report(&super::run(&opts).await?));
    }
    Ok(out)
}

/// Compares `measured` (one per case, in order) with the baselines. A case without a
/// baseline is a regression of every metric, so a file that was never filled in fails.
pub fn check(thresholds: &Thresholds, measured: &[Metrics]) -> GuardReport {
    let mut checks = Vec::new();
    for (case, now) in thresholds.cases.iter().zip(measured) {
        let margin = case.margin.unwrap_or(thresholds.margin);
        let base = case.baseline.map(|b| b.named());
        for (i, (metric, value)) in now.named().into_iter().enumerate() {
            let baseline = base.map_or(f64::NAN, |b| b[i].1);
            let limit = baseline * (1.0 + margin);
            checks.push(MetricCheck {
                case: case.name.clone(),
                metric,
                measured: value,
                baseline,
                limit,
                ok: value <= limit,
            });
        }
    }
    let regressions: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} {}", c.case, c.metric))
        .collect();
    GuardReport {
        ok: regressions.is_empty() && measured.len() == thresholds.cases.len(),
        checks,
        regressions,
    }
}

/// `thresholds` with each case's baseline replaced by its measurement.
pub fn updated(thresholds: &Thresholds, measured: &[Metrics]) -> Thresholds {
    let mut next = thresholds.clone();
    for (case, now) in next.cases.iter_mut().zip(measured) {
        case.baseline = Some(*now);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(allocs: f64, commits: f64, bytes: f64) -> Metrics {
        Metrics {
            allocs_per_step: allocs,
            commits_per_step: commits,
            bytes_per_step: bytes,
        }
    }

    fn one_case(baseline: Metrics, margin: Option<f64>) -> Thresholds {
        let mut t = default_thresholds();
        t.cases.truncate(1);
        t.cases[0].baseline = Some(baseline);
        t.cases[0].margin = margin;
        t
    }

    #[test]
    fn a_rise_within_the_margin_passes_and_past_it_names_the_metric() {
        let t = one_case(metrics(100.0, 1.0, 300.0), None);
        let within = check(&t, &[metrics(109.0, 1.0, 330.0)]);
        assert!(within.ok, "{within:?}");
        assert!(within.regressions.is_empty());
        let past = check(&t, &[metrics(111.0, 1.0, 300.0)]);
        assert!(!past.ok);
        assert_eq!(past.regressions, vec!["linear-n200-memory allocs_per_step"]);
        let check = past
            .checks
            .iter()
            .find(|c| c.metric == "allocs_per_step")
            .unwrap();
        assert!((check.limit - 110.0).abs() < 1e-9, "{check:?}");
    }

    #[test]
    fn a_case_margin_overrides_the_file_margin() {
        let t = one_case(metrics(100.0, 1.0, 300.0), Some(0.5));
        assert!(check(&t, &[metrics(140.0, 1.0, 300.0)]).ok);
        assert_eq!(
            check(&t, &[metrics(100.0, 1.6, 300.0)]).regressions,
            vec!["linear-n200-memory commits_per_step"]
        );
    }

    #[test]
    fn a_case_without_baseline_fails_and_update_fills_it() {
        let t = default_thresholds();
        let measured = vec![metrics(10.0, 1.0, 200.0); t.cases.len()];
        let report = check(&t, &measured);
        assert!(!report.ok);
        assert_eq!(report.regressions.len(), 3 * t.cases.len());
        let filled = updated(&t, &measured);
        assert!(check(&filled, &measured).ok);
        let text = serde_json::to_string(&filled).unwrap();
        let back: Thresholds = serde_json::from_str(&text).unwrap();
        assert_eq!(back.cases[2].baseline, Some(measured[2]));
        assert_eq!(back.cases[2].scenario, Scenario::Fanout);
    }
}
