//! The dashboard at the admin listener's `/`, driven by a real headless Chromium over the
//! DevTools protocol against gateways that served known traffic: the overview and a route's
//! page at 1400×1000 and on a phone (390×844), with screenshots checked for sideways
//! overflow and for each panel; windows from the gateway's retention; errors as messages;
//! a person's actions through real clicks and typing; a dead new service shown unhealthy.
//!
//! With `DASHBOARD_SCREENSHOTS=DIR`, the screenshots are also written to DIR.

use crate::support;

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

use support::*;

fn chromium() -> String {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!("no Chromium: apt-get install -y chromium (.ci/run installs it)");
}

// ---------- a headless Chromium, driven over the DevTools protocol ----------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: Socket,
    next: u64,
    /// Exceptions the page's scripts threw and nothing caught.
    exceptions: Vec<String>,
    /// The viewport in CSS pixels (one device pixel each).
    width: u32,
    height: u32,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let browser_url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("Chromium exited without a DevTools address");
        })
        .await
        .expect("Chromium printed its DevTools address");
        // Keep reading its messages, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_url
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("DevTools address {browser_url}"))
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        let page = loop {
            let list: Value = client()
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(url) = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "no page in {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(page.as_str())
            .await
            .unwrap();
        let mut b = Browser {
            _child: child,
            _profile: profile,
            ws,
            next: 0,
            exceptions: Vec::new(),
            width: 1400,
            height: 1000,
        };
        b.call("Runtime.enable", json!({})).await;
        b.call("Page.enable", json!({})).await;
        b.viewport(1400, 1000, false).await;
        b
    }

    /// Sends one command; its result. Events read meanwhile are kept when they matter.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let cmd = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the DevTools connection is open")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            if v["method"] == "Runtime.exceptionThrown" {
                self.exceptions
                    .push(v["params"]["exceptionDetails"].to_string());
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits (up to `secs`) for `expr` to be truthy; its value.
    async fn wait_for(&mut self, expr: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self.eval("document.body.innerText").await;
                panic!(
                    "never true: {expr}\nthe page says:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads `url` (or only its new `#` part) and waits for the page to show its data.
    async fn open(&mut self, url: &str) {
        let before = self.navigation().await;
        self.call("Page.navigate", json!({"url": url})).await;
        self.loaded_after(&before).await;
    }

    /// Which navigation the page shows (`data-nav`: its document and count).
    async fn navigation(&mut self) -> String {
        let v = self
            .eval("document.body ? document.body.dataset.nav || '' : ''")
            .await;
        v.as_str().unwrap_or("").to_string()
    }

    /// Waits for a navigation after `before` to have shown the API's answers.
    async fn loaded_after(&mut self, before: &str) {
        self.wait_for(
            &format!(
                "document.body && document.body.dataset.nav !== {} && document.body.dataset.loaded === '1'",
                json!(before)
            ),
            15,
        )
        .await;
    }

    /// The viewport: `mobile` applies the page's `<meta name=viewport>` as a phone does.
    async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        self.width = width;
        self.height = height;
        self.wait_for(
            &format!("document.documentElement.clientWidth === {width}"),
            5,
        )
        .await;
    }

    /// A PNG of the viewport, or of the whole page's height (`full`).
    async fn screenshot(&mut self, full: bool) -> Vec<u8> {
        let params = if full {
            let h = self
                .eval("Math.ceil(document.documentElement.scrollHeight)")
                .await;
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": self.width, "height": h, "scale": 1}})
        } else {
            json!({"format": "png"})
        };
        let shot = self.call("Page.captureScreenshot", params).await;
        base64(shot["data"].as_str().unwrap())
    }

    /// A real click (mouse pressed and released) at the middle of the element.
    async fn click(&mut self, selector: &str) {
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return null;
                   e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
                   return [r.x + r.width / 2, r.y + r.height / 2, e.disabled === true]; }})()",
                s = json!(selector)
            ))
            .await;
        let at = at
            .as_array()
            .unwrap_or_else(|| panic!("nothing to click at {selector}"));
        assert_eq!(at[2], false, "{selector} is disabled");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": at[0], "y": at[1], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks into a field, selects what it holds (Ctrl+A) and types `text` over it.
    async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "modifiers": 2, "key": "a", "code": "KeyA",
                       "windowsVirtualKeyCode": 65, "commands": ["selectAll"]}),
            )
            .await;
        }
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// The text of the first element matching `selector` (panics without one).
    async fn text(&mut self, selector: &str) -> String {
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); return e ? e.textContent : null; }})()",
                s = json!(selector)
            ))
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("nothing at {selector}"))
            .to_string()
    }

    /// The text of every message the page shows above its content.
    async fn messages(&mut self) -> String {
        self.eval("document.getElementById('messages').innerText")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn assert_no_exceptions(&self) {
        assert!(
            self.exceptions.is_empty(),
            "the page's scripts threw: {:?}",
            self.exceptions
        );
    }
}

fn base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

// ---------- screenshots ----------

/// A decoded PNG: 8-bit RGB or RGBA, not interlaced (what Chromium writes).
struct Png {
    width: usize,
    height: usize,
    /// RGB, 3 bytes a pixel, row by row.
    rgb: Vec<u8>,
}

