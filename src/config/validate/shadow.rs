//! A route's `shadow` settings.

use http::Method;

use super::{Validator, join};
use crate::config::percent_to_bp;
use crate::config::shadow::{
    DEFAULT_MAX_BODY, DEFAULT_NOISE_THRESHOLD, NoiseConfig, Pointer, ShadowConfig,
};
use crate::config::yaml::{Node, Value};

impl Validator {
    pub(super) fn shadow(&mut self, n: &Node, path: &str) -> Option<ShadowConfig> {
        let f = self.fields(
            n,
            path,
            &[
                "percent",
                "methods",
                "max_body",
                "ignore_headers",
                "ignore_json",
                "noise",
            ],
        )?;
        let percent_bp = match f.get("percent") {
            None => Some(10_000),
            Some(p) => self.percent(p, &join(path, "percent")),
        };
        let methods = match f.get("methods") {
            None => Some(vec![Method::GET, Method::HEAD]),
            Some(m) => self.methods(m, &join(path, "methods")),
        };
        let max_body = match f.get("max_body") {
            None => Some(DEFAULT_MAX_BODY),
            Some(m) => self.size(m, &join(path, "max_body")),
        };
        let ignore_headers = match f.get("ignore_headers") {
            None => Some(Vec::new()),
            Some(h) => self.list(
                h,
                &join(path, "ignore_headers"),
                "header names",
                |v, item, p| v.header_name(item, p),
            ),
        };
        let ignore_json = match f.get("ignore_json") {
            None => Some(Vec::new()),
            Some(j) => self.list(
                j,
                &join(path, "ignore_json"),
                "JSON pointers like \"/generated_at\" or \"/items/*/etag\"",
                |v, item, p| {
                    let s = v.string(item, p, "a JSON pointer like \"/items/*/etag\"")?;
                    let parsed = Pointer::parse(s);
                    if parsed.is_none() {
                        v.wrong(
                            item,
                            p,
                            "a JSON pointer starting with / (\"/generated_at\", \"/items/*/etag\")",
                        );
                    }
                    parsed
                },
            ),
        };
        let noise = match f.get("noise") {
            None => Some(None),
            Some(n) => self.noise(n, &join(path, "noise")).map(Some),
        };
        Some(ShadowConfig {
            percent_bp: percent_bp?,
            methods: methods?,
            max_body: max_body?,
            ignore_headers: ignore_headers?,
            ignore_json: ignore_json?,
            noise: noise?,
        })
    }

    fn noise(&mut self, n: &Node, path: &str) -> Option<NoiseConfig> {
        let f = self.fields(n, path, &["sample", "threshold"])?;
        let sample = self.require(
            &f,
            path,
            "sample",
            "the share of copies sent twice to legacy, like 5%",
        );
        let sample_bp = sample.and_then(|s| {
            let p = join(path, "sample");
            let bp = match &s.value {
                Value::Str(t) => t
                    .strip_suffix('%')
                    .and_then(|x| x.trim().parse::<f64>().ok())
                    .and_then(percent_to_bp),
                Value::Int(i) if (0..=100).contains(i) => Some(*i as u32 * 100),
                Value::Float(x) => percent_to_bp(*x),
                _ => None,
            };
            match bp {
                Some(bp) if bp > 0 => Some(bp),
                _ => {
                    self.wrong(s, &p, "a share above 0 and up to 100%, like 5%");
                    None
                }
            }
        });
        let threshold = match f.get("threshold") {
            None => Some(DEFAULT_NOISE_THRESHOLD),
            Some(t) => match t.value {
                Value::Float(x) if x > 0.0 && x <= 1.0 => Some(x),
                Value::Int(1) => Some(1.0),
                _ => {
                    self.wrong(
                        t,
                        &join(path, "threshold"),
                        "a share above 0 and up to 1, like 0.1",
                    );
                    None
                }
            },
        };
        Some(NoiseConfig {
            sample_bp: sample_bp?,
            threshold: threshold?,
        })
    }

    /// A list whose items `item` reads; every bad item reported.
    pub(super) fn list<T>(
        &mut self,
        n: &Node,
        path: &str,
        what: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Seq(items) = &n.value else {
            self.wrong(n, path, &format!("a list of {what}"));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, it) in items.iter().enumerate() {
            match item(self, it, &format!("{path}[{i}]")) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
