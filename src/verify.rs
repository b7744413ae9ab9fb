//! `flexrun verify`: reads a run's event stream (a saved file, standard input, or a live SSE
//! stream) and checks it with [`flexrun::conformance`].
//!
//! Exit codes: 0 every run conforms; 1 at least one violation; 2 the stream could not be
//! checked (unreadable input, a refused or failed request, the reconnect budget used up,
//! bad arguments); 3 a followed stream did not reach `complete` within `--timeout` (what
//! was read conforms).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flexrun::RunId;
use flexrun::conformance::wire::{Format, SseParser, Stream};
use flexrun::conformance::{self, Options, Report};
use flexrun::fsm::{EventKind, Limits, RunEvent};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION};

/// Everything conforms.
const CONFORMS: u8 = 0;
/// At least one rule is broken.
const VIOLATIONS: u8 = 1;
/// The stream could not be read or fetched.
const UNREADABLE: u8 = 2;
/// A followed stream did not reach `complete` in time.
const TIMED_OUT: u8 = 3;

/// `flexrun verify` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// A saved stream: JSON lines (`flexrun run --format jsonl`) or SSE frames (`--format
    /// sse`, `GET /v1/runs/{id}/events`), detected from the first line; `-` reads standard
    /// input.
    #[arg(required_unless_present = "url", conflicts_with = "url")]
    file: Option<PathBuf>,
    /// Follow a live stream, e.g. `http://127.0.0.1:8080/v1/runs/ID/events`, until
    /// `complete`, reconnecting with `Last-Event-ID` when the connection drops.
    #[arg(long)]
    url: Option<String>,
    /// Name of an environment variable holding the bearer token for `--url` (never printed).
    #[arg(long, requires = "url", value_name = "VAR")]
    token_env: Option<String>,
    /// Give up following `--url` after this long (`30s`, `5m`, …).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Reconnects in a row that may bring no new event before `--url` gives up.
    #[arg(long, default_value_t = 5)]
    max_reconnects: u32,
    /// The run the stream is of: events of other runs break `run-id`. For `--url` it is the
    /// run the URL names.
    #[arg(long, value_name = "RUN_ID")]
    run: Option<RunId>,
    /// The stream may stop before the run ends (no `complete` required).
    #[arg(long)]
    partial: bool,
    /// The run's planner attempts per purpose (`policies.planner.maxAttempts`), to check it
    /// was kept; unlimited by default.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The run's replans (`policies.planner.maxReplans`), to check it was kept; unlimited
    /// by default.
    #[arg(long)]
    max_replans: Option<u32>,
}

/// Why a stream could not be checked.
type Failure = String;

/// How following a live stream ended.
enum Followed {
    /// `complete` arrived.
    Complete,
    /// `--timeout` passed first.
    TimedOut,
}

/// Runs `flexrun verify` and returns its exit code.
pub(crate) async fn run(args: VerifyArgs) -> u8 {
    let mut opts = Options::default().require_complete(!args.partial);
    let defaults = opts.limits;
    opts = opts.with_limits(Limits {
        max_attempts: args.max_attempts.unwrap_or(defaults.max_attempts),
        max_replans: args.max_replans.unwrap_or(defaults.max_replans),
    });
    let code = match (&args.url, &args.file) {
        (Some(url), _) => verify_url(url, &args, opts).await,
        (None, Some(file)) => verify_file(file, args.run, opts),
        (None, None) => Err("give a FILE, `-` or --url".to_owned()),
    };
    match code {
        Ok(code) => code,
        Err(why) => {
            eprintln!("error: {why}");
            UNREADABLE
        }
    }
}

fn verify_file(file: &Path, run: Option<RunId>, mut opts: Options) -> Result<u8, Failure> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?
    };
    let stream = Stream::parse(&text).map_err(|e| {
        if file.as_os_str() == "-" {
            format!("standard input: {e}")
        } else {
            format!("{}: {e}", file.display())
        }
    })?;
    if let Some(run) = run {
        opts = opts.for_run(run);
    }
    let report = conformance::check_stream(&stream, &opts);
    print_report(&report, Some(&stream));
    Ok(if report.is_ok() { CONFORMS } else { VIOLATIONS })
}

async fn verify_url(url: &str, args: &VerifyArgs, mut opts: Options) -> Result<u8, Failure> {
    let token = match &args.token_env {
        None => None,
        Some(var) => {
            let token = std::env::var(var)
                .map_err(|_| format!("--token-env {var}: the variable is not set"))?;
            if token.trim().is_empty() {
                return Err(format!("--token-env {var}: the variable is empty"));
            }
            Some(token)
        }
    };
    if let Some(run) = args.run.or_else(|| run_of(url)) {
        opts = opts.for_run(run);
    }
    let client = flexrun::http_client::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let mut stream = Stream::new(Format::Sse);
    let mut ignore = |_: &RunEvent| {};
    let follow = follow(
        &client,
        url,
        token.as_deref(),
        args.max_reconnects,
        &mut stream,
        &mut ignore,
    );
    let followed = match tokio::time::timeout(args.timeout, follow).await {
        Ok(Ok(())) => Ok(Followed::Complete),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Ok(Followed::TimedOut),
    };
    let complete = matches!(followed, Ok(Followed::Complete));
    let report = conformance::check_stream(&stream, &opts.require_complete(complete));
    if !stream.events().is_empty() {
        print_report(&report, None);
    }
    match followed {
        Err(failure) if report.is_ok() => Err(failure),
        Err(failure) => {
            eprintln!("error: {failure}");
            Ok(VIOLATIONS)
        }
        Ok(_) if !report.is_ok() => Ok(VIOLATIONS),
        Ok(Followed::Complete) => Ok(CONFORMS),
        Ok(Followed::TimedOut) => {
            eprintln!(
                "timed out after {} before `complete` ({} events read)",
                humantime::format_duration(args.timeout),
                stream.events().len()
            );
            Ok(TIMED_OUT)
        }
    }
}