impl Png {
    fn decode(data: &[u8]) -> Png {
        assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let (mut width, mut height, mut channels) = (0, 0, 0);
        let mut idat = Vec::new();
        let mut at = 8;
        while at + 8 <= data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let chunk = &data[at + 8..at + 8 + len];
            match &data[at + 4..at + 8] {
                b"IHDR" => {
                    width = u32::from_be_bytes(chunk[0..4].try_into().unwrap()) as usize;
                    height = u32::from_be_bytes(chunk[4..8].try_into().unwrap()) as usize;
                    assert_eq!(chunk[8], 8, "bit depth");
                    channels = match chunk[9] {
                        2 => 3,
                        6 => 4,
                        t => panic!("PNG colour type {t}"),
                    };
                    assert_eq!(chunk[12], 0, "interlaced");
                }
                b"IDAT" => idat.extend_from_slice(chunk),
                b"IEND" => break,
                _ => {}
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        let stride = width * channels;
        assert_eq!(raw.len(), height * (stride + 1), "PNG data length");
        let mut px = vec![0u8; height * stride];
        for y in 0..height {
            let filter = raw[y * (stride + 1)];
            let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
            for x in 0..stride {
                let a = if x >= channels {
                    px[y * stride + x - channels]
                } else {
                    0
                };
                let b = if y > 0 { px[(y - 1) * stride + x] } else { 0 };
                let c = if x >= channels && y > 0 {
                    px[(y - 1) * stride + x - channels]
                } else {
                    0
                };
                let predicted = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((a as u16 + b as u16) / 2) as u8,
                    4 => {
                        let p = a as i16 + b as i16 - c as i16;
                        let (pa, pb, pc) = (
                            (p - a as i16).abs(),
                            (p - b as i16).abs(),
                            (p - c as i16).abs(),
                        );
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("PNG filter {f}"),
                };
                px[y * stride + x] = line[x].wrapping_add(predicted);
            }
        }
        let rgb = px
            .chunks(channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Png { width, height, rgb }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// The page's background (`--page` in the dashboard's style).
const PAGE: [u8; 3] = [0xf3, 0xf4, 0xf6];

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 3)
}

/// Nothing drawn over the right edge: the last `cols` columns are all page background,
/// which they are only when no content reaches past the page's right padding.
fn assert_right_edge_clear(png: &Png, cols: usize, what: &str) {
    for y in 0..png.height {
        for x in png.width - cols..png.width {
            let p = png.pixel(x, y);
            assert!(
                near(p, PAGE),
                "{what}: something is drawn at the right edge ({x}, {y}): {p:?}"
            );
        }
    }
}

/// Where each element matching `selector` is on the page (document coordinates) and what
/// it is called: `[[name, x, y, width, height], ...]`.
async fn boxes(b: &mut Browser, selector: &str, name_attr: &str) -> Vec<(String, [f64; 4])> {
    let v = b
        .eval(&format!(
            "[...document.querySelectorAll({s})].map((e) => {{ const r = e.getBoundingClientRect();
               return [e.getAttribute({a}) || '', r.left + scrollX, r.top + scrollY, r.width, r.height]; }})",
            s = json!(selector),
            a = json!(name_attr)
        ))
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = |i: usize| e[i].as_f64().unwrap();
            (e[0].as_str().unwrap().to_string(), [n(1), n(2), n(3), n(4)])
        })
        .collect()
}

/// Each box is inside the page's width and drawn in the full-page screenshot: mostly the
/// cards' white, with text on it.
fn assert_drawn(png: &Png, boxes: &[(String, [f64; 4])], what: &str) {
    for (name, [x, y, w, h]) in boxes {
        assert!(
            *x >= 0.0 && x + w <= png.width as f64 + 0.5,
            "{what} {name} is not within the page's width {}: x {x}, width {w}",
            png.width
        );
        assert!(
            *w > 40.0 && *h > 20.0,
            "{what} {name} is too small to see: {w}×{h}"
        );
        let (x0, y0) = (*x as usize + 2, *y as usize + 2);
        let (x1, y1) = (
            ((x + w) as usize).min(png.width) - 2,
            ((y + h) as usize).min(png.height) - 2,
        );
        let (mut white, mut ink, mut all) = (0usize, 0usize, 0usize);
        for py in y0..y1 {
            for px in x0..x1 {
                let p = png.pixel(px, py);
                all += 1;
                if p == [255, 255, 255] {
                    white += 1;
                }
                if (p[0] as u32 + p[1] as u32 + p[2] as u32) < 3 * 140 {
                    ink += 1;
                }
            }
        }
        assert!(
            white * 2 > all && ink > 30,
            "{what} {name} is not drawn in the screenshot ({white} white and {ink} dark pixels of {all})"
        );
    }
}

/// The page does not scroll sideways, by its own report and by the DOM's measure.
async fn assert_no_overflow(b: &mut Browser, what: &str) {
    let v = b
        .eval(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth, innerWidth,
              document.body.dataset.overflow, visualViewport.scale]",
        )
        .await;
    let width = b.width as u64;
    assert_eq!(v[1], width, "{what}: the layout viewport {v}");
    assert_eq!(v[2], width, "{what}: the window {v}");
    assert!(
        v[0].as_u64().unwrap() <= width,
        "{what}: the page is wider than the window: {v}"
    );
    assert_eq!(v[3], "0", "{what}: the page reports an overflow: {v}");
    assert_eq!(v[4], 1.0, "{what}: the phone zoomed out to fit: {v}");
}

/// Takes the screenshots of the view shown at the viewport's size, checks them, and keeps
/// them in `DASHBOARD_SCREENSHOTS` when set: the viewport as `NAME.png`, the whole page as
/// `NAME-full.png`.
async fn check_screens(b: &mut Browser, name: &str, panels: &str, attr: &str) {
    assert_no_overflow(b, name).await;
    let shot = b.screenshot(false).await;
    let png = Png::decode(&shot);
    assert_eq!(
        (png.width, png.height),
        (b.width as usize, b.height as usize),
        "{name}: the screenshot is the window"
    );
    assert_right_edge_clear(&png, 6, name);
    let full_shot = b.screenshot(true).await;
    let full = Png::decode(&full_shot);
    assert_eq!(full.width, b.width as usize, "{name}: full page width");
    assert_right_edge_clear(&full, 6, name);
    let found = boxes(b, panels, attr).await;
    assert!(!found.is_empty(), "{name}: nothing matches {panels}");
    assert_drawn(&full, &found, name);
    if let Ok(dir) = std::env::var("DASHBOARD_SCREENSHOTS") {
        std::fs::write(format!("{dir}/{name}.png"), &shot).unwrap();
        std::fs::write(format!("{dir}/{name}-full.png"), &full_shot).unwrap();
    }
}

