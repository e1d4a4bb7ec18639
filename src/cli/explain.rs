//! `strangler explain`: the decision the gateway would make for a request, narrated. The
//! route and side come from the gateway's own `decide`; this only prints them, with the
//! candidates `decide` examined on the way.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{Config, format_percent};
use crate::routing::{Miss, Reason, RequestView, Side, StickyKey, Tier, canonicalize};

/// Prints how a request would be routed.
pub fn explain(
    file: &Path,
    method: &str,
    target: &str,
    headers: &[String],
    peer: IpAddr,
) -> ExitCode {
    let cfg = match Config::load_for_check(file) {
        Ok(c) => c,
        Err(e) => {
            for d in &e.errors {
                println!("error: {d}");
            }
            return ExitCode::FAILURE;
        }
    };
    // As the gateway reads it: methods are case-sensitive (`get` is not `GET`).
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        eprintln!("error: {method:?} is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let mut map = HeaderMap::new();
    for h in headers {
        let Some((n, v)) = h.split_once(':') else {
            eprintln!("error: header {h:?} is not `name: value`");
            return ExitCode::FAILURE;
        };
        match (
            HeaderName::from_bytes(n.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => {
                eprintln!("error: header {h:?} is not a valid HTTP header");
                return ExitCode::FAILURE;
            }
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    println!("path:       {path}");
    let canonical = match canonicalize(path) {
        Ok(c) => c.into_owned(),
        Err(e) => {
            println!("rejected:   400 bad_request: {e}");
            return ExitCode::SUCCESS;
        }
    };
    println!("canonical:  {canonical}");
    let client = &cfg.client;
    let rules = crate::proxy::admit::Rules::of(&cfg);
    if let Some((refusal, why)) = crate::proxy::admit::method_refusal(&method, &rules.extra_methods)
    {
        let f = crate::proxy::Failure::Refused(refusal);
        println!("rejected:   {} {}: {why}", f.status().as_u16(), f.code());
        return ExitCode::SUCCESS;
    }
    let route_path = match crate::routing::routing_path(&canonical, client.path_parameters) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            println!("rejected:   400 bad_request: {e}");
            return ExitCode::SUCCESS;
        }
    };
    if route_path != canonical {
        println!(
            "routed as:  {route_path} (segments without their ;parameters, client.path_parameters: {})",
            client.path_parameters.as_str()
        );
    }
    let table = match cfg.compile() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut candidates: Vec<(usize, Tier, String, Option<Miss>)> = Vec::new();
    let decision = table.decide_traced(
        &RequestView {
            path: &route_path,
            method: &method,
            headers: &map,
            query,
            peer,
        },
        |c| candidates.push((c.rule, c.tier, c.pattern.to_string(), c.miss)),
    );
    for (rule, tier, pattern, miss) in &candidates {
        let name = &cfg.routes[*rule].name;
        match miss {
            None => println!("  {:<9} {name:?} ({tier} {pattern}): wins", "candidate"),
            Some(m) => println!(
                "  {:<9} {name:?} ({tier} {pattern}): skipped, {}",
                "candidate",
                table.router().describe_miss(*rule, *m)
            ),
        }
    }
    let Some(rule) = decision.route else {
        println!("route:      default (no rule takes the request)");
        println!(
            "side:       legacy ({}): the monolith serves what no route takes; upstream {}{}",
            Reason::Unmatched.as_str(),
            cfg.legacy.authority,
            cfg.legacy.base_path
        );
        return ExitCode::SUCCESS;
    };
    let rc = &cfg.routes[rule];
    let policy = &table.routes()[rule].policy;
    println!(
        "route:      {} ({} {}, {} condition(s))",
        rc.name,
        rc.matcher.path.kind(),
        rc.matcher.path.pattern(),
        rc.matcher.condition_count()
    );
    let pct = format_percent(policy.percent_bp);
    let why = match decision.reason {
        Reason::Override => format!(
            "the override header {} says so",
            table.override_header().map_or("", |h| h.as_str())
        ),
        Reason::Percent => format!("percent is {pct}: no draw"),
        Reason::Sticky => {
            let key = policy
                .sticky
                .as_ref()
                .expect("a sticky decision has a sticky key");
            let b = decision.bucket.unwrap_or(0);
            let key_text = match key {
                StickyKey::ClientIp => format!("{key} {}", table.client_ip(peer, &map)),
                k => k.to_string(),
            };
            format!(
                "sticky on {key_text}, cohort {:?}: bucket {b} {} {} (percent {pct})",
                policy.cohort,
                if b < policy.percent_bp { "<" } else { ">=" },
                policy.percent_bp
            )
        }
        Reason::Random => match &policy.sticky {
            Some(k) => format!(
                "the request carries no {k}: a random draw, new with probability {pct}% (this draw gave {})",
                decision.side
            ),
            None => format!(
                "no sticky key: a random draw, new with probability {pct}% (this draw gave {})",
                decision.side
            ),
        },
        // Decided by the gateway at run time (health, breaker), never by the rules alone.
        Reason::Unmatched | Reason::Unhealthy | Reason::BreakerOpen => String::new(),
    };
    let up = match decision.side {
        Side::Legacy => &cfg.legacy,
        Side::New => &cfg.services[rc.service],
    };
    println!(
        "side:       {} ({}): {why}; upstream {}{}",
        decision.side,
        decision.reason.as_str(),
        up.authority,
        up.base_path
    );
    ExitCode::SUCCESS
}
