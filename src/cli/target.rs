//! Which gateway a command talks to (docs/cli.md, "Which gateway"): `--admin ADDR`, else the
//! routes file of `--config FILE` (its `admin.listen`, and the token its `admin.token_env`
//! names), else `STRANGLER_ADMIN`, else `http://127.0.0.1:9901` for reading only: an
//! operation is never sent to a gateway nobody named. Every command says which gateway
//! answered, with the config it runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::config::Config;
use crate::control::client::AdminClient;

/// The environment variable naming the gateway when neither `--admin` nor `--config` does.
pub const ADMIN_ENV: &str = "STRANGLER_ADMIN";
/// Where a command reads from when nothing names a gateway.
const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";

/// Where a running gateway's admin API is, and its token.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The admin listener's base URL (`http://` is assumed when no scheme is given).
    /// Default: the --config file's admin.listen, else $STRANGLER_ADMIN, else
    /// http://127.0.0.1:9901 (to read only).
    #[arg(long, value_parser = super::base_url)]
    pub admin: Option<String>,
    /// The gateway's routes file: its admin.listen is asked, with the token its
    /// admin.token_env names.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The environment variable holding the admin token (sent as a bearer token when it
    /// holds one; default: the --config file's admin.token_env, else STRANGLER_ADMIN_TOKEN).
    #[arg(long)]
    pub token_env: Option<String>,
}

/// A gateway to talk to, and how it was named.
pub struct Target {
    pub client: AdminClient,
    /// How it was chosen, in words (`--admin`, `--config routes.yaml`, ...).
    how: String,
    /// The config hash of `--config`'s file, to compare with the gateway's.
    expected: Option<String>,
}

impl AdminArgs {
    /// The gateway these arguments name; `changes`: the command changes state (then a
    /// gateway must be named, not defaulted).
    pub fn target(&self, changes: bool) -> anyhow::Result<Target> {
        let config = match &self.config {
            Some(file) => Some(
                Config::load_for_check(file)
                    .map_err(|e| anyhow::anyhow!("--config {}:\n{e}", file.display()))?,
            ),
            None => None,
        };
        let env = std::env::var(ADMIN_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty());
        let (base, how) = match (&self.admin, &config, env) {
            (Some(a), _, _) => (a.clone(), "--admin".to_string()),
            (None, Some(c), _) => (
                format!("http://{}", reachable(c.admin.listen)),
                format!("admin.listen of {}", c.file.display()),
            ),
            (None, None, Some(v)) => (
                super::base_url(&v).map_err(|e| anyhow::anyhow!("{ADMIN_ENV}={v}: {e}"))?,
                ADMIN_ENV.to_string(),
            ),
            (None, None, None) if changes => anyhow::bail!(
                "which gateway? this changes state: name it with --config FILE (its routes file), --admin ADDR or {ADMIN_ENV}"
            ),
            (None, None, None) => (
                DEFAULT_ADMIN.to_string(),
                format!("the default (no --admin, --config or {ADMIN_ENV})"),
            ),
        };
        let token_env = self
            .token_env
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.admin.token_env.clone()))
            .unwrap_or_else(|| "STRANGLER_ADMIN_TOKEN".to_string());
        let token = std::env::var(&token_env)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(Target {
            client: AdminClient::new(&base)?.with_token(token),
            how,
            expected: config.map(|c| c.hash),
        })
    }
}

impl Target {
    /// Which gateway answered, in one line (after a call): its address, how it was named,
    /// and the config it runs, with a warning when `--config`'s file is another.
    pub fn answered(&self) -> String {
        let hash = self.client.config_hash().unwrap_or_else(|| "?".into());
        let mut line = format!(
            "gateway {} ({}) answered, config {hash}",
            self.client.base(),
            self.how
        );
        if let Some(expected) = &self.expected
            && *expected != hash
        {
            line.push_str(&format!(
                "; note: the --config file is config {expected}: the gateway has not loaded it yet, or it is another gateway's"
            ));
        }
        line
    }
}

/// An address a client can reach a listener on: a wildcard listener (`0.0.0.0`, `::`) is
/// asked on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}