// ---------- gateways and traffic ----------

/// GETs numbered `ids` to `path` through the gateway at `public`, forced to `side` with the
/// override header `x-strangler-side`; those whose number is a multiple of `fail_every` (0:
/// none) get a 500 from the upstream.
async fn traffic(
    public: SocketAddr,
    path: &str,
    side: &str,
    ids: std::ops::Range<usize>,
    fail_every: usize,
) {
    let c = client();
    for chunk in ids.collect::<Vec<_>>().chunks(32) {
        futures_util::future::join_all(chunk.iter().map(|&i| {
            let mut r = c
                .get(format!("http://{public}{path}/{i}"))
                .header("x-strangler-side", side);
            if fail_every > 0 && i % fail_every == 0 {
                r = r.header("x-test-status", "500");
            }
            async move {
                let _ = r.send().await.unwrap().bytes().await;
            }
        }))
        .await;
    }
}

/// A gateway process on a routes file `head` + `routes`, with `plans` (name, YAML) in its
/// plans folder. Keep the directory alive.
async fn gateway(
    head: &str,
    routes: &str,
    plans: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, std::path::PathBuf, GatewayProcess) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    for (name, text) in plans {
        std::fs::write(dir.path().join(format!("plans/{name}.yaml")), text).unwrap();
    }
    std::fs::write(&file, format!("{head}plans: plans\nroutes:\n{routes}")).unwrap();
    let gw = GatewayProcess::spawn(&file, env).await;
    (dir, file, gw)
}

