//! The `flexrun` binary itself: `--data` names a directory or a store file the same way for
//! every subcommand, and a failure is one line on stderr.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flexrun::{Durability, RedbStore, Store};

fn flexrun() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flexrun"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FLEXRUN_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

fn run_tagline(data: &Path) -> Output {
    flexrun()
        .args([
            "run",
            "examples/tagline.json",
            "--answer",
            "approve",
            "--data",
        ])
        .arg(data)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// How many completed runs the store file holds, read by reopening it.
fn completed_runs(store: &Path) -> usize {
    let store = RedbStore::open(store, Durability::Fsync).unwrap();
    store
        .list_runs(Some(flexrun::store::RunStatus::Completed))
        .unwrap()
        .len()
}

#[test]
fn run_takes_a_directory_or_a_file_and_both_name_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_tagline(&data);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = data.join("flexrun.redb");
    assert!(
        stderr(&out).contains(&format!("(store {})", file.display())),
        "{}",
        stderr(&out)
    );
    assert_eq!(completed_runs(&file), 1);

    let out = run_tagline(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_tagline(&data);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(completed_runs(&file), 3, "one store, reopened each time");

    let named = dir.path().join("elsewhere/other.redb");
    let out = run_tagline(&named);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(completed_runs(&named), 1);
    assert_eq!(completed_runs(&file), 3);
}

#[test]
fn serve_reads_the_store_run_wrote_through_either_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flexrun.redb");
    assert!(run_tagline(dir.path()).status.success());
    for data in [dir.path().to_path_buf(), file.clone()] {
        let mut child = flexrun()
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let banner = lines
            .find_map(|l| l.ok().filter(|l| l.starts_with("flexrun serving")))
            .expect("the server announces itself");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            banner.contains(&format!("(store {},", file.display())),
            "{}: {banner}",
            data.display()
        );
    }
    assert_eq!(completed_runs(&file), 1);
}

/// `(args, start of the message)` of commands that fail before anything runs.
fn failing(dir: &Path) -> Vec<(Vec<String>, String)> {
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "not a store").unwrap();
    let under = plain.join("sub");
    let path = |p: &PathBuf| p.display().to_string();
    let run = |data: &PathBuf| {
        vec![
            "run".to_owned(),
            "examples/tagline.json".to_owned(),
            "--data".to_owned(),
            path(data),
        ]
    };
    vec![
        (run(&under), format!("error: looking up {}: ", path(&under))),
        (run(&plain), format!("error: opening {}: ", path(&plain))),
        (
            vec!["run".to_owned(), path(&dir.join("missing.json"))],
            format!("error: reading {}: ", path(&dir.join("missing.json"))),
        ),
        (
            vec![
                "serve".to_owned(),
                "--addr".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--data".to_owned(),
                path(&under),
            ],
            format!("error: looking up {}: ", path(&under)),
        ),
        (
            vec![
                "serve".to_owned(),
                "--addr".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--pricing".to_owned(),
                path(&plain),
            ],
            format!("error: --pricing {}: expected ", path(&plain)),
        ),
    ]
}

#[test]
fn a_failing_command_says_why_in_one_line_even_with_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    for (args, start) in failing(dir.path()) {
        let out = flexrun().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(&start), "{args:?}: {err}");
        for word in ["backtrace", "Backtrace", "Stack", "Caused by"] {
            assert!(!err.contains(word), "{args:?}: {err}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("plain.txt")).unwrap(),
        "not a store",
        "a file that is no store is left alone"
    );
}

#[test]
fn verbose_or_flexrun_log_print_the_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (args, start) = failing(dir.path()).swap_remove(1);
    let verbose = flexrun().arg("-v").args(&args).output().unwrap();
    let logged = flexrun()
        .args(&args)
        .env("FLEXRUN_LOG", "error")
        .output()
        .unwrap();
    for out in [verbose, logged] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("Caused by:"), "{err}");
        assert!(
            err.starts_with(start.trim_end_matches(": ")),
            "{start}: {err}"
        );
    }
}

/// A thresholds file with one in-memory linear case and the given baselines.
fn thresholds(dir: &Path, allocs: f64, commits: f64, bytes: f64) -> PathBuf {
    let file = serde_json::json!({
        "margin": 0.1,
        "cases": [{
            "name": "linear-n50-memory", "scenario": "linear", "nodes": 50, "runs": 1,
            "durability": "memory",
            "baseline": {"allocs_per_step": allocs, "commits_per_step": commits, "bytes_per_step": bytes}
        }]
    });
    let path = dir.join("thresholds.json");
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

#[test]
fn bench_guard_fails_naming_the_metric_past_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let tight = thresholds(dir.path(), 1e9, 0.5, 1e9);
    let out = flexrun()
        .args(["bench", "--guard"])
        .arg(&tight)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("linear-n50-memory commits_per_step"), "{err}");
    assert!(!err.contains("allocs_per_step"), "{err}");
    assert!(!err.contains("bytes_per_step"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["regressions"],
        serde_json::json!(["linear-n50-memory commits_per_step"])
    );
    let commits = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "commits_per_step")
        .unwrap();
    assert!(commits["measured"].as_f64().unwrap() >= 1.0, "{commits}");
    assert!((commits["limit"].as_f64().unwrap() - 0.55).abs() < 1e-9);
}

