//! `strangler inventory` (docs/inventory.md, docs/cli.md): the carve-out map, from access
//! logs, printed as a table, JSON or CSV, with the routes file's view of it (which route
//! takes each template, near misses) and suggested routes.
//!
//! A source of maps (the log files; a gateway's admin API is another) feeds one printer,
//! [`render`], which only formats what the library computed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{Config, format_percent};
use crate::observe::inventory::{
    Inventory, Limits, LogCounts, Map, NearMiss, Progress, SortKey, Suggestion, TemplateView,
    decide_path, feed, near_misses_for, suggest,
};

/// What `strangler inventory` reads, and how it prints.
#[derive(clap::Args, Debug)]
pub struct InventoryArgs {
    /// Access logs to learn from: nginx/Apache combined (or common) format, the gateway's
    /// JSON access log, either gzip-compressed; `-` is standard input.
    #[arg(long = "from-log", value_name = "FILE", num_args = 1..)]
    pub from_log: Vec<PathBuf>,
    /// Running gateways to ask (their admin API's base URL), the maps they learned merged:
    /// the replicas of one deployment each learn their share. Without --from-log or
    /// --admin: the --config file's gateway, else $STRANGLER_ADMIN, else
    /// http://127.0.0.1:9901.
    #[arg(long, value_name = "ADDR", num_args = 1.., value_parser = super::base_url, conflicts_with = "from_log")]
    pub admin: Vec<String>,
    /// The environment variable holding the gateways' admin token (default: the --config
    /// file's admin.token_env, else STRANGLER_ADMIN_TOKEN).
    #[arg(long)]
    pub token_env: Option<String>,
    /// A routes file: which route would take each template, near misses, and suggestions
    /// that do not clash with its routes.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print JSON: the map, the progress, near misses (and suggestions).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the templates as CSV.
    #[arg(long, conflicts_with = "suggest")]
    pub csv: bool,
    /// Print routes (YAML) for the templates still on legacy, ranked by --sort.
    #[arg(long)]
    pub suggest: bool,
    /// What ranks the templates (and suggestions).
    #[arg(long, value_enum, default_value_t = SortKey::Requests)]
    pub sort: SortKey,
    /// Leave out templates with fewer requests.
    #[arg(long, default_value_t = 0)]
    pub min_requests: u64,
    /// Show at most this many templates (suggestions: default 10).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Templates the map holds; requests for any other count in `other`.
    #[arg(long, default_value_t = Limits::default().max_templates)]
    pub max_templates: usize,
}

/// How the map is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// The printer's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    pub suggest: bool,
    pub sort: SortKey,
    pub min_requests: u64,
    pub limit: Option<usize>,
}

/// Where a map came from, and what reading it found.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// For a log file.
    pub log: Option<LogCounts>,
}

/// The routes file the map is seen through.
pub struct Routes<'a> {
    pub file: &'a Path,
    pub cfg: &'a Config,
    pub table: crate::routing::RouteTable,
}