async fn admin_post(gw: &GatewayProcess, path: &str, token: Option<&str>) -> Value {
    let mut r = client().post(format!("http://{}{path}", gw.admin));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Four routes, each showing something else: `orders-read` worse (new fails one request in
/// ten), `billing` driven by a running plan and shadowed (both sides failing a little, new
/// less than legacy), `checkout` undecided (new's error
/// rate beyond the margin, not shown worse), `search` on a dead service with health checks.
/// Latency is left out of the verdicts (`max_p99_ratio: 5`): on a busy machine it would
/// make them depend on the scheduler. Slots of one second and a window of 20 give the
/// charts a few points within the test's seconds.
struct Scene {
    _dir: tempfile::TempDir,
    gw: GatewayProcess,
    _upstreams: Vec<Upstream>,
}

impl Scene {
    async fn start() -> Scene {
        let legacy = Upstream::start("legacy").await;
        let orders = Upstream::start("orders").await;
        let billing = Upstream::start("billing").await;
        let dead = dead_addr().await;
        let head = format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\noverride: {{header: x-strangler-side}}\ncompare:\n  max_p99_ratio: 5\n  resolution: 1s\n  window: 20s\n  retention: 1m\nlegacy:\n  url: {}\nservices:\n  orders:\n    url: {}\n    health: {{path: /healthz, interval: 200ms}}\n  billing:\n    url: {}\n  search:\n    url: http://{dead}\n    health: {{path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}\n    breaker: {{failures: 5, window: 10s, cooldown: 60s}}\n",
            legacy.url(),
            orders.url(),
            billing.url()
        );
        let routes = "  - name: orders-read\n    match: {prefix: /api/orders}\n    service: orders\n    percent: 10\n  - name: billing\n    match: {prefix: /api/billing}\n    service: billing\n    percent: 0\n    shadow: {percent: 100}\n  - name: checkout\n    match: {prefix: /api/checkout}\n    service: orders\n    percent: 5\n  - name: search\n    match: {prefix: /api/search}\n    service: search\n    percent: 5\n";
        let plan = "route: billing\nsteps:\n  - { percent: 25, hold: 1h }\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 1000\n";
        let (dir, _file, gw) = gateway(&head, routes, &[("billing-rollout", plan)], &[]).await;
        admin_post(&gw, "/admin/plans/billing-rollout/start", None).await;
        let p = gw.public;
        // In rounds, so that the charts (one-second slots) have a few points.
        const ROUNDS: usize = 5;
        for k in 0..ROUNDS {
            let part = |n: usize| n * k / ROUNDS..n * (k + 1) / ROUNDS;
            tokio::join!(
                traffic(p, "/api/orders", "legacy", part(400), 0),
                traffic(p, "/api/orders", "new", part(400), 10),
                traffic(p, "/api/billing", "legacy", part(200), 40),
                traffic(p, "/api/billing", "new", part(200), 50),
                traffic(p, "/api/checkout", "legacy", part(200), 0),
                traffic(p, "/api/checkout", "new", part(200), 100),
                traffic(p, "/api/search", "legacy", part(30), 0),
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        // The dead service's health checks have failed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = get_json(format!("http://{}/admin/services", gw.admin)).await;
            let search = s["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "search")
                .unwrap()
                .clone();
            if search["instances"][0]["healthy"] == false {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "search never unhealthy: {search}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Scene {
            _dir: dir,
            gw,
            _upstreams: vec![legacy, orders, billing],
        }
    }

    fn url(&self, hash: &str) -> String {
        format!("http://{}/{hash}", self.gw.admin)
    }
}

// ---------- the tests ----------

/// The overview at 1400×1000 and at 390×844: every route a card with its figures and its
/// verdict in words, nothing wider than the window, every card drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_fits_a_wide_window_and_a_phone() {
    let scene = Scene::start().await;
    let mut b = Browser::launch().await;
    b.open(&scene.url("")).await;

    let card =
        |route: &str, field: &str| format!("[data-route=\"{route}\"] [data-field=\"{field}\"]");
    let verdict = b.text(&card("orders-read", "verdict")).await;
    assert!(
        verdict.starts_with("worse: new error rate higher than legacy's"),
        "{verdict}"
    );
    assert_eq!(b.text(&card("orders-read", "percent")).await, "10%");
    assert_eq!(b.text(&card("orders-read", "legacy-errors")).await, "0.00%");
    assert_eq!(b.text(&card("orders-read", "new-errors")).await, "10.00%");
    assert!(
        b.text(&card("orders-read", "new-p99"))
            .await
            .ends_with(" ms")
    );
    let undecided = b.text(&card("checkout", "verdict")).await;
    assert!(undecided.starts_with("undecided: "), "{undecided}");
    let quiet = b.text(&card("search", "verdict")).await;
    assert!(
        quiet.starts_with("too little traffic: ") && quiet.contains("more requests"),
        "{quiet}"
    );
    assert!(
        b.text(&card("billing", "verdict")).await.starts_with("ok"),
        "billing"
    );
    // Amber for undecided, grey for too little traffic: never the green of ok.
    let colours = b
        .eval(
            "['billing', 'checkout', 'search', 'orders-read'].map((r) =>
               getComputedStyle(document.querySelector(`[data-route='${r}'] [data-field='verdict']`)).color)",
        )
        .await;
    let ok = &colours[0];
    for (i, route) in ["checkout", "search", "orders-read"].iter().enumerate() {
        assert_ne!(&colours[i + 1], ok, "{route} looks ok: {colours}");
    }
    assert_eq!(b.text(&card("billing", "percent")).await, "25%");
    let plan = b.text(&card("billing", "plan")).await;
    assert_eq!(plan, "billing-rollout: running · step 1 of 3 (25%)");
    assert_eq!(b.text(&card("orders-read", "plan")).await, "no plan");
    let shadow = b.text(&card("billing", "shadow")).await;
    assert!(shadow.contains("copies match"), "{shadow}");
    assert_eq!(b.text(&card("orders-read", "shadow")).await, "not shadowed");
    // Both sides' traffic in a sparkline.
    let sides = b
        .eval("document.querySelectorAll('[data-route=\"orders-read\"] svg[data-chart] [data-side]').length")
        .await;
    assert_eq!(sides, 2);

    let cards = "[data-route]";
    check_screens(&mut b, "dash-1400", cards, "data-route").await;
    // Four cards side by side.
    let row = b
        .eval("new Set([...document.querySelectorAll('[data-route]')].map((e) => Math.round(e.getBoundingClientRect().top))).size")
        .await;
    assert_eq!(row, 1, "the four cards in one row at 1400 pixels");

    b.viewport(390, 844, true).await;
    b.wait_for("document.body.dataset.viewWidth === '390'", 5)
        .await;
    check_screens(&mut b, "dash-390", cards, "data-route").await;
    let stacked = b
        .eval("new Set([...document.querySelectorAll('[data-route]')].map((e) => Math.round(e.getBoundingClientRect().left))).size")
        .await;
    assert_eq!(stacked, 1, "the cards stacked on a phone");
    assert!(b.messages().await.is_empty(), "{}", b.messages().await);
    b.assert_no_exceptions();
}

/// A route's page at both sizes: figures, error rate and traffic over time, the evidence
/// against its threshold, instances and breaker, the plan's steps and history, the
/// actions, and the shadow differences with examples; every panel drawn, nothing wider
/// than the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_page_shows_every_panel_at_both_sizes() {
    let scene = Scene::start().await;
    let mut b = Browser::launch().await;
    b.open(&scene.url("#/route/billing")).await;
    b.wait_for(
        "document.querySelector('[data-field=shadow-fields] [data-shadow-field]')",
        10,
    )
    .await;

    let panels = [
        "summary",
        "figures",
        "errors",
        "latency",
        "traffic",
        "evidence",
        "instances",
        "actions",
        "plan",
        "shadow",
    ];
    let present = b
        .eval("[...document.querySelectorAll('[data-panel]')].map((e) => e.dataset.panel)")
        .await;
    for p in panels {
        assert!(
            present.as_array().unwrap().iter().any(|v| v == p),
            "no {p} panel: {present}"
        );
    }
    // Error rate and traffic over time: a line per side; evidence: a line per test and the
    // threshold.
    for chart in ["errors", "latency", "traffic"] {
        let sides = b
            .eval(&format!(
                "[...document.querySelectorAll('svg[data-chart={chart}] [data-side] path:first-child')].map((p) => p.getAttribute('d') !== 'M0 0')"
            ))
            .await;
        assert_eq!(sides, json!([true, true]), "{chart}");
    }
    let evidence = b
        .eval("[document.querySelectorAll('svg[data-chart=evidence] [data-side]').length, document.querySelector('svg[data-chart=evidence] [data-threshold]').dataset.threshold]")
        .await;
    assert_eq!(evidence, json!([2, "4.605"]));
    let now = b.text("[data-panel=evidence] [data-field=evidence]").await;
    assert!(
        now.starts_with("errors ") && now.ends_with("/ 4.6"),
        "{now}"
    );
    // The figures: p50, p90, p99 of each side.
    for f in ["p50", "p90", "p99"] {
        let v = b
            .text(&format!("[data-panel=figures] [data-field=new-{f}]"))
            .await;
        assert!(v.ends_with(" ms"), "{f}: {v}");
    }
    // Shadow differences with an example.
    let field = b
        .text("[data-field=shadow-fields] [data-shadow-field]")
        .await;
    assert!(field.contains("e.g. /api/billing/"), "{field}");
    // The new service and legacy, with their instances.
    for svc in ["billing", "legacy"] {
        let n = b
            .eval(&format!(
                "document.querySelectorAll('[data-panel=instances] [data-service={svc}] [data-instance]').length"
            ))
            .await;
        assert_eq!(n, 1, "{svc}");
    }
    // The plan's steps, the current one marked, and its history.
    let steps = b
        .eval("[...document.querySelectorAll('[data-plan=billing-rollout] [data-step]')].map((e) => e.className + ' ' + e.textContent)")
        .await;
    assert_eq!(
        steps,
        json!([
            "current 1. 25% · hold 1h",
            "next 2. 50% · hold 1h",
            "next 3. 100% · last step"
        ])
    );
    let history = b.text("[data-history=billing-rollout]").await;
    assert!(
        history.contains("pending → running at 25%: started: step 1 of 3 (25%)"),
        "{history}"
    );
    // The actions the plan's state allows.
    let enabled = b
        .eval("[...document.querySelectorAll('[data-op-plan=billing-rollout]')].map((e) => e.dataset.op + (e.disabled ? ' off' : ' on'))")
        .await;
    assert_eq!(
        enabled,
        json!(["start off", "pause on", "resume off", "abort on"])
    );
    assert_eq!(
        b.eval("document.getElementById('shift-percent').value")
            .await,
        "25"
    );

    let sel = "[data-panel]";
    check_screens(&mut b, "dash-route-1400", sel, "data-panel").await;
    b.viewport(390, 844, true).await;
    b.wait_for("document.body.dataset.viewWidth === '390'", 5)
        .await;
    check_screens(&mut b, "dash-route-390", sel, "data-panel").await;
    assert!(b.messages().await.is_empty(), "{}", b.messages().await);
    b.assert_no_exceptions();
}

/// A dead new service (health checks on, its one instance refusing connections) is shown
/// unhealthy, in red, on its route's card and page; an open breaker the same; an ejected
/// instance in amber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_new_service_shows_unhealthy_not_green() {
    let legacy = Upstream::start("legacy").await;
    let live = Upstream::start("live").await;
    let (one, two) = (Upstream::start("one").await, Upstream::start("two").await);
    let dead = dead_addr().await;
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: search\n    match: {{prefix: /search}}\n    service: search\n    percent: 50\n  - name: broken\n    match: {{prefix: /broken}}\n    service: broken\n    percent: 50\n  - name: fine\n    match: {{prefix: /fine}}\n    service: fine\n    percent: 50\n  - name: pair\n    match: {{prefix: /pair}}\n    service: pair\n    percent: 50\n",
        config_head(&legacy.url(), &[])
            + &format!(
                "  search:\n    url: http://{dead}\n    health: {{path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}\n"
            )
            + &format!(
                "  broken:\n    url: {}\n    breaker: {{failures: 2, window: 10s, cooldown: 60s}}\n",
                live.url()
            )
            + &format!(
                "  fine:\n    url: {}\n    health: {{path: /healthz, interval: 100ms}}\n",
                live.url()
            )
            + &format!(
                "  pair:\n    urls: [{}, {}]\n    outlier: {{consecutive: 3, ejection: 60s}}\n",
                one.url(),
                two.url()
            )
    );
    let gw = Gateway::start(&yaml).await;
    forced_traffic(&gw, "/broken", "new", 4, 1).await;
    // One request at a time, so that each instance fails three in a row: one of the two is
    // ejected (never both: the last one serving stays).
    for _ in 0..8 {
        forced_traffic(&gw, "/pair", "new", 1, 1).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = get_json(gw.admin_url("/admin/services")).await;
        let by = |n: &str| {
            s["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == n)
                .unwrap()
                .clone()
        };
        let ejected = by("pair")["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ejected"] == true)
            .count();
        if by("search")["instances"][0]["healthy"] == false
            && by("broken")["breaker"]["state"] == "open"
            && ejected == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never dead, open and ejected: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut b = Browser::launch().await;
    b.open(&gw.admin_url("/")).await;
    let health = |route: &str| format!("[data-route=\"{route}\"] [data-field=\"health\"]");
    let search = b.text(&health("search")).await;
    assert!(
        search.starts_with("search: unhealthy: no healthy instance"),
        "{search}"
    );
    let broken = b.text(&health("broken")).await;
    assert!(broken.starts_with("broken: breaker open"), "{broken}");
    let fine = b.text(&health("fine")).await;
    assert!(fine.starts_with("fine: healthy"), "{fine}");
    let looks = b
        .eval("['search', 'broken', 'fine'].map((r) => { const e = document.querySelector(`[data-route='${r}'] [data-field='health']`); return [e.dataset.health, getComputedStyle(e).color]; })")
        .await;
    assert_eq!(looks[0][0], "bad");
    assert_eq!(looks[1][0], "bad");
    assert_eq!(looks[2][0], "good");
    assert_ne!(
        looks[0][1], looks[2][1],
        "the dead service looks like the healthy one: {looks}"
    );
    assert_ne!(
        looks[1][1], looks[2][1],
        "the open breaker looks like the healthy one: {looks}"
    );

    // An instance ejected: amber, not green, and named on the route's page.
    let pair = b.text(&health("pair")).await;
    assert_eq!(pair, "pair: 1 of 2 ejected");
    assert_eq!(
        b.eval("document.querySelector('[data-route=pair] [data-field=health]').dataset.health")
            .await,
        "warn"
    );

    b.open(&gw.admin_url("/#/route/search")).await;
    let pill = b
        .eval("(() => { const e = document.querySelector('[data-service=search] [data-field=service-health]'); return [e.dataset.health, e.textContent]; })()")
        .await;
    assert_eq!(pill, json!(["bad", "unhealthy"]));
    let instance = b
        .eval(&format!(
            "document.querySelector('[data-service=search] [data-instance=\"{dead}\"] [data-field=healthy]').textContent"
        ))
        .await;
    assert_eq!(instance, "unhealthy");
    b.open(&gw.admin_url("/#/route/broken")).await;
    assert_eq!(
        b.text("[data-service=broken] [data-field=breaker]").await,
        "open"
    );
    b.open(&gw.admin_url("/#/route/pair")).await;
    let states = b
        .eval("[...document.querySelectorAll('[data-service=pair] [data-field=healthy]')].map((e) => e.textContent).sort()")
        .await;
    assert_eq!(states, json!(["not checked", "not checked, ejected"]));
    b.assert_no_exceptions();
}

