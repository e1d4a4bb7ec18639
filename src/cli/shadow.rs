//! `strangler shadow ROUTE`: a route's shadow copies as people read them, from a gateway's
//! `GET /admin/shadow/{route}`: results and kinds of difference over the window, both sides'
//! times, the fields that differ most with an example, what legacy's own answers taught as
//! noise, and (`--noise-yaml`) the `ignore_json` lines that would ignore that noise.

use serde_json::Value;

use super::target::AdminArgs;

pub async fn shadow(
    admin: AdminArgs,
    route: String,
    window: Option<String>,
    noise_yaml: bool,
    reset: bool,
    json: bool,
) -> anyhow::Result<()> {
    let t = admin.target(reset)?;
    if reset {
        t.client
            .post(&format!("/admin/shadow/{route}/reset"))
            .await?;
        super::say_who(&t, false);
        println!("{route}: the shadow comparison starts afresh");
        return Ok(());
    }
    let path = match &window {
        Some(w) => format!("/admin/shadow/{route}?window={w}"),
        None => format!("/admin/shadow/{route}"),
    };
    let v = t.client.get(&path).await?;
    if !v["results"].is_object() {
        anyhow::bail!(
            "{} answered something else than a shadow report: {v}",
            t.client.base()
        );
    }
    super::say_who(&t, json || noise_yaml);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if noise_yaml {
        print!("{}", noise_lines(&v));
    } else {
        print!("{}", describe(&v));
    }
    Ok(())
}

/// The fields learned as noise, as `ignore_json` lines to paste under the route's `shadow`.
fn noise_lines(v: &Value) -> String {
    let fields: Vec<&str> = v["noise_yaml"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if fields.is_empty() {
        return "# no field learned as noise yet (or all are ignored already)\n".into();
    }
    let mut out = String::from(
        "# paste under the route's `shadow:` (with the pointers it has already):\nignore_json:\n",
    );
    for f in fields {
        out.push_str(&format!("  - {}\n", serde_json::Value::from(f)));
    }
    out
}

/// The report as lines for people.
fn describe(v: &Value) -> String {
    let w = v;
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let ms = |x: &Value| x.as_f64().map_or("-".to_string(), |m| format!("{m:.1} ms"));
    let mut out = format!(
        "route {}  window {}s (covering {}s)\n",
        v["route"].as_str().unwrap_or("?"),
        v["window_seconds"],
        v["covered_seconds"]
    );
    out.push_str(&format!(
        "  compared {}  matched {}  match rate {}\n",
        n(&w["compared"]),
        n(&w["matched"]),
        w["match_rate"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
    ));
    let results: Vec<String> = w["results"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, c)| format!("{k} {c}"))
        .collect();
    out.push_str(&format!("  results: {}\n", results.join(", ")));
    let d = &w["differences"];
    out.push_str(&format!(
        "  copies with a difference: status {}, headers {}, body {}\n",
        n(&d["status"]),
        n(&d["headers"]),
        n(&d["body"])
    ));
    out.push_str(&format!(
        "  times for the same requests: legacy p50 {} p99 {}, new p50 {} p99 {}\n",
        ms(&w["legacy_p50_ms"]),
        ms(&w["legacy_p99_ms"]),
        ms(&w["new_p50_ms"]),
        ms(&w["new_p99_ms"])
    ));
    let fields = v["fields"].as_array().cloned().unwrap_or_default();
    if !fields.is_empty() {
        out.push_str("  fields that differ (since the start or the last reset):\n");
        for f in fields.iter().take(10) {
            let e = &f["example"];
            let mut marks = Vec::new();
            if f["ignored"] == true {
                marks.push("ignored now");
            }
            if f["noise"] == true {
                marks.push("noise");
            }
            out.push_str(&format!(
                "    {:<30} {:>6}  e.g. {} {}: legacy {} new {}{}\n",
                f["field"].as_str().unwrap_or("?"),
                n(&f["mismatches"]),
                e["path"].as_str().unwrap_or(""),
                e["field"].as_str().unwrap_or(""),
                e["legacy"],
                e["new"],
                if marks.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", marks.join(", "))
                }
            ));
        }
    }
    let noise = v["noise"]["fields"].as_array().cloned().unwrap_or_default();
    let learned: Vec<&Value> = noise.iter().filter(|f| f["noise"] == true).collect();
    if !learned.is_empty() {
        out.push_str(&format!(
            "  learned as noise (legacy against itself, {} pairs): {}\n  (strangler shadow {} --noise-yaml prints them as ignore_json lines)\n",
            n(&v["noise"]["pairs"]),
            learned
                .iter()
                .map(|f| f["field"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", "),
            v["route"].as_str().unwrap_or("ROUTE")
        ));
    }
    out
}
