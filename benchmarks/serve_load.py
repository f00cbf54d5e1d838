"""Load test for `cifarlab serve`: N concurrent clients for a few seconds against a server it starts.

Starts `cifarlab serve RUN` on a free 127.0.0.1 port in a subprocess, waits for GET /health, then
runs --clients threads, each with its own keep-alive connection, POSTing one image to /predict as
fast as the answers come, for --seconds. Prints requests/s and p50/p99 latency; exits 1 on any
error. Bounded: loopback only, at most 64 clients and 60 s, and the server is stopped at the end
whatever happens. Without RUN it serves an untrained `base` model (same cost per image).

    .venv/bin/python benchmarks/serve_load.py runs/base-20261122-101500 --clients 8 --seconds 5
    .venv/bin/python benchmarks/serve_load.py --image cat.jpg

The server runs with CIFARLAB_THREADS=1 unless the environment sets it (keep a busy machine usable);
the clients share this process's GIL, so on a small machine they cap the figures too.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def untrained_run(folder: Path) -> Path:
    from cifarlab import checkpoint
    from cifarlab.networks import create_model

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    model = create_model("base", len(classes), [125.3, 123.0, 113.9], [63.0, 62.1, 66.7])
    checkpoint.save(folder / "model.pt", checkpoint.model_record(
        model, "base", classes, {"recipe": "base"}, {"val_acc": None}, epoch=0, weights="final"))
    return folder


def sample_jpeg() -> bytes:
    """A 32x32 JPEG like the CIFAR-10 ones (random pixels: decoding cost is the same)."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def client(port: int, body: bytes, content_type: str, until: float, latencies: list[float],
           errors: list[str]) -> None:
    """One keep-alive connection posting `body` until `until` (a time.perf_counter() value)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200 or not json.loads(answer)["top"]:
                errors.append(f"HTTP {response.status}: {answer[:200]!r}")
                continue
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            continue
        latencies.append(time.perf_counter() - start)
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("run", nargs="?", help="run directory or model.pt (default: an untrained base model)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, 1..64 (default: 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long, up to 60 (default: 5)")
    parser.add_argument("--image", type=Path, help="image to send (default: a 32x32 JPEG)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 60:
        parser.error("--clients must be 1..64 and --seconds 0..60")
    body = args.image.read_bytes() if args.image else sample_jpeg()
    content_type = "image/png" if body.startswith(b"\x89PNG") else "image/jpeg"

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or str(untrained_run(Path(tmp)))
        port = free_port()
        env = {**os.environ, "CIFARLAB_THREADS": os.environ.get("CIFARLAB_THREADS", "1")}
        server = subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "serve", run, "--host", HOST, "--port", str(port),
             "--max-concurrency", str(args.clients + 8)],
            stdout=subprocess.DEVNULL, env=env)  # its warnings and errors go to our stderr
        try:
            wait_ready(port, server)
            warm: list[float] = []
            client(port, body, content_type, time.perf_counter() + 0.5, warm, [])
            latencies: list[float] = []
            errors: list[str] = []
            until = time.perf_counter() + args.seconds
            started = time.perf_counter()
            work = (port, body, content_type, until, latencies, errors)
            threads = [threading.Thread(target=client, args=work) for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(args.seconds + 30)
            elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    if not latencies:
        print(f"no request succeeded; first error: {errors[0] if errors else 'none'}")
        return 1
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"{args.clients} clients, {elapsed:.1f} s, {len(latencies)} requests, {len(errors)} errors, "
          f"{len(body)}-byte image, server CIFARLAB_THREADS={env['CIFARLAB_THREADS']}")
    print(f"requests/s {len(latencies) / elapsed:.1f}   p50 {1000 * cuts[49]:.1f} ms   "
          f"p99 {1000 * cuts[98]:.1f} ms")
    if errors:
        print(f"first error: {errors[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