/// A gateway keeping 3 minutes: the window's choices go from one slot to the retention,
/// the default chosen; a link asking for 15 minutes says the gateway refused it and shows
/// the default; a route the gateway does not have is a message; and once the gateway is
/// gone the page says it cannot reach it, without a script error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_follow_the_retention_and_errors_are_messages() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let head = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {}\nservices:\n  orders:\n    url: {}\ncompare:\n  window: 1m\n  retention: 3m\n",
        legacy.url(),
        orders.url()
    );
    let routes = "  - name: orders-read\n    match: {prefix: /api/orders}\n    service: orders\n    percent: 50\n";
    let (_dir, _file, mut gw) = gateway(&head, routes, &[], &[]).await;
    let mut b = Browser::launch().await;
    b.open(&format!("http://{}/", gw.admin)).await;
    let choices = b
        .eval("[...document.querySelectorAll('#window option')].map((o) => o.textContent)")
        .await;
    assert_eq!(
        choices,
        json!(["10s", "30s", "1m (default)", "2m", "3m (all kept)"])
    );
    assert_eq!(
        b.eval("document.getElementById('window').value").await,
        "1m"
    );
    assert!(b.messages().await.is_empty(), "{}", b.messages().await);
    assert!(
        b.text("[data-route=orders-read] [data-field=verdict]")
            .await
            .starts_with("too little traffic")
    );

    // Choosing a window asks the gateway for it.
    b.eval("(() => { const s = document.getElementById('window'); s.value = '3m'; s.dispatchEvent(new Event('change')); })()")
        .await;
    b.wait_for(
        "document.getElementById('summary').textContent.includes('over the last 3m')",
        5,
    )
    .await;
    assert!(
        b.eval("location.hash")
            .await
            .as_str()
            .unwrap()
            .ends_with("window=3m")
    );

    // A window beyond the retention: the gateway's 400 as a message, the default shown.
    b.open(&format!("http://{}/#/?window=15m", gw.admin)).await;
    let said = b.messages().await;
    assert!(
        said.contains("window 15m")
            && said.contains("to the retention (3m)")
            && said.contains("Showing the default window"),
        "{said}"
    );
    assert_eq!(
        b.eval("document.getElementById('window').value").await,
        "1m"
    );
    assert!(
        b.eval("document.querySelector('[data-route=orders-read]') !== null")
            .await
            == true
    );

    // No such route.
    b.open(&format!("http://{}/#/route/nope", gw.admin)).await;
    let said = b.messages().await;
    assert!(
        said.contains("no route \"nope\"") && said.contains("orders-read"),
        "{said}"
    );

    // The gateway goes away: a message, and the page keeps its last figures.
    b.open(&format!("http://{}/#/route/orders-read", gw.admin))
        .await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    b.wait_for("document.body.dataset.stale === '1'", 10).await;
    let said = b.messages().await;
    assert!(said.contains("cannot reach the admin API"), "{said}");
    assert!(said.contains("the figures shown are from"), "{said}");
    assert_eq!(
        b.text("[data-panel=summary] [data-field=route]").await,
        "orders-read"
    );
    assert_eq!(
        b.eval("document.body.dataset.scriptErrors || '0'").await,
        "0"
    );
    b.assert_no_exceptions();
}

