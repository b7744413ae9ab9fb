//! `flexrun bench --sweep nodes|runs`: the same workload at several plan sizes or run counts,
//! each point in a fresh process so its peak resident set is its own.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// Which parameter a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sweep {
    /// Plan size N at the given R (default points 10 … 10,000).
    Nodes,
    /// Concurrent runs R of the fanout scenario at the given N (default points 1 … 1,000).
    Runs,
}

impl Sweep {
    /// The default points of this sweep.
    pub fn default_points(self) -> Vec<usize> {
        match self {
            Sweep::Nodes => vec![10, 30, 100, 300, 1000, 3000, 10000],
            Sweep::Runs => vec![1, 3, 10, 30, 100, 300, 1000],
        }
    }
}

/// What a sweep prints: the varied parameter and one report per point.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// The varied parameter.
    pub sweep: Sweep,
    /// One `flexrun bench` report per point, in the order of the points.
    pub points: Vec<serde_json::Value>,
}

/// Runs `exe bench <args> --nodes P` (or `--runs P`) for each point and collects the reports.
/// `args` are the other bench flags (scenario, durability, …) without `--nodes`/`--runs` for
/// the varied parameter.
///
/// # Errors
/// A point whose process fails or prints something that is not a JSON report.
pub fn run(
    exe: &Path,
    sweep: Sweep,
    points: &[usize],
    args: &[String],
) -> Result<SweepReport, Box<dyn std::error::Error>> {
    let flag = match sweep {
        Sweep::Nodes => "--nodes",
        Sweep::Runs => "--runs",
    };
    let mut out = Vec::with_capacity(points.len());
    for point in points {
        let child = Command::new(exe)
            .arg("bench")
            .args(args)
            .arg(flag)
            .arg(point.to_string())
            .output()?;
        if !child.status.success() {
            return Err(format!(
                "sweep point {flag} {point} failed: {}",
                String::from_utf8_lossy(&child.stderr).trim()
            )
            .into());
        }
        out.push(serde_json::from_slice(&child.stdout)?);
    }
    Ok(SweepReport { sweep, points: out })
}