#[test]
fn bench_guard_update_records_counts_the_next_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = thresholds(dir.path(), 0.0, 0.0, 0.0);
    let update = flexrun()
        .args(["bench", "--update-thresholds", "--guard"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(update.status.success(), "{}", stderr(&update));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let base = &written["cases"][0]["baseline"];
    assert!(base["allocs_per_step"].as_f64().unwrap() > 1.0, "{base}");
    assert!(base["bytes_per_step"].as_f64().unwrap() > 1.0, "{base}");
    let check = flexrun()
        .args(["bench", "--guard"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checks"].as_array().unwrap().len(), 3);
}

#[test]
fn bench_sweep_prints_one_report_per_point_each_from_its_own_process() {
    let out = flexrun()
        .args([
            "bench",
            "--sweep",
            "nodes",
            "--points",
            "10,40",
            "--durability",
            "memory",
            "--count-allocs",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sweep"], "nodes");
    let points = report["points"].as_array().unwrap();
    let sizes: Vec<u64> = points.iter().map(|p| p["n"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![10, 40]);
    for p in points {
        assert_eq!(p["steps"], p["n"], "{p}");
        assert!(p["allocs_per_step"].as_f64().unwrap() > 1.0, "{p}");
    }
    let runs = flexrun()
        .args([
            "bench",
            "--sweep",
            "runs",
            "--points",
            "2",
            "--nodes",
            "5",
            "--durability",
            "memory",
        ])
        .output()
        .unwrap();
    assert!(runs.status.success(), "{}", stderr(&runs));
    let report: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(report["points"][0]["scenario"], "fanout");
    assert_eq!(report["points"][0]["steps"], 10);
}

#[test]
fn bench_sse_follows_one_run_of_a_server_process_with_many_clients() {
    let out = flexrun()
        .args([
            "bench-sse",
            "--clients",
            "40",
            "--steps",
            "3",
            "--gap-ms",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 6 events up to the first approval, 4 per further step, then the last answer and `complete`.
    assert_eq!(report["events"], 6 + 4 * 2 + 2, "{report}");
    assert_eq!(report["identical"], 40, "{report}");
    assert_eq!(report["differing"], 0, "{report}");
    // The probe and every follower got each of the 3 rounds' events.
    assert_eq!(report["round_frames"], 41 * (4 * 2 + 2), "{report}");
    assert_eq!(report["probe_latency"]["samples"], 4 * 2 + 2, "{report}");
    assert!(report["rss_idle_kib"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["rss_burst_peak_kib"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// One HTTP/1.1 request to `addr` (closing the connection); the status and the JSON body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A child process killed when the test ends, failed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_runs_and_answer_drive_a_run_on_a_server_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Killed(
        flexrun()
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    let banner = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("flexrun serving")))
        .unwrap();
    let addr = banner["flexrun serving http://".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let url = format!("http://{addr}");
    let envelope = std::fs::read_to_string("examples/approval.json").unwrap();
    let (status, created) = http(&addr, "POST", "/v1/runs", &envelope);
    assert_eq!(status, 201, "{created}");
    let run = created["runId"].as_str().unwrap().to_owned();

    let mut watch = Killed(
        flexrun()
            .args(["watch", &run, "--server", &url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let header = out.next().unwrap().unwrap();
    assert!(header.contains("investor newsletter"), "{header}");
    let asked = out
        .find_map(|l| l.ok().filter(|l| l.contains("hitl_request")))
        .expect("the watch shows the approval request");
    assert!(asked.contains(" paused "), "{asked}");

    let listed = flexrun().args(["runs", "--server", &url]).output().unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&run) && l.contains("active") && l.contains("paused")),
        "{table}"
    );

    let (_, hitl) = http(&addr, "GET", &format!("/v1/runs/{run}/hitl"), "");
    let request = hitl["requests"][0]["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let answered = flexrun()
        .args(["answer", &run, &request, "approve", "--server", &url])
        .output()
        .unwrap();
    assert!(answered.status.success(), "{}", stderr(&answered));
    assert!(String::from_utf8_lossy(&answered.stdout).contains("answered approve"));

    let rest: Vec<String> = out.map(Result::unwrap).collect();
    let last = rest.last().unwrap();
    assert!(
        last.contains(" complete ") && last.contains(" done "),
        "{last}"
    );
    let (done, total) = last
        .split_once('[')
        .and_then(|(_, r)| r.split_once(" nodes]"))
        .and_then(|(p, _)| p.split_once('/'))
        .unwrap();
    assert_eq!(done, total, "{last}");
    assert_eq!(
        watch.0.wait().unwrap().code(),
        Some(0),
        "a completed run exits 0"
    );

    let again = flexrun()
        .args(["answer", &run, &request, "approve", "--server", &url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let missing = flexrun()
        .args([
            "watch",
            "0190e4b2-0000-7000-8000-000000000000",
            "--server",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
    drop(server);
}