/// The run id in `…/runs/{id}/events`.
fn run_of(url: &str) -> Option<RunId> {
    let path = url.split(['?', '#']).next()?;
    let mut segments = path.rsplit('/');
    (segments.next()? == "events")
        .then(|| segments.next())
        .flatten()?
        .parse()
        .ok()
}

/// Reads the SSE stream at `url` into `stream` until `complete`, reconnecting with
/// `Last-Event-ID`. A reconnect that brings no new event counts against `max_reconnects`
/// and the next one waits longer; one that does starts the count again.
/// Follows a run's event stream at `url` until `complete`, reconnecting with `Last-Event-ID`
/// when the connection drops; every event is pushed to `stream` and handed to `on_event`.
/// A `204` (the run ended and nothing is left) ends it as `complete` does.
pub(crate) async fn follow(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    max_reconnects: u32,
    stream: &mut Stream,
    on_event: &mut dyn FnMut(&RunEvent),
) -> Result<(), Failure> {
    let mut idle = 0;
    let mut last_id: Option<String> = None;
    loop {
        let mut request = client.get(url).header(ACCEPT, "text/event-stream");
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let before = last_id.clone();
        let dropped = match request.send().await {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => return Ok(()),
            Ok(response) if response.status() == StatusCode::OK => {
                match read(response, stream, &mut last_id, on_event).await? {
                    Read::Complete => return Ok(()),
                    Read::Dropped(why) => why,
                }
            }
            Ok(response) => return Err(refused(&format!("GET {url}"), response).await),
            Err(e) if e.is_connect() && last_id.is_none() => {
                return Err(format!("GET {url}: {}", error_chain(&e)));
            }
            Err(e) => error_chain(&e),
        };
        idle = if last_id == before { idle + 1 } else { 0 };
        if idle > max_reconnects {
            return Err(format!(
                "GET {url}: the stream stopped before `complete` and {idle} reconnects in a row brought no new event: {dropped}"
            ));
        }
        let backoff = Duration::from_millis(50 << idle.min(5));
        eprintln!(
            "the stream stopped ({dropped}); reconnecting after seq {} in {} ms",
            last_id.as_deref().unwrap_or("0"),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
    }
}

enum Read {
    Complete,
    Dropped(String),
}

/// Reads frames until `complete` or until the connection ends; a frame cut off by the end
/// is dropped (the reconnect asks for it again).
async fn read(
    mut response: reqwest::Response,
    stream: &mut Stream,
    last_id: &mut Option<String>,
    on_event: &mut dyn FnMut(&RunEvent),
) -> Result<Read, Failure> {
    let mut parser = SseParser::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(Read::Dropped("the server closed the connection".to_owned())),
            Err(e) => return Ok(Read::Dropped(error_chain(&e))),
        };
        let frames = parser.push(&chunk).map_err(|e| e.to_string())?;
        for frame in frames {
            if let Some(id) = &frame.id {
                *last_id = Some(id.clone());
            }
            let event = stream.push_frame(&frame).map_err(|e| e.to_string())?;
            if let Some(event) = event {
                on_event(event);
                if event.kind() == EventKind::Complete {
                    return Ok(Read::Complete);
                }
            }
        }
    }
}

/// `<what>: 401 Unauthorized: <the API's error message>` (`what` is e.g. `GET <url>`).
pub(crate) async fn refused(what: &str, response: reqwest::Response) -> Failure {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("{what}: {status}: {message}")
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// One line per run, each violation under its run (with the line it starts on, for files),
/// and where legality checking stopped.
fn print_report(report: &Report, stream: Option<&Stream>) {
    for run in report.runs() {
        println!("{run}");
        for v in report.of_run(run.run_id) {
            match stream.and_then(|s| s.line_of(v.index)) {
                Some(line) => println!("  line {line}, {v}"),
                None => println!("  {v}"),
            }
        }
        if let Some(seq) = run.legality_stopped_at {
            println!(
                "  legal-sequence not checked after seq {seq}: the run's state is unknown from there"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_is_read_from_the_events_url() {
        let run = RunId::new();
        assert_eq!(run_of(&format!("http://h/v1/runs/{run}/events")), Some(run));
        assert_eq!(
            run_of(&format!("http://h/v1/runs/{run}/events?after=3")),
            Some(run)
        );
        assert_eq!(run_of("http://h/v1/runs/not-a-run/events"), None);
        assert_eq!(run_of(&format!("http://h/v1/runs/{run}")), None);
    }
}