/// Runs the command.
pub fn inventory(args: InventoryArgs) -> ExitCode {
    let cfg = match &args.config {
        Some(file) => match Config::load_for_check(file) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: --config {}:\n{e}", file.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let routes = match (&args.config, &cfg) {
        (Some(file), Some(cfg)) => match cfg.compile() {
            Ok(table) => Some(Routes { file, cfg, table }),
            Err(e) => {
                eprintln!("error: --config {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let limits = Limits {
        max_templates: args.max_templates,
        ..Limits::default()
    };
    let read = if args.from_log.is_empty() {
        from_gateways(&args)
    } else {
        from_logs(&args.from_log, limits)
    };
    let (map, sources) = match read {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        format: if args.json {
            Format::Json
        } else if args.csv {
            Format::Csv
        } else {
            Format::Table
        },
        suggest: args.suggest,
        sort: args.sort,
        min_requests: args.min_requests,
        limit: args.limit,
    };
    print!("{}", render(&map, routes.as_ref(), &opts, &sources));
    ExitCode::SUCCESS
}

/// The maps of running gateways (`--admin`, or the one `--config` names), merged.
pub fn from_gateways(args: &InventoryArgs) -> anyhow::Result<(Map, Vec<Source>)> {
    let targets: Vec<super::target::AdminArgs> = if args.admin.is_empty() {
        vec![super::target::AdminArgs {
            admin: None,
            config: args.config.clone(),
            token_env: args.token_env.clone(),
        }]
    } else {
        args.admin
            .iter()
            .map(|a| super::target::AdminArgs {
                admin: Some(a.clone()),
                config: args.config.clone(),
                token_env: args.token_env.clone(),
            })
            .collect()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut map = Map::default();
    let mut sources = Vec::new();
    for a in targets {
        let t = a.target(false)?;
        let v = rt.block_on(t.client.get("/admin/inventory"))?;
        let not_a_map = |_| {
            anyhow::anyhow!(
                "{} answered something else than a carve-out map",
                t.client.base()
            )
        };
        let one = Map {
            templates: serde_json::from_value(v["templates"].clone()).map_err(not_a_map)?,
            other: serde_json::from_value(v["other"].clone()).map_err(not_a_map)?,
            totals: serde_json::from_value(v["totals"].clone()).map_err(not_a_map)?,
        };
        map.merge(&one);
        let sample = v["sample_percent"]
            .as_f64()
            .map_or_else(|| "?".into(), |p| format!("{p}"));
        sources.push(Source {
            name: format!("{} (sampling {sample}% of requests)", t.answered()),
            log: None,
        });
    }
    map.finish();
    Ok((map, sources))
}

/// The map of some log files, learned together.
pub fn from_logs(files: &[PathBuf], limits: Limits) -> anyhow::Result<(Map, Vec<Source>)> {
    let mut inv = Inventory::new(limits);
    let mut sources = Vec::new();
    for f in files {
        let counts = if f.as_os_str() == "-" {
            feed(std::io::stdin().lock(), &mut inv)
        } else {
            let file = std::fs::File::open(f)
                .map_err(|e| anyhow::anyhow!("--from-log {}: {e}", f.display()))?;
            feed(file, &mut inv)
        }
        .map_err(|e| anyhow::anyhow!("--from-log {}: {e}", f.display()))?;
        sources.push(Source {
            name: f.display().to_string(),
            log: Some(counts),
        });
    }
    Ok((inv.map(), sources))
}

/// The templates to show: at least `min_requests`, ranked by `sort`, the first `limit`.
fn shown<'a>(map: &'a Map, opts: &Options) -> Vec<&'a TemplateView> {
    let mut v: Vec<&TemplateView> = map
        .templates
        .iter()
        .filter(|t| t.requests >= opts.min_requests)
        .collect();
    v.sort_by(|a, b| opts.sort.cmp(a, b));
    if let Some(n) = opts.limit {
        v.truncate(n);
    }
    v
}

/// The route the routes file gives a template (on its first example), with its percent.
fn config_route(t: &TemplateView, r: &Routes<'_>) -> (String, Option<String>) {
    let Some(example) = t.examples.first() else {
        return ("-".into(), None);
    };
    let d = decide_path(&r.table, &t.method, example, r.cfg.client.path_parameters);
    match d.route {
        Some(i) => (
            r.cfg.routes[i].name.clone(),
            Some(format_percent(r.cfg.routes[i].percent_bp)),
        ),
        None if d.refused => ("default (refused)".into(), None),
        None => ("default".into(), None),
    }
}

/// The routes that took a template's requests, as recorded: `default`, or
/// `orders-read 90%, default 10%`.
fn recorded_routes(t: &TemplateView) -> String {
    match t.routes.as_slice() {
        [] => "-".into(),
        [one] => one.route.clone(),
        many => many
            .iter()
            .map(|r| {
                format!(
                    "{} {:.0}%",
                    r.route,
                    r.requests as f64 * 100.0 / t.requests.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}%", a as f64 * 100.0 / b as f64)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| {
        if x < 10.0 {
            format!("{x:.2}ms")
        } else {
            format!("{x:.0}ms")
        }
    })
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The map printed as `opts` says.
pub fn render(
    map: &Map,
    routes: Option<&Routes<'_>>,
    opts: &Options,
    sources: &[Source],
) -> String {
    match opts.format {
        Format::Json => render_json(map, routes, opts, sources),
        Format::Csv => render_csv(map, routes, opts),
        Format::Table if opts.suggest => render_suggestions(map, routes, opts, sources),
        Format::Table => render_table(map, routes, opts, sources),
    }
}

fn near(map: &Map, routes: Option<&Routes<'_>>) -> Vec<NearMiss> {
    routes.map_or_else(Vec::new, |r| near_misses_for(map, r.cfg, &r.table))
}

fn source_lines(sources: &[Source]) -> String {
    let mut out = String::new();
    for s in sources {
        let Some(c) = &s.log else {
            let _ = writeln!(out, "{}", s.name);
            continue;
        };
        let _ = writeln!(
            out,
            "{}{}: {} lines, {} requests, {} malformed, {} skipped",
            s.name,
            if c.gzip { " (gzip)" } else { "" },
            c.lines,
            c.requests,
            c.malformed,
            c.skipped
        );
        for m in &c.first_malformed {
            let _ = writeln!(out, "  line {}: {}: {:?}", m.line, m.why, m.text);
        }
        if c.malformed > c.first_malformed.len() as u64 {
            let _ = writeln!(
                out,
                "  and {} more malformed lines",
                c.malformed - c.first_malformed.len() as u64
            );
        }
    }
    out
}

fn render_table(
    map: &Map,
    routes: Option<&Routes<'_>>,
    opts: &Options,
    sources: &[Source],
) -> String {
    let mut out = source_lines(sources);
    let p = map.progress();
    let _ = writeln!(
        out,
        "progress: {} of {} requests served by new services",
        pct(p.new_requests, p.requests),
        p.requests
    );
    let _ = writeln!(
        out,
        "templates: {} ({} carved, {} partly carved, {} legacy-only); by traffic {} carved, {} partly, {} legacy-only",
        map.templates.len(),
        p.templates_carved,
        p.templates_partly,
        p.templates_legacy_only,
        pct(
            p.requests_carved,
            p.requests_carved + p.requests_partly + p.requests_legacy_only
        ),
        pct(
            p.requests_partly,
            p.requests_carved + p.requests_partly + p.requests_legacy_only
        ),
        pct(
            p.requests_legacy_only,
            p.requests_carved + p.requests_partly + p.requests_legacy_only
        ),
    );
    let span_s = map
        .totals
        .last_seen_ms
        .saturating_sub(map.totals.first_seen_ms) as f64
        / 1000.0;
    let rows_shown = shown(map, opts);
    let route_head = if routes.is_some() {
        "route (config)"
    } else {
        "route"
    };
    let mut rows = vec![[
        "method".to_string(),
        "template".into(),
        "requests".into(),
        "rate/s".into(),
        "errors".into(),
        "p50".into(),
        "p99".into(),
        "new".into(),
        route_head.into(),
        "last seen".into(),
    ]];
    for t in &rows_shown {
        let route = match routes {
            Some(r) => match config_route(t, r) {
                (name, Some(percent)) => format!("{name} {percent}%"),
                (name, None) => name,
            },
            None => recorded_routes(t),
        };
        rows.push([
            t.method.clone(),
            t.template.clone(),
            t.requests.to_string(),
            if span_s >= 1.0 {
                format!("{:.2}", t.requests as f64 / span_s)
            } else {
                "-".into()
            },
            pct(t.errors, t.requests),
            ms(t.p50_ms),
            ms(t.p99_ms),
            pct(t.new_requests, t.requests),
            route,
            when(t.last_seen_ms),
        ]);
    }
    super::push_table(&mut out, &rows);
    if rows_shown.len() < map.templates.len() {
        let _ = writeln!(
            out,
            "({} of {} templates shown: --limit, --min-requests)",
            rows_shown.len(),
            map.templates.len()
        );
    }
    let o = &map.other;
    if o.requests > 0 {
        let _ = writeln!(
            out,
            "other: {} requests in no template ({} over the cap of the map, {} unreadable paths or methods)",
            o.requests, o.over_cap, o.rejected
        );
    }
    if let Some(r) = routes {
        let misses = near(map, Some(r));
        if misses.is_empty() {
            let _ = writeln!(out, "near misses ({}): none", r.file.display());
        } else {
            let _ = writeln!(out, "near misses ({}):", r.file.display());
            for m in misses {
                let _ = writeln!(
                    out,
                    "  {} {} ({} requests, {}): {}",
                    m.method,
                    m.template,
                    m.requests,
                    m.kind.as_str(),
                    m.reason
                );
            }
        }
    }
    out
}

fn render_suggestions(
    map: &Map,
    routes: Option<&Routes<'_>>,
    opts: &Options,
    sources: &[Source],
) -> String {
    let limit = opts.limit.unwrap_or(10);
    let list = suggest(map, routes.map(|r| r.cfg), opts.sort, limit);
    let mut out = String::new();
    for line in source_lines(sources).lines() {
        let _ = writeln!(out, "# {line}");
    }
    let by = match opts.sort {
        SortKey::Requests => "requests",
        SortKey::Errors => "errors",
        SortKey::P99 => "p99",
    };
    let _ = writeln!(
        out,
        "# {} suggested routes for templates still on legacy, by {by}.",
        list.len()
    );
    match routes {
        Some(r) => {
            let _ = writeln!(
                out,
                "# Paste under `routes:` of {} and name each service (service: TODO).",
                r.file.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# Paste under `routes:` and name each service (service: TODO). No routes file\n# given (--config): overlaps with its routes were not checked."
            );
        }
    }
    for s in &list {
        out.push_str(&s.yaml);
    }
    out
}

/// A log source in the JSON answer.
#[derive(Serialize)]
struct SourceJson<'a> {
    name: &'a str,
    gzip: bool,
    bytes: u64,
    lines: u64,
    requests: u64,
    malformed: u64,
    skipped: u64,
    first_malformed: Vec<MalformedJson<'a>>,
}

#[derive(Serialize)]
struct MalformedJson<'a> {
    line: u64,
    why: &'a str,
    text: &'a str,
}

/// The route the routes file gives a template.
#[derive(Serialize)]
struct ConfigRoute<'a> {
    method: &'a str,
    template: &'a str,
    route: String,
    percent: Option<String>,
}

/// `--json`'s answer.
#[derive(Serialize)]
struct Report<'a> {
    sources: Vec<SourceJson<'a>>,
    progress: Progress,
    map: Map,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_routes: Option<Vec<ConfigRoute<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    near_misses: Option<Vec<NearMiss>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suggestions: Option<Vec<Suggestion>>,
}

