#!/usr/bin/env python3
"""Resident memory of the gateway while 1 GiB goes up and 1 GiB comes down through it.

Starts a streaming upstream (in this script), `target/release/strangler serve` on a routes
file that sends everything to it, then:
  1. uploads 1 GiB (chunked, streamed by curl from /dev/zero) through the gateway, then
     1 GiB of declared length (`Content-Length`, from a sparse file, without `Expect`);
  2. downloads 1 GiB (streamed by the upstream) through the gateway;
and samples the gateway's VmRSS every 20 ms. Prints the baseline, the peak and the growth;
exits 1 when the growth passes the bound (64 MiB by default).

Usage: cargo build --release && python3 benches/memory.py [--gib 1] [--bound-mib 64]
Needs curl.
"""
import argparse
import hashlib
import http.server
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 1 << 20


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    size = 1 << 30

    def log_message(self, *args):
        pass

    def do_POST(self):
        got = 0
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = n
                while left:
                    b = self.rfile.read(min(left, CHUNK))
                    if not b:
                        raise ConnectionError("upload ended early")
                    left -= len(b)
                    got += len(b)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                b = self.rfile.read(min(left, CHUNK))
                if not b:
                    break
                left -= len(b)
                got += len(b)
        body = str(got).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        block = b"\x07" * CHUNK
        left = self.size
        while left:
            n = min(left, CHUNK)
            self.wfile.write(block[:n])
            left -= n


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--bound-mib", type=float, default=64.0)
    ap.add_argument("--binary", default="target/release/strangler")
    args = ap.parse_args()
    size = int(args.gib * (1 << 30))
    Upstream.size = size

    up = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    up_port = up.server_address[1]
    gw_port, admin_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="strangler-mem-")
    routes = os.path.join(tmp, "routes.yaml")
    with open(routes, "w") as f:
        f.write(
            f"listen: 127.0.0.1:{gw_port}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\n"
            f"legacy: {{url: http://127.0.0.1:{up_port}, timeout: 5m}}\n"
            f"services:\n  new: {{url: http://127.0.0.1:{up_port}, timeout: 5m}}\n"
            "routes:\n  - name: all\n    match: {prefix: /}\n    service: new\n    percent: 50\n"
        )
    gw = subprocess.Popen([args.binary, "serve", "--config", routes], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", gw_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        # Warm up: one small exchange each way, so pools and buffers exist.
        subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{gw_port}/warm"], check=True)
        time.sleep(0.3)
        base = rss_kib(gw.pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(gw.pid))
                time.sleep(0.02)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.time()
        up_cmd = (
            f"head -c {size} /dev/zero | curl -sS -X POST -T - "
            f"-H 'Content-Type: application/octet-stream' http://127.0.0.1:{gw_port}/upload"
        )
        out = subprocess.run(["sh", "-c", up_cmd], capture_output=True, text=True, check=True).stdout
        if out.strip() != str(size):
            sys.exit(f"upload: the upstream received {out!r} bytes, expected {size}")
        with tempfile.NamedTemporaryFile() as f:
            f.truncate(size)
            f.flush()
            out = subprocess.run(
                ["curl", "-sS", "-X", "POST", "-T", f.name, "-H", "Expect:",
                 "-H", "Content-Type: application/octet-stream", f"http://127.0.0.1:{gw_port}/upload"],
                capture_output=True, text=True, check=True,
            ).stdout
        if out.strip() != str(size):
            sys.exit(f"upload of declared length: the upstream received {out!r} bytes, expected {size}")
        t1 = time.time()
        dl = subprocess.run(
            ["sh", "-c", f"curl -sS http://127.0.0.1:{gw_port}/download | wc -c"],
            capture_output=True, text=True, check=True,
        ).stdout
        if int(dl.strip()) != size:
            sys.exit(f"download: received {dl.strip()} bytes, expected {size}")
        t2 = time.time()
        stop.set()
        t.join()
        end = rss_kib(gw.pid)
        growth = (peak[0] - base) / 1024
        print(f"upload   {size / (1 << 20):.0f} MiB chunked, then the same of declared length, in {t1 - t0:.1f} s")
        print(f"download {size / (1 << 20):.0f} MiB in {t2 - t1:.1f} s")
        print(f"gateway RSS: baseline {base / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB, "
              f"after {end / 1024:.1f} MiB; peak growth {growth:.1f} MiB (bound {args.bound_mib:.0f} MiB)")
        if growth >= args.bound_mib:
            print("FAIL: resident memory grew past the bound")
            sys.exit(1)
        print("ok")
    finally:
        gw.terminate()
        gw.wait()
        up.shutdown()


if __name__ == "__main__":
    main()