/// A person pauses a plan and shifts a percentage through the page, by clicks and typing:
/// refused (401, shown) without the token; done with it, with the API's answers shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_pauses_a_plan_and_shifts_a_percent_with_the_token() {
    const TOKEN: &str = "s3cret-dashboard-token";
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let head = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token_env: STRANGLER_TEST_TOKEN\nlegacy:\n  url: {}\nservices:\n  orders:\n    url: {}\n",
        legacy.url(),
        orders.url()
    );
    let routes = "  - name: orders-read\n    match: {prefix: /api/orders}\n    service: orders\n    percent: 0\n";
    let plan = "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n";
    let (_dir, file, gw) = gateway(
        &head,
        routes,
        &[("orders-rollout", plan)],
        &[("STRANGLER_TEST_TOKEN", TOKEN)],
    )
    .await;
    admin_post(&gw, "/admin/plans/orders-rollout/start", Some(TOKEN)).await;

    let mut b = Browser::launch().await;
    b.open(&format!("http://{}/#/route/orders-read", gw.admin))
        .await;
    b.wait_for("document.querySelector('[data-op=pause]') && !document.querySelector('[data-op=pause]').disabled", 5)
        .await;

    // Without the token: the gateway's 401, in words, and nothing changed.
    b.click("[data-op=pause][data-op-plan=orders-rollout]")
        .await;
    let question = b.text("#confirm [data-field=question]").await;
    assert!(
        question.starts_with("Pause plan orders-rollout?"),
        "{question}"
    );
    b.click("#confirm [data-confirm=yes]").await;
    let said = b
        .wait_for("(() => { const t = document.getElementById('action-result').textContent; return t.includes('401') ? t : null; })()", 10)
        .await;
    assert!(
        said.as_str().unwrap().contains("unauthorized") && said.as_str().unwrap().contains("token"),
        "{said}"
    );
    let status = get_json(format!("http://{}/admin/plans/orders-rollout", gw.admin)).await;
    assert_eq!(status["state"], "running");

    // The token, typed and kept for the tab (never in the address).
    b.type_into("#token", TOKEN).await;
    b.click("#token-save").await;
    assert_eq!(b.text("#token-state").await, "a token is set for this tab");
    assert_eq!(
        b.eval("sessionStorage.getItem('strangler-admin-token')")
            .await,
        TOKEN
    );
    assert_eq!(b.eval("document.getElementById('token').value").await, "");
    assert!(
        !b.eval("location.href")
            .await
            .as_str()
            .unwrap()
            .contains(TOKEN)
    );

    // Pause, confirmed: the API's answer shown, the plan paused.
    b.click("[data-op=pause][data-op-plan=orders-rollout]")
        .await;
    b.click("#confirm [data-confirm=yes]").await;
    let said = b
        .wait_for("(() => { const t = document.getElementById('action-result').textContent; return t.startsWith('plan ') ? t : null; })()", 10)
        .await;
    assert_eq!(
        said,
        "plan orders-rollout: paused · step 1 of 2 (10%) · route at 10%"
    );
    let status = get_json(format!("http://{}/admin/plans/orders-rollout", gw.admin)).await;
    assert_eq!(status["state"], "paused");
    b.wait_for("document.querySelector('[data-plan=orders-rollout] [data-field=state]').textContent === 'paused'", 5)
        .await;
    b.wait_for("!document.querySelector('[data-op=resume]').disabled", 5)
        .await;

    // A cancelled confirmation does nothing.
    b.type_into("#shift-percent", "55").await;
    b.click("#shift").await;
    b.click("#confirm [data-confirm=no]").await;
    assert_eq!(b.text("#action-result").await, "cancelled");

    // Shift the percentage: written to the routes file, in force, the answer shown.
    b.type_into("#shift-percent", "30").await;
    b.click("#shift").await;
    let question = b.text("#confirm [data-field=question]").await;
    assert!(
        question.starts_with("Set orders-read to 30% (now 10%)?"),
        "{question}"
    );
    b.click("#confirm [data-confirm=yes]").await;
    let said = b
        .wait_for("(() => { const t = document.getElementById('action-result').textContent; return t.startsWith('orders-read:') ? t : null; })()", 10)
        .await;
    assert!(
        said.as_str()
            .unwrap()
            .starts_with("orders-read: 10% → 30% (config "),
        "{said}"
    );
    let routes = get_json(format!("http://{}/admin/routes", gw.admin)).await;
    assert_eq!(routes["routes"][0]["percent"], 30);
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("percent: 30")
    );
    b.wait_for(
        "document.querySelector('[data-panel=summary] [data-field=percent]').textContent === '30%'",
        5,
    )
    .await;
    b.assert_no_exceptions();
}

