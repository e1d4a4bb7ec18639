//! The command line (docs/cli.md): argument parsing and what a person at a terminal reads.
//!
//! Each command calls into the library: `serve` runs [`control::serve`](crate::control::serve),
//! `explain` narrates the gateway's own decision, `compare` prints what the admin API or
//! Prometheus answers, `inventory` prints the carve-out map the library learns. No gateway logic lives here.

mod compare;
pub mod demo;
mod explain;
mod inventory;
mod shadow;
mod target;

use target::AdminArgs;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, format_percent};
use crate::control::serve::{ServeOptions, serve};
use crate::control::shift::shift_file;
use crate::observe::{LogFormat, LogLines};

#[derive(Parser, Debug)]
#[command(
    name = "strangler",
    version,
    about = "A strangler-fig gateway: legacy or new, per route, measured"
)]
pub struct Cli {
    /// Log format: JSON lines or text for people (default: JSON, but text for `demo`).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The routes file.
        #[arg(long, short, default_value = "routes/example.yaml")]
        config: PathBuf,
        /// Do not write an access-log line per request.
        #[arg(long)]
        no_access_log: bool,
        /// Do not watch the routes file; reload only on SIGHUP or POST /admin/reload (for
        /// file systems without change notifications).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a routes file: print every error and warning; exit 1 when invalid.
    Check { file: PathBuf },
    /// Show how a request would be routed: canonical path, winning route, side, and why.
    Explain {
        file: PathBuf,
        method: String,
        /// Path with optional query, as the client sends it.
        path: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The address the request comes from (the TCP peer), for routes sticky on the
        /// client IP. When it is a trusted proxy, `X-Forwarded-For` (-H) is read as the
        /// gateway reads it.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: IpAddr,
    },
    /// Change one route's percentage in the routes file, in place (a running gateway
    /// watching the file picks it up).
    Shift {
        /// The routes file to edit (the one a gateway runs with `--config`); edited in
        /// place, keeping its comments, layout, owner, group and mode.
        file: PathBuf,
        /// The `name` of the route whose `percent` changes.
        route: String,
        /// The new share of the route's requests that go to its service: a plain decimal from
        /// 0 to 100 with at most two decimals (as in the routes file).
        #[arg(allow_hyphen_values = true)]
        percent: String,
    },
    /// Legacy vs new per route, from a running gateway's admin API, as a table.
    Compare {
        #[command(flatten)]
        admin: AdminArgs,
        /// The window, like 5m (default: the gateway's `compare.window`).
        #[arg(long)]
        window: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Compute the table from Prometheus (all replicas together) instead of one
        /// gateway's admin API: the Prometheus server's base URL (`http://` is assumed when
        /// no scheme is given).
        #[arg(long, value_parser = base_url)]
        prometheus: Option<String>,
        /// With --prometheus: requests per side below which the verdict is insufficient_data.
        #[arg(long, default_value_t = 50)]
        min_requests: u64,
        /// With --prometheus: new p99 over legacy p99 above which the verdict is worse.
        #[arg(long, default_value_t = 1.5)]
        max_p99_ratio: f64,
        /// With --prometheus: the error test's margin of harm (a plan's guard weighs harm
        /// from 0; its max_error_rate_delta is the margin a step must rule out).
        #[arg(long, default_value_t = 0.0)]
        max_error_rate_delta: f64,
        /// With --prometheus: the sequential tests' confidence.
        #[arg(long, default_value_t = 0.99)]
        confidence: f64,
    },
    /// A route's shadow copies: results, kinds of difference, the fields that differ with
    /// an example, both sides' times, and what legacy's own answers taught as noise.
    Shadow {
        /// The route's name.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
        /// The window, like 5m (default: the gateway's `compare.window`).
        #[arg(long)]
        window: Option<String>,
        /// Print the fields learned as noise as the `ignore_json` lines to paste into the
        /// route's `shadow` settings.
        #[arg(long)]
        noise_yaml: bool,
        /// Start the route's comparison afresh (after a fix of the new service).
        #[arg(long)]
        reset: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The carve-out map: endpoint templates learned from access logs, with their traffic,
    /// errors, latency and route; near misses and suggested routes with --config.
    Inventory {
        #[command(flatten)]
        args: inventory::InventoryArgs,
    },
    /// Migration plans: their status, and a person's operations, on a running gateway; or
    /// one plan run on its own across replicas (`plan run`).
    Plan {
        #[command(subcommand)]
        action: PlanCommand,
    },
    /// Run the embedded demo: a monolith, two services, the gateway and steady traffic.
    Demo {
        /// Also print the access log.
        #[arg(long)]
        access_log: bool,
        /// Move the demo to other ports, all on 127.0.0.1: the gateway on PORT, the
        /// monolith on PORT+1, the orders and billing services on PORT+2 and PORT+3, the
        /// admin API on PORT+4 (default: the example file's 8080, 9001-9003 and 9901).
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=65531))]
        port_base: Option<u16>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Every plan's status (or one's): state, step, hold left, the guard's figures, history.
    Status {
        /// One plan's name (default: every plan).
        name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a plan: its first step's percentage is written at once.
    Start {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pause a running plan: its step stays in force, its hold stops counting.
    Pause {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Resume a paused plan: its step's percentage is written again, its guard counts afresh.
    Resume {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a plan for good; the route keeps the percentage in force.
    Abort {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run one plan in this process, judged on every replica's figures from Prometheus,
    /// writing the routes file the replicas watch. Starts the plan if it has not started;
    /// otherwise carries on from its saved progress.
    Run {
        /// The plan's name (its file name without .yaml).
        name: String,
        /// The routes file (with `plans:`) the replicas serve.
        #[arg(long, short)]
        config: PathBuf,
        /// The Prometheus server's base URL (`http://` is assumed when no scheme is given).
        #[arg(long, value_parser = base_url)]
        prometheus: String,
        /// Where the plan's progress is kept (default: .NAME.state.json beside the plan).
        #[arg(long)]
        state: Option<PathBuf>,
        /// A shell command run after each change of the routes file (to publish it where
        /// the replicas read it); it gets STRANGLER_CONFIG, STRANGLER_ROUTE and
        /// STRANGLER_PERCENT in its environment.
        #[arg(long)]
        after_change: Option<String>,
        /// How often the plan is looked at, like 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Serve the plan's status, operations and metrics on this address (the gateway's
        /// admin paths: /admin/plans, /metrics, /healthz).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

/// A server's base URL from the command line: `127.0.0.1:9901` is taken as
/// `http://127.0.0.1:9901`; anything but an http URL with a host is refused with what was
/// wrong.
fn base_url(given: &str) -> Result<String, String> {
    let given = given.trim();
    let full = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    let url = reqwest::Url::parse(&full)
        .map_err(|e| format!("not a URL ({e}); like http://127.0.0.1:9901"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{}:// is not spoken by this client (no TLS); use http://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host; like http://127.0.0.1:9901".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a base URL has no query or fragment; like http://127.0.0.1:9901".into());
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// Reads a command line as the binary does, without running it; `args` starts with the
/// program's name. For the tests, which hold the command lines of the README and of the
/// deployment manifests to the parser itself.
#[doc(hidden)]
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // `strangler help --help` (or `-h`): the help, as `strangler --help` prints it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.as_slice(), [h, flag] if h == "help" && (flag == "--help" || flag == "-h")) {
        use clap::CommandFactory as _;
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Shift {
            file,
            route,
            percent,
        } => shift(&file, &route, &percent),
        Command::Compare {
            admin,
            window,
            json,
            prometheus,
            min_requests,
            max_p99_ratio,
            max_error_rate_delta,
            confidence,
        } => match prometheus {
            Some(url) => run(compare::from_prometheus(
                url,
                window,
                json,
                crate::config::CompareConfig {
                    min_requests,
                    max_p99_ratio,
                    max_error_rate_delta,
                    confidence,
                    ..Default::default()
                },
            )),
            None => run(compare::from_admin(admin, window, json)),
        },
        Command::Shadow {
            route,
            admin,
            window,
            noise_yaml,
            reset,
            json,
        } => run(shadow::shadow(
            admin, route, window, noise_yaml, reset, json,
        )),
        Command::Explain {
            file,
            method,
            path,
            headers,
            client_ip,
        } => explain::explain(&file, &method, &path, &headers, client_ip),
        Command::Serve {
            config,
            no_access_log,
            no_watch,
        } => {
            let log_format = cli.log_format.unwrap_or(LogFormat::Json);
            init_tracing(log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("{} error(s): the gateway did not start", e.errors.len());
                    return ExitCode::FAILURE;
                }
            };
            for w in &config.warnings {
                tracing::warn!(warning = %w, "routes file");
            }
            // A thread per core serves the public listener, each on a runtime of its own;
            // the admin API, plans and health checks run on the main thread's.
            let public_threads = worker_threads();
            run_on(
                Runtime::Single,
                serve(
                    config,
                    ServeOptions {
                        log_format,
                        access_log: !no_access_log,
                        watch: !no_watch,
                        public_threads,
                    },
                ),
            )
        }
        Command::Inventory { args } => inventory::inventory(args),
        Command::Plan { action } => plan(action, cli.log_format),
        Command::Demo {
            access_log,
            port_base,
        } => {
            let log_format = cli.log_format.unwrap_or(LogFormat::Text);
            init_tracing(log_format);
            run(demo::run(log_format, access_log, port_base))
        }
    }
}

/// The threads the gateway serves requests on: `TOKIO_WORKER_THREADS` when set, else one
/// per core.
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The runtime a command runs on.
enum Runtime {
    /// One thread: no cross-thread handoffs at all.
    Single,
    /// One thread when `TOKIO_WORKER_THREADS=1`, else tokio's multi-thread scheduler.
    FromEnvironment,
}

/// Builds the runtime: one thread when `TOKIO_WORKER_THREADS=1` (no cross-thread handoffs at
/// all), else tokio's multi-thread scheduler.
fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_on(Runtime::FromEnvironment, fut)
}

fn run_on(
    runtime: Runtime,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let single = match runtime {
        Runtime::Single => true,
        Runtime::FromEnvironment => {
            std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1")
        }
    };
    let rt = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(fut);
    // What was logged before an error (the file's warnings, say) is written out too.
    crate::observe::stdout().flush(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    // The file watcher's own warnings are about its bookkeeping (a ConfigMap's symlink swap
    // removes a watched path, and it says so each time); the watch reports what matters
    // itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,notify=error,notify_debouncer_full=error")
    });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal, never into files or pipes.
        .with_ansi(std::io::stdout().is_terminal())
        // Through the process's one stdout writer, which nothing ever waits on.
        .with_writer(LogLines);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Appends `rows` as a table: each column as wide as its widest cell, two spaces apart.
pub(crate) fn push_table<R: AsRef<[String]>>(out: &mut String, rows: &[R]) {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

/// Prints which gateway answered: on stdout before text, on stderr beside JSON.
pub(crate) fn say_who(t: &target::Target, json: bool) {
    if json {
        eprintln!("{}", t.answered());
    } else {
        println!("{}", t.answered());
    }
}

fn plan(action: PlanCommand, log_format: Option<LogFormat>) -> ExitCode {
    use crate::control::plan::describe;
    match action {
        PlanCommand::Status { name, admin, json } => run(async move {
            let t = admin.target(false)?;
            let v = match &name {
                Some(n) => t.client.get(&format!("/admin/plans/{n}")).await?,
                None => t.client.get("/admin/plans").await?,
            };
            say_who(&t, json);
            let list = match &name {
                Some(_) if v["name"].is_string() => vec![v.clone()],
                None if v["plans"].is_array() => v["plans"].as_array().cloned().unwrap_or_default(),
                _ => anyhow::bail!(
                    "{} answered something else than a plan's status: {v}",
                    t.client.base()
                ),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if list.is_empty() {
                println!(
                    "{}",
                    match v["plans_dir"].as_str() {
                        Some(dir) => format!(
                            "no plans: the gateway's plans folder {dir} held no NAME.yaml when its config was loaded"
                        ),
                        None => "no plans: the gateway's routes file names no plans: folder".into(),
                    }
                );
            }
            for p in list {
                print!("{}", describe(&p));
            }
            Ok(())
        }),
        PlanCommand::Start { name, admin } => plan_op(admin, name, "start"),
        PlanCommand::Pause { name, admin } => plan_op(admin, name, "pause"),
        PlanCommand::Resume { name, admin } => plan_op(admin, name, "resume"),
        PlanCommand::Abort { name, admin } => plan_op(admin, name, "abort"),
        PlanCommand::Run {
            name,
            config,
            prometheus,
            state,
            after_change,
            interval,
            admin,
        } => {
            init_tracing(log_format.unwrap_or(LogFormat::Json));
            run(crate::control::serve::plan_run(
                crate::control::plan::runner::RunOptions {
                    name,
                    config,
                    prometheus,
                    state,
                    after_change,
                    interval,
                    admin,
                },
            ))
        }
    }
}

fn plan_op(admin: AdminArgs, name: String, op: &'static str) -> ExitCode {
    run(async move {
        let t = admin.target(true)?;
        let v = t.client.post(&format!("/admin/plans/{name}/{op}")).await?;
        say_who(&t, false);
        if !v["name"].is_string() {
            anyhow::bail!(
                "{} answered something else than a plan's status: {v}",
                t.client.base()
            );
        }
        print!("{}", crate::control::plan::describe(&v));
        Ok(())
    })
}

fn shift(file: &Path, route: &str, percent: &str) -> ExitCode {
    let bp = match crate::config::parse_percent(percent) {
        Ok(bp) => bp,
        Err(e) => {
            eprintln!("error: percent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match shift_file(file, route, bp) {
        Ok(s) if s.before == s.after => {
            println!(
                "{}: route {route} is already at {}%",
                file.display(),
                format_percent(bp)
            );
            ExitCode::SUCCESS
        }
        Ok(s) => {
            println!(
                "{}: route {route}: {}% -> {}%",
                file.display(),
                format_percent(s.before),
                format_percent(s.after)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `route R, steps 1% → 10% → 100%, on_fail rollback`.
fn plan_summary(p: &crate::config::plan::PlanConfig) -> String {
    let steps: Vec<String> = p
        .steps
        .iter()
        .map(|s| format!("{}%", crate::config::format_percent(s.percent_bp)))
        .collect();
    format!(
        "route {}, steps {}, on_fail {}",
        p.route,
        steps.join(" → "),
        p.on_fail.as_str()
    )
}

fn check(file: &Path) -> ExitCode {
    if std::fs::read_to_string(file).is_ok_and(|t| Config::is_plan_text(&t)) {
        return match Config::check_plan(file) {
            Ok(p) => {
                println!(
                    "{}: ok: a plan ({}); whether its route exists is checked with its routes file (strangler check ROUTES_FILE)",
                    file.display(),
                    plan_summary(&p)
                );
                ExitCode::SUCCESS
            }
            Err(e) => print_errors(file, &e),
        };
    }
    match Config::load_for_check(file) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            for p in &cfg.plans {
                println!("plan {}: ok ({})", p.file.display(), plan_summary(p));
            }
            println!(
                "{}: ok ({} routes, {} services, {} plans, config hash {})",
                file.display(),
                cfg.routes.len(),
                cfg.services.len(),
                cfg.plans.len(),
                cfg.hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => print_errors(file, &e),
    }
}

/// `check`'s report of an invalid file: every error, then the count.
fn print_errors(file: &Path, e: &crate::config::ConfigErrors) -> ExitCode {
    for d in &e.errors {
        println!("error: {d}");
    }
    println!("{}: {} error(s)", file.display(), e.errors.len());
    ExitCode::FAILURE
}
