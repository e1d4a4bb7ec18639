#!/usr/bin/env python3
"""Memory per kept-alive client connection: the gateway beside nginx and HAProxy.

For each target (the same proxies and upstreams as peer_bench.py, the gateway on
benches/peer/production.yaml), after a warm-up:
  1. opens --conns client connections, one after another, and sends nothing: the growth of
     the proxy's resident memory divided by their number is the cost of an idle connection
     before its first request;
  2. sends one `GET /` on each of them, one after another, each answered before the next,
     and keeps them all open: the growth (from the same start) per connection is the cost
     of a kept-alive idle connection after a request, in the steady state;
  3. then one `POST /` with a small body (a JSON object, with a `Content-Length`) on each,
     the same way: what a connection that carried a request with a body holds.
Resident memory is VmRSS of the proxy's process and its children (nginx's worker), read
from /proc after a pause of a second. Prints KiB per connection; with --max-kib, exits 1
when one of the gateway's three figures passes it.

Usage, from the repository root, after `cargo build --release` and
`apt-get install -y nginx-light haproxy`:
  python3 benches/peer/conn_memory.py [--conns 4000] [--only nginx,haproxy,strangler]
  python3 benches/peer/conn_memory.py --gateway old='/tmp/strangler-old serve --config RUNDIR/production.yaml'
"""
import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peer_bench import PEER_PORTS, process_and_children, render, stop, wait_port  # noqa: E402

DEFAULT_GATEWAY = "strangler=target/release/strangler serve --config RUNDIR/production.yaml"


def rss_kib(pid):
    """VmRSS of `pid` and its children, in KiB."""
    total = 0
    for p in process_and_children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def answer(sock):
    """Reads one response with a Content-Length (the benchmark's upstreams send one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's end")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"not a 200: {head[:40]!r}")


def request(sock, body=None):
    if body is None:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u1\r\n\r\n")
    else:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: bench\r\nx-user-id: u1\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    answer(sock)


def measure(pid, port, conns):
    warm = socket.create_connection(("127.0.0.1", port))
    for _ in range(200):
        request(warm)
    warm.close()
    time.sleep(1.0)
    base = rss_kib(pid)
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    time.sleep(1.0)
    idle = rss_kib(pid)
    for s in socks:
        request(s)
    time.sleep(1.0)
    after = rss_kib(pid)
    for s in socks:
        request(s, b'{"a":1}')
    time.sleep(1.0)
    after_body = rss_kib(pid)
    for s in socks:
        s.close()
    return (idle - base) / conns, (after - base) / conns, (after_body - base) / conns


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", action="append", metavar="NAME=CMD",
                    help=f"a gateway to measure (repeatable); default: {DEFAULT_GATEWAY}")
    ap.add_argument("--conns", type=int, default=4000)
    ap.add_argument("--only", help="comma list of targets: nginx, haproxy and gateway names")
    ap.add_argument("--max-kib", type=float, help="fail when a gateway's figure passes this")
    args = ap.parse_args()
    gateways = dict(g.split("=", 1) for g in (args.gateway or [DEFAULT_GATEWAY]))
    targets = args.only.split(",") if args.only else ["nginx", "haproxy", *gateways]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.conns + 100:
        sys.exit(f"the open-file limit ({hard}) is below --conns")
    for port in (18081, 18082, 18083, *PEER_PORTS.values(), 18092):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} is already in use: stop what listens there first")

    rundir = tempfile.mkdtemp(prefix="conn-memory-")
    os.makedirs(os.path.join(rundir, "files"))
    render("production.yaml", rundir)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    procs = []

    def start(cmd, env=None):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(rundir, "stderr.log"), "a"),
                             env=env, start_new_session=True,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
        procs.append(p)
        return p

    print(f"KiB of resident memory per kept-alive client connection ({args.conns} connections, "
          "made one after another)")
    print(f"{'target':<12} {'before a request':>17} {'after one':>10} {'after a POST too':>17}")
    failed = False
    try:
        start([nginx, "-c", render("upstreams.nginx.conf", rundir), "-e", os.path.join(rundir, "up.err")])
        if not all(wait_port(p) for p in (18081, 18082, 18083)):
            sys.exit(f"the upstreams did not start; see {rundir}")
        for t in targets:
            if t == "nginx":
                conf = render("proxy.nginx.conf", rundir)
                with open(conf) as f:
                    text = f.read().replace("worker_connections 4096", "worker_connections 65536")
                with open(conf, "w") as f:
                    f.write(text)
                p, port = start([nginx, "-c", conf, "-e", os.path.join(rundir, "proxy.err")]), PEER_PORTS[t]
            elif t == "haproxy":
                p, port = start([haproxy, "-db", "-f", render("proxy.haproxy.cfg", rundir)]), PEER_PORTS[t]
            elif t in gateways:
                env = dict(os.environ, TOKIO_WORKER_THREADS="1")
                cmd = gateways[t].replace("RUNDIR", rundir)
                p, port = start(["sh", "-c", "exec " + cmd], env), 18092
            else:
                sys.exit(f"unknown target {t}")
            if not wait_port(port):
                sys.exit(f"{t} did not listen on {port}; see {rundir}/stderr.log")
            time.sleep(0.5)
            before, after, after_body = measure(p.pid, port, args.conns)
            print(f"{t:<12} {before:>17.1f} {after:>10.1f} {after_body:>17.1f}", flush=True)
            if t in gateways and args.max_kib is not None and max(before, after, after_body) > args.max_kib:
                failed = True
            stop(p)
            time.sleep(0.3)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(rundir, ignore_errors=True)
    if failed:
        sys.exit(f"a gateway holds more than {args.max_kib} KiB per connection")


if __name__ == "__main__":
    main()
