//! The `flexrun` command: run an envelope, serve the HTTP API, benchmark the engine, print
//! generated docs.

use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use flexrun::api::{self, ApiConfig};
use flexrun::bench::{self, BenchOptions, Consumer, Level, Scenario, Variant};
use flexrun::fsm::{EventBody, HitlDecision, RunOutcome};
use flexrun::planner::{OpenAiConfig, ResponseFormat};
use flexrun::webhook::WebhookSecret;
use flexrun::{Durability, Engine, HitlAnswer, RedbStore, RunEnvelope, Store};
use futures::StreamExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

mod bench_sse;
mod otel;
mod remote;
mod serve;
mod verify;

/// The binary's allocator. The engine allocates small, short-lived values on one thread and
/// frees many of them on another (events reach subscribers on other workers); mimalloc's
/// per-thread free lists avoid the arena lock contention glibc's allocator shows there. The
/// counting wrapper adds one relaxed atomic load per call until `bench --count-allocs` or
/// `--guard` switches counting on.
#[global_allocator]
static ALLOCATOR: alloc_count::Counting<mimalloc::MiMalloc> =
    alloc_count::Counting::new(mimalloc::MiMalloc);

fn alloc_totals() -> bench::AllocTotals {
    let t = alloc_count::totals();
    bench::AllocTotals {
        allocs: t.allocs,
        bytes: t.bytes,
    }
}