/// The figures of known traffic, as the overview and a route's page show them; and the
/// page loads nothing from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_routes_and_figures_in_a_real_browser() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: flaky\n    match: {{prefix: /flaky}}\n    service: orders\n    percent: 10\n  - name: quiet\n    match: {{prefix: /quiet}}\n    service: orders\n    percent: 12.5\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let gw = Gateway::start(&yaml).await;
    forced_traffic(&gw, "/flaky", "legacy", 400, 0).await;
    forced_traffic(&gw, "/flaky", "new", 400, 10).await;
    forced_traffic(&gw, "/quiet", "new", 3, 0).await;
    let routes = get_json(gw.admin_url("/admin/routes")).await;

    let mut b = Browser::launch().await;
    b.open(&gw.admin_url("/")).await;
    assert_eq!(
        b.text("#hash").await,
        routes["config_hash"].as_str().unwrap(),
        "config hash shown"
    );
    let f = |route: &str, field: &str| format!("[data-route=\"{route}\"] [data-field=\"{field}\"]");
    assert_eq!(b.text(&f("flaky", "percent")).await, "10%");
    assert_eq!(b.text(&f("flaky", "legacy-errors")).await, "0.00%");
    assert_eq!(b.text(&f("flaky", "new-errors")).await, "10.00%");
    let verdict = b.text(&f("flaky", "verdict")).await;
    assert!(
        verdict.starts_with("worse: new error rate higher than legacy's (evidence "),
        "{verdict}"
    );
    for side in ["legacy-p99", "new-p99"] {
        assert!(b.text(&f("flaky", side)).await.ends_with(" ms"), "{side}");
    }
    let legacy_rps: f64 = b.text(&f("flaky", "legacy-rps")).await.parse().unwrap();
    let new_rps: f64 = b.text(&f("flaky", "new-rps")).await.parse().unwrap();
    assert!(
        legacy_rps > 0.0 && (legacy_rps - new_rps).abs() < 1e-9,
        "equal counts, equal rates: {legacy_rps} {new_rps}"
    );
    assert_eq!(b.text(&f("quiet", "percent")).await, "12.5%");
    assert_eq!(
        b.text(&f("quiet", "verdict")).await,
        "too little traffic: 50 more requests needed on the quieter side (legacy 0, new 3)"
    );
    assert_eq!(b.text(&f("quiet", "legacy-p99")).await, "–");

    // The route's page: the evidence, each test's statistic over its threshold (4.6 at 99%).
    let before = b.navigation().await;
    b.click("[data-link=flaky]").await;
    b.loaded_after(&before).await;
    assert_eq!(b.eval("location.hash").await, "#/route/flaky");
    let evidence = b.text("[data-panel=evidence] [data-field=evidence]").await;
    assert!(evidence.contains("/ 4.6"), "{evidence}");
    let errors_lr: f64 = evidence["errors ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        errors_lr >= 4.6,
        "a worse verdict's statistic is over the threshold: {evidence}"
    );
    assert_eq!(
        b.text("[data-panel=figures] [data-field=new-requests]")
            .await,
        "400"
    );
    assert_eq!(
        b.text("[data-panel=figures] [data-field=new-error-count]")
            .await,
        "40"
    );
    b.assert_no_exceptions();

    // Self-contained: the page names no other host.
    let page = get_text(gw.admin_url("/")).await;
    for external in ["<link", "src=\"", "url(", "@import", "https://"] {
        assert!(
            !page.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
}

/// A plan on its route's page: state, step, percentage, hold, guard, evidence, what it
/// waits for, and its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_plan_with_its_step_hold_guard_and_history() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 1000\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    admin_post(&gw, "/admin/plans/orders-rollout/start", None).await;
    for i in 0..50 {
        client()
            .get(format!("http://{}/api/orders/{i}", gw.public))
            .send()
            .await
            .unwrap();
    }
    let mut b = Browser::launch().await;
    b.open(&format!("http://{}/#/route/orders-read", gw.admin))
        .await;
    let plan = "[data-plan=\"orders-rollout\"]";
    let f = |field: &str| format!("{plan} [data-field=\"{field}\"]");
    assert_eq!(b.text(&f("route")).await, "orders-read");
    assert_eq!(b.text(&f("state")).await, "running");
    assert_eq!(b.text(&f("step")).await, "1 of 2");
    assert_eq!(b.text(&f("percent")).await, "10%");
    let left: u64 = b
        .text(&f("hold-left"))
        .await
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    // The guard's figures come with the plan's next tick.
    b.wait_for(
        &format!(
            "document.querySelector({}).textContent.includes('more traffic: legacy')",
            json!(f("waiting"))
        ),
        10,
    )
    .await;
    assert_eq!(b.text(&f("guard")).await, "too little traffic");
    assert!(b.text(&f("evidence")).await.contains("/ 4.6"));
    let history = b.text("[data-history=\"orders-rollout\"]").await;
    assert!(
        history.contains("pending → running at 10%: started: step 1 of 2 (10%)"),
        "{history}"
    );
    // The overview names the plan's state on the route's card.
    let before = b.navigation().await;
    b.click("a[href='#/']").await;
    b.loaded_after(&before).await;
    b.wait_for(
        "document.querySelector('[data-route=\"orders-read\"] [data-field=plan]')",
        5,
    )
    .await;
    assert_eq!(
        b.text("[data-route=\"orders-read\"] [data-field=plan]")
            .await,
        "orders-rollout: running · step 1 of 2 (10%)"
    );
    b.assert_no_exceptions();
}

