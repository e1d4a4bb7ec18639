//! Active health checks (`health`): every instance asked its health path every `interval`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use http::{HeaderValue, Request, header};

use super::*;
use crate::config::resilience::HealthConfig;
use crate::proxy::pool::{self};
use crate::proxy::upload::RequestBody;

/// Checks every instance every `interval`.
pub(super) async fn check_every(state: Weak<ServiceState>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let health = s.health.clone().expect("only started with health checks");
        let list = s.instances.load_full();
        let name: Arc<str> = s.name.clone().into();
        drop(s);
        let mut checks = tokio::task::JoinSet::new();
        for i in list.iter() {
            let (i, health, name) = (i.clone(), health.clone(), name.clone());
            checks.spawn(async move { check(&name, &i, &health).await });
        }
        while checks.join_next().await.is_some() {}
        tokio::time::sleep(health.interval).await;
    }
}

/// One health check of an instance; updates its streaks and health.
async fn check(service: &str, instance: &Instance, health: &HealthConfig) {
    let mut req = Request::new(RequestBody::empty());
    let uri = if instance.dial.protocol.is_http2() {
        let scheme = if instance.dial.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", instance.dial.authority, health.path)
    } else {
        health.path.clone()
    };
    let Ok(uri) = uri.parse() else { return };
    *req.uri_mut() = uri;
    // Aimed as a request is, with the instance's own authority.
    let (mut head, body) = req.into_parts();
    instance.aim(&mut head, true);
    let mut req = Request::from_parts(head, body);
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("strangler-health-check"),
    );
    let outcome = tokio::time::timeout(
        health.timeout,
        pool::probe(&instance.dial, req, pool::Limit::of(health.timeout)),
    )
    .await;
    let passed = matches!(&outcome, Ok(Ok(status)) if status.is_success());
    if passed {
        instance.fails.store(0, Ordering::Relaxed);
        let passes = instance.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if !instance.healthy() && passes >= health.healthy_after {
            instance.healthy.store(true, Ordering::Relaxed);
            tracing::info!(service, instance = %instance.label, "instance healthy again");
        }
    } else {
        instance.passes.store(0, Ordering::Relaxed);
        let fails = instance.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if instance.healthy() && fails >= health.unhealthy_after {
            instance.healthy.store(false, Ordering::Relaxed);
            let why = match outcome {
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", health.timeout),
            };
            tracing::warn!(service, instance = %instance.label, why, "instance unhealthy: it gets no traffic");
        }
    }
}