#[derive(Parser, Debug)]
#[command(name = "flexrun", version, about = "Hybrid plan/execute engine")]
struct Cli {
    /// On failure, print the whole error chain (and a backtrace when `RUST_BACKTRACE` is
    /// set), and log at `info` unless `FLEXRUN_LOG` says otherwise. Setting `FLEXRUN_LOG`
    /// also prints the whole chain.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// The file name of the store inside a `--data` directory.
const STORE_FILE: &str = "flexrun.redb";

/// Where the store is; shared by every subcommand that opens one.
#[derive(Debug, Clone, clap::Args)]
struct DataArg {
    /// The store: a directory holding `flexrun.redb` (both created if missing), or a store
    /// file (a path ending in `.redb`, or an existing regular file).
    #[arg(long, value_name = "PATH", default_value = ".")]
    data: PathBuf,
}

impl DataArg {
    /// The store file `--data` names; creates the directories it needs.
    fn store_path(&self) -> anyhow::Result<PathBuf> {
        store_path(&self.data)
    }
}

/// Resolves `--data`: an existing directory (or a missing path not ending in `.redb`, created
/// as a directory) holds `flexrun.redb`; an existing regular file, or a path ending in
/// `.redb` (its parent directories created), is the store file itself.
fn store_path(data: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(data) {
        Ok(meta) if meta.is_dir() => Ok(data.join(STORE_FILE)),
        Ok(meta) if meta.is_file() => Ok(data.to_owned()),
        Ok(_) => bail!(
            "--data {}: neither a directory nor a regular file",
            data.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if data.extension().is_some_and(|ext| ext == "redb") {
                if let Some(parent) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                Ok(data.to_owned())
            } else {
                std::fs::create_dir_all(data)
                    .with_context(|| format!("creating {}", data.display()))?;
                Ok(data.join(STORE_FILE))
            }
        }
        Err(e) => Err(e).with_context(|| format!("looking up {}", data.display())),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Answer {
    /// Ask on the terminal.
    Ask,
    /// Approve every request.
    Approve,
    /// Reject every request.
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One line per event.
    Pretty,
    /// SSE frames, as the server streams them.
    Sse,
    /// One JSON event per line (JSON lines; `json` is accepted too).
    #[value(alias = "json")]
    Jsonl,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one envelope with the built-in demo catalog and the catalog planner.
    Run {
        /// The run envelope (JSON).
        envelope: PathBuf,
        #[command(flatten)]
        data: DataArg,
        /// How to answer HITL requests.
        #[arg(long, value_enum, default_value = "ask")]
        answer: Answer,
        /// How to print events.
        #[arg(long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Run the benchmark workload and print its figures as JSON.
    Bench {
        /// Run on the PostgreSQL store at this URL (`postgres://…`, a database the benchmark
        /// may fill) instead of redb or memory; `--durability` is then ignored.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// With `--store`: engines (instances) sharing the database in this process.
        #[arg(long, default_value_t = 1, requires = "store")]
        instances: usize,
        /// With `--store`: the instances' lease, which bounds the measured takeover time.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s", requires = "store")]
        lease: Duration,
        /// linear, replan or fanout.
        #[arg(long, value_enum, default_value = "linear")]
        scenario: ScenarioArg,
        /// Plan size N.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Runs R.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// memory (D0), d1 or d2.
        #[arg(long, value_enum, default_value = "d2")]
        durability: LevelArg,
        /// Replan variant: interrupt (client resumes) or route.
        #[arg(long, value_enum, default_value = "interrupt")]
        variant: VariantArg,
        /// 1 runs a warm-up (N=8, R=1) on a separate store first; 0 disables it.
        #[arg(long, default_value_t = 1)]
        warmup: u8,
        /// Directory for the store files (a temp dir by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// park: the client awaits events (a wake-up per step); poll: it polls and yields.
        #[arg(long, value_enum, default_value = "park")]
        consumer: ConsumerArg,
        /// Count allocations over the timed region (`allocs_per_step`, `alloc_bytes_per_step`).
        #[arg(long)]
        count_allocs: bool,
        /// Run the counted regression guard against this thresholds file instead (exits
        /// non-zero naming each metric past its limit); the other workload flags are ignored.
        #[arg(long, value_name = "THRESHOLDS")]
        guard: Option<PathBuf>,
        /// With `--guard`: measure and rewrite the file's baselines instead of checking them
        /// (a missing file is created with the default cases).
        #[arg(long, requires = "guard")]
        update_thresholds: bool,
        /// Repeat the workload over several plan sizes (`nodes`, at `--runs`) or concurrent
        /// runs (`runs`: fanout at `--nodes`), each point in a fresh process; prints
        /// `{"sweep", "points": [report, …]}`.
        #[arg(long, value_enum, conflicts_with = "guard")]
        sweep: Option<SweepArg>,
        /// The sweep's points, comma-separated (default 10…10000 for nodes, 1…1000 for runs).
        #[arg(long, value_delimiter = ',', requires = "sweep")]
        points: Vec<usize>,
    },
    /// Serve the HTTP API (runs, SSE events, plans, HITL, catalog, metrics).
    Serve {
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[command(flatten)]
        store: serve::StoreArgs,
        /// The default planner of runs whose envelope names none.
        #[arg(long, value_enum, default_value = "catalog")]
        planner: PlannerArg,
        /// Name of an environment variable holding a bearer token; when given, every route
        /// but `/healthz` requires `Authorization: Bearer <token>`.
        #[arg(long)]
        auth_token_env: Option<String>,
        /// Largest accepted request body, in bytes.
        #[arg(long, default_value_t = 1024 * 1024)]
        body_limit: usize,
        /// An origin whose browser pages may call the API (`http://host:port`, or `*`);
        /// repeat for several. Preflight requests are answered without a token.
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// Seconds between SSE heartbeat comments.
        #[arg(long, default_value_t = 15)]
        heartbeat_secs: u64,
        /// Delete ended runs whose last update is older than this (e.g. `7d`, `12h`); without
        /// it, runs are kept until deleted.
        #[arg(long, value_parser = humantime::parse_duration)]
        retain_terminal_runs: Option<Duration>,
        /// Name of an environment variable holding the server-wide webhook signing secret
        /// (`whsec_<base64>`; several separated by spaces while rotating). Every `http`
        /// capability call is then signed, unless the capability names its own
        /// `signingSecretEnv`. The value is never logged.
        #[arg(long)]
        webhook_secret_env: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        /// Export traces (a span per run, planner call and node attempt) over OTLP/HTTP to
        /// this collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended). Off
        /// unless given.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// The `service.name` of exported traces.
        #[arg(long, default_value = "flexrun", requires = "otlp_endpoint")]
        otlp_service_name: String,
    },
    /// Compact a store file offline (no server may have it open) and print its size before and
    /// after as one JSON line.
    Compact {
        /// The store file, or a directory holding `flexrun.redb`.
        #[arg(long, default_value = "flexrun.redb")]
        data: PathBuf,
    },
    /// Check a run's event stream (a saved JSONL or SSE file, `-` for stdin, or a live
    /// `--url`) against the event contract; exit 0 when it conforms, 1 on violations, 2 when
    /// it cannot be read, 3 when a followed stream times out before `complete`.
    Verify(verify::VerifyArgs),
    /// Measure SSE fan-out from outside: many clients on one run of a server process started
    /// for the purpose; prints delivery latency, server CPU per frame and RSS as JSON.
    BenchSse(bench_sse::SseArgs),
    /// Follow a run on a server: one line per event with nodes done and the state; exits 0
    /// when the run completed, 1 when it failed or was cancelled.
    Watch(remote::WatchArgs),
    /// List a server's runs.
    Runs(remote::RunsArgs),
    /// Answer a HITL request of a run on a server.
    Answer(remote::AnswerArgs),
    /// Print documentation generated from the code.
    Docs {
        /// states: the state table and diagram; conformance: the rules `verify` checks;
        /// coverage: which rows of the state table the runs recorded in `--from` took (see
        /// `FLEXRUN_TRANSITION_COVERAGE`).
        what: DocsArg,
        /// For `coverage`: the directory the runs recorded their rows in.
        #[arg(long, required_if_eq("what", "coverage"))]
        from: Option<PathBuf>,
        /// For `coverage`: exit 1 when a row was never taken.
        #[arg(long)]
        require_all: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SweepArg {
    Nodes,
    Runs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Linear,
    Replan,
    Fanout,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LevelArg {
    Memory,
    D1,
    D2,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsumerArg {
    Park,
    Poll,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VariantArg {
    Interrupt,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlannerArg {
    /// The deterministic, offline catalog planner.
    Catalog,
    /// An OpenAI-compatible Chat Completions endpoint (needs --planner-base-url and --planner-model).
    Openai,
}

/// The OpenAI-compatible endpoint used by the `openai` planner and the `llm` executor.
#[derive(Debug, Clone, clap::Args)]
struct ModelArgs {
    /// Base URL including the API prefix, e.g. `https://api.openai.com/v1`. When given, the
    /// `openai` planner is available to runs (envelope `planner: "openai"`) and capabilities
    /// with `executor.type = "llm"` run against it.
    #[arg(long)]
    planner_base_url: Option<String>,
    /// Model name, e.g. `gpt-4o-mini`.
    #[arg(long)]
    planner_model: Option<String>,
    /// Environment variable holding the API key (never logged).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    planner_api_key_env: String,
    /// Per-attempt timeout of a model call, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    planner_timeout_ms: u64,
    /// Attempts per model call (429/5xx/timeouts are retried with backoff).
    #[arg(long, default_value_t = 3)]
    planner_max_attempts: u32,
    /// How requests ask for the reply's shape: `json_schema` (enforced schema), `json_object`
    /// (JSON mode) or `none` (no `response_format`; the schema goes into the prompt). A 400
    /// to a mode falls back to the next one for the rest of the process.
    #[arg(long, default_value = "json_schema", value_parser = response_format_parser())]
    planner_response_format: ResponseFormat,
    /// A JSON file of token prices for runs' `cost` budgets: model name → `promptPer1k` and
    /// `completionPer1k` (cost units per 1000 tokens; `"*"` for any other model).
    #[arg(long, value_name = "FILE")]
    pricing: Option<PathBuf>,
}

fn response_format_parser() -> impl TypedValueParser<Value = ResponseFormat> {
    clap::builder::PossibleValuesParser::new(ResponseFormat::ALL.map(ResponseFormat::as_str))
        .try_map(|s| s.parse::<ResponseFormat>())
}

impl ModelArgs {
    fn pricing(&self) -> anyhow::Result<flexrun::policy::Pricing> {
        use anyhow::Context as _;
        let Some(path) = &self.pricing else {
            return Ok(flexrun::policy::Pricing::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --pricing {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "--pricing {}: expected {{\"model\": {{\"promptPer1k\": n, \"completionPer1k\": n}}}}",
                path.display()
            )
        })
    }

    fn config(&self) -> anyhow::Result<Option<OpenAiConfig>> {
        let (Some(url), Some(model)) = (&self.planner_base_url, &self.planner_model) else {
            if self.planner_base_url.is_some() || self.planner_model.is_some() {
                bail!("--planner-base-url and --planner-model go together");
            }
            return Ok(None);
        };
        let mut config = OpenAiConfig::new(url.clone(), model.clone());
        config.api_key_env = self.planner_api_key_env.clone();
        config.timeout = Duration::from_millis(self.planner_timeout_ms.max(1));
        config.max_attempts = self.planner_max_attempts.max(1);
        config.response_format = self.planner_response_format;
        Ok(Some(config))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DocsArg {
    States,
    Conformance,
    Coverage,
}

/// Prints the transition coverage collected in `dir`; with `require_all`, fails naming the
/// rows never taken.
fn coverage(dir: PathBuf, require_all: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let coverage = flexrun::engine::coverage::Coverage::read(&dir)
        .with_context(|| format!("cannot read transition coverage from {}", dir.display()))?;
    print!("{}", coverage.markdown());
    let missed = coverage.missed();
    if require_all && !missed.is_empty() {
        anyhow::bail!("rows never taken: {}", missed.join(", "));
    }
    Ok(())
}

/// Runs the command. A failure is one line on stderr, `error: ` and the error's causes joined
/// by `: `, and exit code 1; with `--verbose` or `FLEXRUN_LOG` set, the whole chain (and a
/// backtrace when one was captured).
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = std::env::var_os("FLEXRUN_LOG").is_some();
    let default_level = if cli.verbose { "info" } else { "warn" };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEXRUN_LOG")
                .unwrap_or_else(|_| default_level.into()),
        );
    let (provider, export) = match &cli.command {
        Cmd::Serve {
            otlp_endpoint: Some(endpoint),
            otlp_service_name,
            ..
        } => match otel::layer(endpoint, otlp_service_name) {
            Ok((provider, layer)) => (Some(provider), Some(layer)),
            Err(e) => {
                eprintln!("error: --otlp-endpoint: {}", one_line(&e));
                return ExitCode::FAILURE;
            }
        },
        _ => (None, None),
    };
    tracing_subscriber::registry().with(log).with(export).init();
    let outcome = command(cli.command).await;
    if let Some(provider) = provider {
        otel::shutdown(provider).await;
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli.verbose || logging => {
            eprintln!("error: {e:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: ` on one line; a cause whose text its parent's
/// message already ends with (errors that print their source) is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}

/// The command-line spelling of a value-enum argument.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// `flexrun bench --guard FILE [--update-thresholds]`.
async fn bench_guard(path: &Path, update: bool) -> anyhow::Result<()> {
    alloc_count::enable();
    let thresholds = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("invalid thresholds file {}", path.display()))?,
        Err(e) if update && e.kind() == std::io::ErrorKind::NotFound => {
            bench::guard::default_thresholds()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read thresholds {}", path.display()));
        }
    };
    let measured = bench::guard::measure(&thresholds, alloc_totals)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if update {
        let next = bench::guard::updated(&thresholds, &measured);
        let text = serde_json::to_string_pretty(&next)? + "\n";
        std::fs::write(path, text)
            .with_context(|| format!("cannot write thresholds {}", path.display()))?;
        println!("{}", serde_json::to_string_pretty(&next)?);
        return Ok(());
    }
    let report = bench::guard::check(&thresholds, &measured);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok {
        bail!(
            "per-step work regressed past {}: {}",
            path.display(),
            report.regressions.join(", ")
        );
    }
    Ok(())
}

async fn command(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Run {
            envelope,
            data,
            answer,
            format,
        } => run(envelope, data, answer, format).await,
        Cmd::Bench {
            store,
            instances,
            lease,
            scenario,
            nodes,
            runs,
            durability,
            variant,
            warmup,
            dir,
            consumer,
            count_allocs,
            guard,
            update_thresholds,
            sweep,
            points,
        } => {
            if let Some(path) = guard {
                return bench_guard(&path, update_thresholds).await;
            }
            if let Some(sweep) = sweep {
                let sweep = match sweep {
                    SweepArg::Nodes => bench::sweep::Sweep::Nodes,
                    SweepArg::Runs => bench::sweep::Sweep::Runs,
                };
                let points = if points.is_empty() {
                    sweep.default_points()
                } else {
                    points
                };
                let scenario = match (sweep, scenario) {
                    (bench::sweep::Sweep::Runs, _) => ScenarioArg::Fanout,
                    (bench::sweep::Sweep::Nodes, s) => s,
                };
                let mut args = vec![
                    "--scenario".to_owned(),
                    value_name(scenario),
                    "--durability".to_owned(),
                    value_name(durability),
                    "--variant".to_owned(),
                    value_name(variant),
                    "--consumer".to_owned(),
                    value_name(consumer),
                    "--warmup".to_owned(),
                    warmup.to_string(),
                ];
                args.extend(match sweep {
                    bench::sweep::Sweep::Nodes => ["--runs".to_owned(), runs.to_string()],
                    bench::sweep::Sweep::Runs => ["--nodes".to_owned(), nodes.to_string()],
                });
                if count_allocs {
                    args.push("--count-allocs".to_owned());
                }
                if let Some(url) = &store {
                    args.extend([
                        "--store".to_owned(),
                        url.clone(),
                        "--instances".to_owned(),
                        instances.to_string(),
                        "--lease".to_owned(),
                        humantime::format_duration(lease).to_string(),
                    ]);
                }
                let exe = std::env::current_exe().context("cannot find the flexrun binary")?;
                let report = bench::sweep::run(&exe, sweep, &points, &args)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            if count_allocs {
                alloc_count::enable();
            }
            let opts = BenchOptions {
                scenario: match scenario {
                    ScenarioArg::Linear => Scenario::Linear,
                    ScenarioArg::Replan => Scenario::Replan,
                    ScenarioArg::Fanout => Scenario::Fanout,
                },
                nodes,
                runs,
                level: match durability {
                    LevelArg::Memory => Level::Memory,
                    LevelArg::D1 => Level::D1,
                    LevelArg::D2 => Level::D2,
                },
                variant: match variant {
                    VariantArg::Interrupt => Variant::Interrupt,
                    VariantArg::Route => Variant::Route,
                },
                warmup: warmup != 0,
                dir,
                consumer: match consumer {
                    ConsumerArg::Park => Consumer::Park,
                    ConsumerArg::Poll => Consumer::Poll,
                },
                alloc_counter: count_allocs.then_some(alloc_totals as bench::AllocCounter),
                postgres: store.map(|url| bench::PostgresBench {
                    url,
                    instances,
                    lease,
                }),
            };
            let report = bench::run(&opts)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Cmd::Serve {
            addr,
            store,
            planner,
            auth_token_env,
            body_limit,
            cors_origins,
            heartbeat_secs,
            retain_terminal_runs,
            webhook_secret_env,
            model,
            otlp_endpoint: _,
            otlp_service_name: _,
        } => {
            let cors_origins = cors_origins
                .iter()
                .map(|o| {
                    api::check_cors_origin(o).map_err(|e| anyhow::anyhow!("--cors-origin {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let auth_token = match auth_token_env {
                None => None,
                Some(var) => {
                    let token = std::env::var(&var)
                        .with_context(|| format!("reading the auth token from ${var}"))?;
                    if token.trim().is_empty() {
                        bail!("${var} is empty; refusing to serve with an empty token");
                    }
                    Some(token)
                }
            };
            let config = ApiConfig {
                auth_token,
                heartbeat: Duration::from_secs(heartbeat_secs.max(1)),
                body_limit,
                cors_origins,
                ..ApiConfig::default()
            };
            let webhook_secrets = match webhook_secret_env {
                None => Vec::new(),
                Some(var) => {
                    let text = std::env::var(&var).with_context(|| {
                        format!("reading the webhook signing secret from ${var}")
                    })?;
                    WebhookSecret::parse_list(&text)
                        .with_context(|| format!("the webhook signing secret in ${var}"))?
                }
            };
            serve::serve(
                addr,
                store,
                planner,
                model,
                webhook_secrets,
                config,
                retain_terminal_runs,
            )
            .await
        }
        Cmd::Compact { data } => compact(data),
        Cmd::Docs {
            what: DocsArg::States,
            ..
        } => {
            print!("{}", flexrun::fsm::table::docs_section());
            Ok(())
        }
        Cmd::Docs {
            what: DocsArg::Coverage,
            from,
            require_all,
        } => coverage(from.unwrap_or_default(), require_all),
        Cmd::Docs {
            what: DocsArg::Conformance,
            ..
        } => {
            print!("{}", flexrun::conformance::rules_markdown());
            Ok(())
        }
        Cmd::BenchSse(args) => bench_sse::run(args).await,
        Cmd::Watch(args) => {
            let code = remote::watch(args).await?;
            std::io::stdout().flush()?;
            std::process::exit(i32::from(code));
        }
        Cmd::Runs(args) => remote::runs(args).await,
        Cmd::Answer(args) => remote::answer(args).await,
        Cmd::Verify(args) => {
            let code = verify::run(args).await;
            std::io::stdout().flush()?;
            std::process::exit(code.into())
        }
    }
}

async fn run(path: PathBuf, data: DataArg, answer: Answer, format: Format) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let envelope: RunEnvelope =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let data = data.store_path()?;
    let store = RedbStore::open(&data, Durability::Fsync)
        .with_context(|| format!("opening {}", data.display()))?;
    let engine = Engine::open(flexrun::demo::config(Arc::new(store)))
        .await
        .with_context(|| format!("opening the engine over {}", data.display()))?;
    let started = Instant::now();
    let run_id = engine
        .submit(envelope)
        .await
        .with_context(|| format!("submitting {}", path.display()))?;
    eprintln!("run {run_id} (store {})", data.display());
    // The gap-free follower (store replay, then live): a slow terminal never loses events.
    let mut events = engine.events(run_id, 0)?;
    let outcome = loop {
        let Some(ev) = events.next().await else {
            bail!("the engine stopped");
        };
        match format {
            Format::Pretty => println!(
                "{:>4}  {:<17} {}",
                ev.seq,
                ev.kind().as_str(),
                flexrun::api::summary(&ev)
            ),
            Format::Sse => print!("{}", flexrun::api::sse_frame(&ev)),
            Format::Jsonl => println!("{}", serde_json::to_string(&*ev)?),
        }
        match &ev.body {
            EventBody::HitlRequest {
                request_id,
                question,
                ..
            } => {
                let decision = match answer {
                    Answer::Approve => HitlDecision::Approve,
                    Answer::Reject => HitlDecision::Reject,
                    Answer::Ask => ask(question)?,
                };
                engine
                    .answer_hitl(run_id, request_id, HitlAnswer::new(decision))
                    .await?;
            }
            EventBody::Complete { status, .. } => break *status,
            _ => {}
        }
    };
    engine.shutdown().await;
    eprintln!(
        "{outcome:?} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    if outcome != RunOutcome::Completed {
        std::process::exit(1);
    }
    Ok(())
}

/// Compacts the store file at `data` (or `data/flexrun.redb`) and prints the sizes.
fn compact(data: PathBuf) -> anyhow::Result<()> {
    let path = if data.is_dir() {
        data.join("flexrun.redb")
    } else {
        data
    };
    if !path.is_file() {
        bail!("{}: no store file to compact", path.display());
    }
    let size = |path: &PathBuf| -> anyhow::Result<u64> {
        Ok(std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len())
    };
    let before = size(&path)?;
    let started = Instant::now();
    let store = RedbStore::open(&path, Durability::Fsync)
        .with_context(|| format!("opening {} (is a server using it?)", path.display()))?;
    let compacted = store.compact()?;
    drop(store);
    let millis = started.elapsed().as_millis();
    let after = size(&path)?;
    println!(
        "{}",
        serde_json::json!({
            "path": path.display().to_string(),
            "beforeBytes": before,
            "afterBytes": after,
            "compacted": compacted,
            "millis": millis,
        })
    );
    Ok(())
}

fn ask(question: &str) -> anyhow::Result<HitlDecision> {
    let stdin = std::io::stdin();
    loop {
        eprint!("{question} [approve/reject] ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("no answer on standard input (use --answer approve|reject)");
        }
        match line.trim() {
            "a" | "approve" | "y" | "yes" => return Ok(HitlDecision::Approve),
            "r" | "reject" | "n" | "no" => return Ok(HitlDecision::Reject),
            _ => eprintln!("please answer approve or reject"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_without_repeated_causes() {
        let inner = std::io::Error::other("disk\nfull");
        let store = anyhow::Error::new(inner).context("storage engine error: disk\nfull");
        let error = store.context("opening /x/flexrun.redb");
        assert_eq!(
            one_line(&error),
            "opening /x/flexrun.redb: storage engine error: disk full"
        );
    }

    #[test]
    fn data_names_a_directory_or_a_store_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(store_path(root).unwrap(), root.join(STORE_FILE));
        let fresh = root.join("new/nested");
        assert_eq!(store_path(&fresh).unwrap(), fresh.join(STORE_FILE));
        assert!(fresh.is_dir(), "a missing directory is created");
        let named = root.join("elsewhere/runs.redb");
        assert_eq!(store_path(&named).unwrap(), named);
        assert!(named.parent().unwrap().is_dir() && !named.exists());
        let plain = root.join("store-without-extension");
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(store_path(&plain).unwrap(), plain);
        let looks_like_a_file = root.join("dir.redb");
        std::fs::create_dir(&looks_like_a_file).unwrap();
        assert_eq!(
            store_path(&looks_like_a_file).unwrap(),
            looks_like_a_file.join(STORE_FILE)
        );
        let under_a_file = plain.join("sub");
        let err = store_path(&under_a_file).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("looking up {}: ", under_a_file.display())),
            "{err:#}"
        );
    }
}
