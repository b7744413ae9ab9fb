//! Transition coverage: which rows of the edge table ([`EDGES`]) runs took.
//!
//! Every row a run driver takes is counted in this process ([`taken`]). When the environment
//! variable [`COVERAGE_DIR_ENV`] names a directory, the first time a process takes a row its
//! name is appended to `<dir>/<pid>.rows`, so the rows taken by every test process (and every
//! `flexrun` binary they start) can be added up afterwards ([`Coverage::read`],
//! `flexrun docs coverage --from DIR`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fsm::table::EDGES;

/// The environment variable naming the directory that collects the rows taken.
pub const COVERAGE_DIR_ENV: &str = "FLEXRUN_TRANSITION_COVERAGE";

static TAKEN: [AtomicU64; EDGES.len()] = [const { AtomicU64::new(0) }; EDGES.len()];
static SINK: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Counts row `row` as taken (and records it on the first take when collecting).
pub(crate) fn record(row: Option<usize>) {
    let Some(i) = row else {
        return;
    };
    if !count(i) {
        return;
    }
    let sink = SINK.get_or_init(|| std::env::var_os(COVERAGE_DIR_ENV).map(PathBuf::from));
    if let Some(dir) = sink {
        let file = dir.join(format!("{}.rows", std::process::id()));
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)?;
            writeln!(f, "{}", EDGES[i].name())
        });
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "cannot record transition coverage");
        }
    }
}

/// Counts row `i`; true on its first take in this process.
fn count(i: usize) -> bool {
    TAKEN[i].fetch_add(1, Ordering::Relaxed) == 0
}

/// How often this process took each row, in table order.
pub fn taken() -> Vec<u64> {
    TAKEN.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

/// The rows taken, added up over processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// For each row of [`EDGES`], in table order: how many processes took it.
    pub processes: Vec<usize>,
    /// Row names found that the table does not have (a stale collection).
    pub unknown: Vec<String>,
}

impl Coverage {
    /// Reads every `*.rows` file in `dir`.
    ///
    /// # Errors
    /// When the directory or a file cannot be read.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let names: Vec<String> = EDGES.iter().map(|e| e.name()).collect();
        let mut coverage = Self {
            processes: vec![0; EDGES.len()],
            unknown: Vec::new(),
        };
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "rows") {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                match names.iter().position(|n| n == line) {
                    Some(i) => coverage.processes[i] += 1,
                    None if !line.is_empty() => coverage.unknown.push(line.to_owned()),
                    None => {}
                }
            }
        }
        Ok(coverage)
    }

    /// Rows no process took.
    pub fn missed(&self) -> Vec<String> {
        EDGES
            .iter()
            .zip(&self.processes)
            .filter(|(_, n)| **n == 0)
            .map(|(e, _)| e.name())
            .collect()
    }

    /// Rows taken, as a fraction of all rows.
    pub fn ratio(&self) -> f64 {
        let hit = self.processes.iter().filter(|n| **n > 0).count();
        hit as f64 / EDGES.len() as f64
    }

    /// A Markdown table: every row with the number of processes that took it.
    pub fn markdown(&self) -> String {
        let hit = self.processes.iter().filter(|n| **n > 0).count();
        let mut out = format!(
            "Transition coverage: {hit} of {} rows taken ({:.0}%).\n\n| row | event | processes |\n|---|---|---:|\n",
            EDGES.len(),
            self.ratio() * 100.0
        );
        for (edge, n) in EDGES.iter().zip(&self.processes) {
            let mark = if *n == 0 { " **missed**" } else { "" };
            out.push_str(&format!(
                "| `{}` | `{}` | {n}{mark} |\n",
                edge.name(),
                edge.event
            ));
        }
        for name in &self.unknown {
            out.push_str(&format!("| `{name}` (not in the table) | | |\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_adds_up_processes_and_names_the_missed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let first = EDGES[0].name();
        let second = EDGES[1].name();
        std::fs::write(dir.path().join("1.rows"), format!("{first}\n{second}\n")).unwrap();
        std::fs::write(dir.path().join("2.rows"), format!("{first}\nnot.a[row]\n")).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), format!("{second}\n")).unwrap();
        let coverage = Coverage::read(dir.path()).unwrap();
        assert_eq!(coverage.processes[0], 2);
        assert_eq!(coverage.processes[1], 1);
        assert_eq!(coverage.unknown, vec!["not.a[row]".to_owned()]);
        assert_eq!(coverage.missed().len(), EDGES.len() - 2);
        assert!(coverage.markdown().contains("**missed**"));
        assert!(
            coverage
                .markdown()
                .contains(&format!("2 of {} rows", EDGES.len()))
        );
    }
}