/// A plan's rollback that the routes file could not take (its folder made read-only) is
/// held in memory: the route's card and page mark the percentage held, with what the file
/// says. The gateway runs as `nobody`, so this needs root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentage_held_in_memory_is_marked_on_the_card_and_page() {
    if !is_root() {
        eprintln!("skipped: a gateway running as another user needs root (CI runs as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    const NOBODY: u32 = 65534;
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\non_fail: rollback\n",
    );
    chmod(dir.path(), 0o755);
    for p in [
        dir.path().to_path_buf(),
        routes.clone(),
        dir.path().join("plans"),
        dir.path().join("plans/orders-rollout.yaml"),
    ] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let gw = GatewayProcess::spawn_as(&routes, NOBODY, NOBODY).await;
    let traffic = support::plans::Traffic::start(gw.public);
    admin_post(&gw, "/admin/plans/orders-rollout/start", None).await;
    // The gateway can no longer replace the routes file; the new side fails.
    chmod(dir.path(), 0o555);
    new.fail_permille
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = support::plans::route_entry(gw.admin, "orders-read").await;
        if !r["override"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "never held: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(traffic);

    let mut b = Browser::launch().await;
    b.open(&format!("http://{}/", gw.admin)).await;
    let card = "[data-route=\"orders-read\"]";
    assert_eq!(
        b.text(&format!("{card} [data-field=percent][data-held]"))
            .await,
        "0% held (file: 50%)"
    );
    let note = b.text(&format!("{card} [data-field=override]")).await;
    assert!(
        note.starts_with("held in memory at 0% by plan orders-rollout: ")
            && note.ends_with("(the routes file says 50%)"),
        "{note}"
    );
    assert_eq!(
        b.text(&format!("{card} [data-field=plan]")).await,
        "orders-rollout: rolled back · step 1 of 2 (50%)"
    );
    b.open(&format!("http://{}/#/route/orders-read", gw.admin))
        .await;
    let note = b.text("[data-panel=summary] [data-field=override]").await;
    assert!(
        note.contains("setting a percentage below ends it"),
        "{note}"
    );
    b.assert_no_exceptions();
    chmod(dir.path(), 0o755);
}

/// The carve-out map's page: the share on new, the endpoints with their route and share,
/// the near miss, at a wide window and a phone's width, without overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_carve_out_map_page_shows_endpoints_progress_and_near_misses() {
    use crate::inventory_gateway::{gateway, learned, traffic};
    let (legacy, new) = (
        Upstream::start("legacy").await,
        Upstream::start("new").await,
    );
    let gw = gateway(&legacy, &new).await;
    traffic(&gw).await;
    learned(&gw, 100).await;
    let mut b = Browser::launch().await;
    b.open(&gw.admin_url("/#/map")).await;
    let share = b.text("[data-field=share-new]").await;
    assert_eq!(share, "40.00% of requests served by new services");
    let rows = b
        .eval("[...document.querySelectorAll('[data-template]')].map((r) => [r.dataset.template, r.querySelector('[data-field=new-share]').textContent])")
        .await;
    assert_eq!(
        rows,
        json!([
            ["GET /api/orders/{order_id}", "100.00%"],
            ["GET /api/products/{product_id}", "0.00%"],
            ["GET /API/orders/{order_id}", "0.00%"],
            ["GET /api/users/{user_id}/profile", "0.00%"]
        ])
    );
    // The carved endpoint links to its route's page.
    assert_eq!(
        b.eval("document.querySelector('[data-template=\"GET /api/orders/{order_id}\"] a').getAttribute('href')")
            .await,
        "#/route/orders-read"
    );
    let near = b.text("[data-near=case]").await;
    assert!(
        near.contains("GET /API/orders/{order_id}") && near.contains("orders-read"),
        "{near}"
    );
    assert_eq!(
        b.text("[data-field=carved]").await,
        "1 endpoint, 40.00% of traffic"
    );
    check_screens(&mut b, "map-1400", "[data-panel^=map]", "data-panel").await;
    b.viewport(390, 844, true).await;
    check_screens(&mut b, "map-390", "[data-panel^=map]", "data-panel").await;
    b.assert_no_exceptions();
}
