//! `strangler compare`: the legacy-vs-new table, from one gateway's admin API or from
//! Prometheus across replicas, printed as aligned text or as the API's JSON.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::CompareConfig;
use crate::control::client::AdminClient;

/// The table from a gateway's admin API at `admin`.
pub async fn from_admin(admin: String, window: Option<String>, json: bool) -> anyhow::Result<()> {
    let path = match &window {
        Some(w) => format!("/admin/compare?window={w}"),
        None => "/admin/compare".to_string(),
    };
    let body = AdminClient::new(&admin)?.get(&path).await?;
    print(&body, json)
}

/// The table from Prometheus at `base`, across every replica it scrapes.
pub async fn from_prometheus(
    base: String,
    window: Option<String>,
    json_out: bool,
    min_requests: u64,
    max_p99_ratio: f64,
) -> anyhow::Result<()> {
    let window = match &window {
        Some(w) => humantime::parse_duration(w)
            .map_err(|_| anyhow::anyhow!("--window {w}: a duration like 5m"))?,
        None => Duration::from_secs(300),
    };
    let cfg = CompareConfig {
        min_requests,
        max_p99_ratio,
        ..Default::default()
    };
    let routes = crate::observe::prometheus::compare(&base, window, &cfg).await?;
    let shadows = crate::observe::prometheus::shadow_rates(&base, window).await?;
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["shadow"] = shadows
                .get(&r.route)
                .map_or(Value::Null, |(matched, compared)| {
                    json!({
                        "match_rate": (*compared > 0.0).then(|| matched / compared),
                        "compared": compared,
                    })
                });
            v
        })
        .collect();
    let body = json!({"window_seconds": window.as_secs_f64(), "source": base, "routes": routes});
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

/// A route's shadow match rate and how many copies it is over (`-`: no shadow).
fn shadow(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let compared = v["compared"].as_f64().unwrap_or(0.0);
    match v["match_rate"].as_f64() {
        Some(r) => format!("{:.2}% of {compared}", r * 100.0),
        None => format!("- of {compared}"),
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
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("window {}s\n", body["window_seconds"]);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in body["routes"].as_array().into_iter().flatten() {
        if r["verdict"] != "worse" {
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