fn render_json(
    map: &Map,
    routes: Option<&Routes<'_>>,
    opts: &Options,
    sources: &[Source],
) -> String {
    let mut shown_map = map.clone();
    let shown_list = shown(map, opts);
    shown_map.templates = shown_list.iter().map(|t| (*t).clone()).collect();
    let report = Report {
        sources: sources
            .iter()
            .map(|s| {
                let c = s.log.clone().unwrap_or_default();
                SourceJson {
                    name: &s.name,
                    gzip: c.gzip,
                    bytes: c.bytes,
                    lines: c.lines,
                    requests: c.requests,
                    malformed: c.malformed,
                    skipped: c.skipped,
                    first_malformed: s
                        .log
                        .iter()
                        .flat_map(|c| &c.first_malformed)
                        .map(|m| MalformedJson {
                            line: m.line,
                            why: m.why,
                            text: &m.text,
                        })
                        .collect(),
                }
            })
            .collect(),
        progress: map.progress(),
        routes_file: routes.map(|r| r.file.display().to_string()),
        config_routes: routes.map(|r| {
            shown_list
                .iter()
                .map(|t| {
                    let (route, percent) = config_route(t, r);
                    ConfigRoute {
                        method: &t.method,
                        template: &t.template,
                        route,
                        percent,
                    }
                })
                .collect()
        }),
        near_misses: routes.map(|r| near(map, Some(r))),
        suggestions: opts.suggest.then(|| {
            suggest(
                map,
                routes.map(|r| r.cfg),
                opts.sort,
                opts.limit.unwrap_or(10),
            )
        }),
        map: shown_map,
    };
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
    s.push('\n');
    s
}

/// A CSV field, quoted when it must be.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn render_csv(map: &Map, routes: Option<&Routes<'_>>, opts: &Options) -> String {
    let mut out = String::from(
        "method,template,requests,errors,p50_ms,p99_ms,new_requests,routes,config_route,first_seen,last_seen,examples\n",
    );
    let num = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for t in shown(map, opts) {
        let config = routes.map_or(String::new(), |r| config_route(t, r).0);
        let recorded: Vec<String> = t
            .routes
            .iter()
            .map(|r| format!("{}={}", r.route, r.requests))
            .collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            csv(&t.method),
            csv(&t.template),
            t.requests,
            t.errors,
            num(t.p50_ms),
            num(t.p99_ms),
            t.new_requests,
            csv(&recorded.join(" ")),
            csv(&config),
            when(t.first_seen_ms),
            when(t.last_seen_ms),
            csv(&t.examples.join(" ")),
        );
    }
    out
}
