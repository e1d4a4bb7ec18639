//! A client of a running gateway's admin API, for the command line: plain HTTP (no proxy
//! from the environment), JSON answers, errors that say what to check, and which gateway
//! answered (every admin answer names the config it runs in `X-Strangler-Config`: a server
//! without it is not a strangler gateway, whatever JSON it answers).

use std::sync::Mutex;

use serde_json::Value;

use super::admin::CONFIG_HEADER;

/// The admin API of one gateway.
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// The config hash the gateway named in its last answer.
    config: Mutex<Option<String>>,
}

impl AdminClient {
    /// The admin API at `base` (`http://127.0.0.1:9901`).
    pub fn new(base: &str) -> anyhow::Result<AdminClient> {
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().no_proxy().build()?,
            token: None,
            config: Mutex::new(None),
        })
    }

    /// Sends `token` as a bearer token with each call.
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The hash of the config the gateway said it runs, in its last answer.
    pub fn config_hash(&self) -> Option<String> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `POST path` with no body; the JSON answer of a 2xx, else an error with the API's
    /// message.
    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.answer(path, req).await
    }

    /// `GET path_and_query`; the JSON answer of a 2xx, else an error with the API's message.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let req = self.http.get(format!("{}{path_and_query}", self.base));
        self.answer(path_and_query, req).await
    }

    async fn answer(&self, path: &str, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {} (is the gateway running, and is this its admin.listen?)",
                self.base,
                causes(&e)
            )
        })?;
        let status = resp.status();
        let Some(config) = resp
            .headers()
            .get(CONFIG_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            anyhow::bail!(
                "{} answered {status}, but not as a strangler gateway (no {CONFIG_HEADER} header): is this the gateway's admin.listen?",
                self.base
            );
        };
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
        let body: Value = resp
            .json()
            .await
            .map_err(|e| anyhow::anyhow!("{url} did not answer JSON: {e}"))?;
        if !status.is_success() {
            anyhow::bail!(
                "{url}: {status}: {}",
                body["message"].as_str().unwrap_or("error")
            );
        }
        Ok(body)
    }
}

/// An error and its causes, innermost last: reqwest's own wording ("error sending request")
/// says little without the cause that follows it ("Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
