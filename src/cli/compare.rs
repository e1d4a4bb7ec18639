//! `strangler compare`: the legacy-vs-new table, from one gateway's admin API or from
//! Prometheus across replicas, printed as aligned text or as the API's JSON.

use std::time::Duration;

use serde_json::{Value, json};

use super::target::AdminArgs;
use crate::config::CompareConfig;

/// The table from a gateway's admin API.
pub async fn from_admin(
    admin: AdminArgs,
    window: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let t = admin.target(false)?;
    let path = match &window {
        Some(w) => format!("/admin/compare?window={w}"),
        None => "/admin/compare".to_string(),
    };
    let body = t.client.get(&path).await?;
    if !body["routes"].is_array() || !body["window_seconds"].is_number() {
        anyhow::bail!(
            "{} answered something else than the compare table: {body}",
            t.client.base()
        );
    }
    super::say_who(&t, json);
    print(&body, json)
}

/// The table from Prometheus at `base`, across every replica it scrapes, judged with `cfg`.
pub async fn from_prometheus(
    base: String,
    window: Option<String>,
    json_out: bool,
    cfg: CompareConfig,
) -> anyhow::Result<()> {
    let window = match &window {
        Some(w) => humantime::parse_duration(w)
            .map_err(|_| anyhow::anyhow!("--window {w}: a duration like 5m"))?,
        None => Duration::from_secs(300),
    };
    let routes = crate::observe::prometheus::compare(&base, window, &cfg).await?;
    let shadows = crate::observe::prometheus::shadow_figures(&base, window).await?;
    let covered = crate::observe::prometheus::covered(&base, window).await?;
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["shadow"] = shadows
                .get(&r.route)
                .map_or(Value::Null, |f| serde_json::to_value(f).unwrap_or_default());
            v
        })
        .collect();
    let body = json!({
        "window_seconds": window.as_secs_f64(),
        "covered_seconds": (covered.as_secs_f64() * 10.0).round() / 10.0,
        "source": base,
        "routes": routes,
    });
    if json_out {
        eprintln!("Prometheus {base} answered");
    } else {
        println!("Prometheus {base} answered");
    }
    print(&body, json_out)
}

fn print(body: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(body)?);
    } else {
        print!("{}", table(body));
    }
    Ok(())
}

/// A route's shadow match rate, how many copies it is over, and the copies with each kind of
/// difference (`-`: no shadow).
fn shadow(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let compared = v["compared"].as_u64().unwrap_or(0);
    let rate = match v["match_rate"].as_f64() {
        Some(r) => format!("{:.2}% of {compared}", r * 100.0),
        None => format!("- of {compared}"),
    };
    let d = &v["differences"];
    let kinds: Vec<String> = ["status", "headers", "body"]
        .iter()
        .filter_map(|k| d[k].as_u64().filter(|n| *n > 0).map(|n| format!("{k} {n}")))
        .collect();
    if kinds.is_empty() {
        rate
    } else {
        format!("{rate} ({})", kinds.join(", "))
    }
}

/// The compare JSON as an aligned text table.
pub fn table(body: &Value) -> String {
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}ms"));
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
    };
    let mut rows = vec![[
        "route".to_string(),
        "percent".into(),
        "requests legacy/new".into(),
        "errors legacy/new".into(),
        "p99 legacy/new".into(),
        "shadow match".into(),
        "verdict".into(),
    ]];
    for r in body["routes"].as_array().into_iter().flatten() {
        let (l, n) = (&r["legacy"], &r["new"]);
        rows.push([
            r["route"].as_str().unwrap_or("?").to_string(),
            format!("{}%", r["percent"]),
            format!("{}/{}", l["requests"], n["requests"]),
            format!("{}/{}", pct(&l["error_rate"]), pct(&n["error_rate"])),
            format!("{}/{}", ms(&l["p99_ms"]), ms(&n["p99_ms"])),
            shadow(&r["shadow"]),
            r["verdict"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    // The time the figures cover, beside the window asked for: a gateway (or Prometheus)
    // up for less than the window covers less.
    let secs = |v: &Value| {
        v.as_f64().map_or("?".to_string(), |s| {
            if s < 10.0 {
                format!("{s:.1}s")
            } else {
                format!("{s:.0}s")
            }
        })
    };
    let mut out = format!(
        "window {}, covering {}\n",
        secs(&body["window_seconds"]),
        secs(&body["covered_seconds"])
    );
    super::push_table(&mut out, &rows);
    for r in body["routes"].as_array().into_iter().flatten() {
        if !matches!(r["verdict"].as_str(), Some("worse" | "undecided")) {
            continue;
        }
        for reason in r["reasons"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{}: {}\n",
                r["route"].as_str().unwrap_or("?"),
                reason.as_str().unwrap_or("")
            ));
        }
    }
    out
}
