"""`cifarlab serve`: the JSON API, the page, the report folder, and every kind of bad upload.

Most tests use FastAPI's in-process TestClient; the ones about not reading an oversized body, and
about slow or idle clients, run a real uvicorn server on a loopback port (`conftest.live_server`),
because the TestClient reads the whole request before the app sees it.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import checkpoint
from cifarlab.cli import main
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_files
from conftest import held_out_files, tiny_run

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient

from cifarlab.serve import Limits, allowed_hosts, create_app, host_allowed
from conftest import copy_run, live_server


def local(app: Any) -> TestClient:
    """A test client that sends `Host: localhost`, as a browser on this machine does."""
    return TestClient(app, base_url="http://localhost:8000")


def bomb_png(side: int) -> bytes:
    """A ~50 KB PNG that decodes to side x side pixels (1-bit, all zero)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + side // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def client(run: Path) -> TestClient:
    return local(create_app(run))


@pytest.fixture(scope="module")
def image(run: Path) -> Path:
    return held_out_files(run)[0]


def test_health_and_openapi(client: TestClient, run: Path) -> None:
    health = client.get("/health").json()
    _, record = checkpoint.load_model(run)
    assert health["status"] == "ok"
    assert health["model"]["name"] == "base" and health["model"]["classes"] == record["classes"]
    assert health["model"]["val_acc"] == pytest.approx(record["metrics"]["val_acc"])
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)
    assert {"200", "400", "413", "415"} <= set(spec["paths"]["/predict"]["post"]["responses"])
    assert client.get("/docs").status_code == 404  # it would load its scripts from a CDN


def test_predict_agrees_with_cifarlab_predict(client: TestClient, run: Path) -> None:
    """Raw body and multipart give the answer of `cifarlab predict` (same decoding, same model)."""
    model, record = checkpoint.load_model(run)
    files = held_out_files(run)[::10]
    expected = predict_files(model, record["classes"], files, 5, torch.device("cpu"))
    for file, want in zip(files, expected, strict=True):
        raw = client.post("/predict", content=file.read_bytes(), headers={"Content-Type": "image/jpeg"})
        form = client.post("/predict?top_k=5", files={"file": (file.name, file.read_bytes(), "image/jpeg")})
        for response in (raw, form):
            assert response.status_code == 200, response.text
            got = response.json()
            assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
            want_probs = [t["prob"] for t in want["top"]]
            # one image a request against a batch of many: the same sums in another order
            assert [t["prob"] for t in got["top"]] == pytest.approx(want_probs, abs=1e-5)
            assert got["model"]["run"] == run.name
    assert len(client.post("/predict?top_k=2", content=files[0].read_bytes()).json()["top"]) == 2
    assert len(client.post("/predict?top_k=50", content=files[0].read_bytes()).json()["top"]) == 10


def test_page_is_self_contained_and_names_the_model(client: TestClient, run: Path) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    _, record = checkpoint.load_model(run)
    assert run.name in page.text and "base" in page.text
    assert f"{100 * record['metrics']['val_acc']:.1f}%" in page.text
    assert "http://" not in page.text and "https://" not in page.text and 'src="//' not in page.text
    assert 'id="report"' not in page.text  # this run has no report


def test_report_link_and_folder(run: Path, tmp_path: Path) -> None:
    own = copy_run(run, tmp_path / "run")
    (own / "report").mkdir()
    (own / "report" / "report.html").write_text("<h1>Training report</h1>")
    (own / "report" / "plot.png").write_bytes(png(np.zeros((4, 4, 3), np.uint8)))
    (tmp_path / "secret.txt").write_text("secret")
    (own / "report" / "link.txt").symlink_to(tmp_path / "secret.txt")
    client = local(create_app(own))
    assert 'href="report/report.html"' in client.get("/").text
    assert client.get("/report/report.html").text == "<h1>Training report</h1>"
    assert client.get("/report/").text == "<h1>Training report</h1>"
    assert client.get("/report/plot.png").headers["content-type"] == "image/png"
    for outside in ("/report/%2e%2e/model.pt", "/report/..%2Fmodel.pt", "/report/%2Fetc%2Fpasswd",
                    "/report//etc/passwd", "/report/link.txt", "/report/missing.html", "/report/%00"):
        response = client.get(outside)
        assert response.status_code == 404, outside
        assert "secret" not in response.text


def test_bad_uploads_get_a_clear_4xx_and_the_server_goes_on(client: TestClient, image: Path) -> None:
    jpeg = image.read_bytes()
    valid_png = png(np.full((32, 32, 3), 128, np.uint8))
    cases = [
        (b"", 400, "empty upload"),
        (b"hello, I am not an image", 415, "not an image"),
        (jpeg[:-64], 400, "truncated"),  # header intact, pixel data cut short
        (valid_png[:-40], 400, "cannot decode"),
        (bomb_png(20000), 413, "too large"),  # 400 MP: refused from the header alone
        (bomb_png(6000), 413, "megapixels"),  # 36 MP: over --max-pixels, under PIL's own limit
    ]
    for body, status, message in cases:
        response = client.post("/predict", content=body, headers={"Content-Type": "image/png"})
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["detail"]
    no_file = client.post("/predict", files={"note": (None, b"just text")})
    assert no_file.status_code == 400 and "no file field" in no_file.json()["detail"]
    assert client.post("/predict", content=jpeg).status_code == 200


def test_other_formats_and_modes_are_accepted(client: TestClient) -> None:
    """Phone cameras write MPO (multi-picture JPEG); PNGs may be RGBA or grey; any size is resized."""
    first, second = (Image.fromarray(np.full((40, 60, 3), v, np.uint8)) for v in (30, 200))
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    bodies = [buffer.getvalue(), png(np.zeros((50, 50, 4), np.uint8)), png(np.zeros((8, 8), np.uint8))]
    for body in bodies:
        assert client.post("/predict", content=body).status_code == 200


def test_limits_are_configurable(run: Path, image: Path) -> None:
    client = local(create_app(run, Limits(max_upload_bytes=500, max_pixels=31 * 31)))
    assert client.post("/predict", content=bytes(600)).status_code == 413
    small = png(np.zeros((32, 32, 3), np.uint8))
    assert len(small) < 500
    assert client.post("/predict", content=small).status_code == 413  # 1024 pixels > 961
    assert client.post("/predict", content=png(np.zeros((31, 31, 3), np.uint8))).status_code == 200


def test_model_is_loaded_once(run: Path, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = checkpoint.load_model

    def counting(path: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", counting)
    client = local(create_app(run))
    for _ in range(3):
        assert client.post("/predict", content=image.read_bytes()).status_code == 200
    client.get("/")
    client.get("/health")
    assert len(calls) == 1


def _http(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def _reply(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while b"}" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_oversized_bodies_are_refused_without_reading_them(run: Path, image: Path, http: str) -> None:
    """For both of uvicorn's HTTP parsers: pure-Python h11 and the faster httptools."""
    pytest.importorskip(http)
    limit = 2**20
    with live_server(create_app(run, Limits(max_upload_bytes=limit)), http) as url:
        port = int(url.rsplit(":", 1)[1])
        # Declared 50 MB: answered at once, before a single body byte is sent.
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 52428800\r\n\r\n"
        with _http(port, head) as sock:
            reply = _reply(sock)
        assert reply.startswith(b"HTTP/1.1 413") and b"50.0 MB" in reply, reply[:200]
        # Streamed without a length: cut off once past the limit, long before 50 MB are sent.
        sent = 0
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        with _http(port, head) as sock:
            piece = b"%x\r\n" % 65536 + bytes(65536) + b"\r\n"
            with contextlib.suppress(OSError):
                while sent < 50 * 2**20 and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(piece)
                    sent += 65536
            reply = _reply(sock)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 20 * 2**20  # the limit plus what the kernel's socket buffers took
        import httpx

        ok = httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=10)
        assert ok.status_code == 200 and ok.json()["top"]


@pytest.mark.slow
def test_serve_command_binds_loopback_and_stops_on_ctrl_c(run: Path) -> None:
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CIFARLAB_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.json()["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_errors_are_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for argv, message in [
            (["serve", "/no/such/run"], "model not found"),
            (["serve", str(run), "--max-pixels", "0"], "--max-pixels must be a positive number, got 0"),
            (["serve", str(run), "--max-upload-mb", "nan"], "--max-upload-mb must be a positive number"),
            (["serve", str(run), "--max-upload-mb", "inf"], "--max-upload-mb must be a positive number"),
            (["serve", str(run), "--max-concurrency", "-1"], "--max-concurrency must be a positive"),
            (["serve", str(run), "--port", "70000"], "--port must be"),
            (["serve", str(run), "--port", str(port)], "cannot listen on 127.0.0.1"),
        ]:
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, err


def test_help_lists_export_and_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "export" in out and "serve" in out


def test_limits_refuse_nan_inf_and_zero() -> None:
    for bad in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(UserError, match="must be a positive number"):
            Limits.from_megabytes(bad)
        with pytest.raises(UserError, match="^max_pixels must be a positive number"):
            Limits(max_pixels=bad)  # type: ignore[arg-type]
    assert Limits.from_megabytes(0.5).max_upload_bytes == 2**19


def test_multipart_content_type_is_case_insensitive(client: TestClient, image: Path) -> None:
    boundary = "cifarlab-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n")
    body = head.encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    for kind in ("multipart/form-data", "Multipart/Form-Data", "MULTIPART/FORM-DATA"):
        headers = {"Content-Type": f"{kind}; boundary={boundary}"}
        response = client.post("/predict", content=body, headers=headers)
        assert response.status_code == 200, (kind, response.text)


# ---------------------------------------------------------------------------------------------
# DNS rebinding: only Host names that reach this server


def test_foreign_host_names_are_refused(run: Path, tmp_path: Path) -> None:
    """A page at attacker.example whose name now resolves to 127.0.0.1 (DNS rebinding) could read
    /predict, /health and /report/* (training images): its requests still say Host: attacker.example."""
    own = copy_run(run, tmp_path / "run")
    (own / "report").mkdir()
    (own / "report" / "report.html").write_text("<h1>report</h1>")
    app = create_app(own)
    for base in ("http://attacker.example", "http://attacker.example:8000", "http://localhost.attacker.example"):
        client = TestClient(app, base_url=base)
        for response in (client.get("/health"), client.get("/report/report.html"), client.get("/"),
                         client.post("/predict", content=b"x")):
            assert response.status_code == 400, (base, response.status_code)
            assert "Host header" in response.json()["detail"]
    for base in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000", "http://LOCALHOST",
                 "http://192.168.1.20:8000"):
        assert TestClient(app, base_url=base).get("/health").status_code == 200, base


def test_host_names_follow_the_bind_address() -> None:
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None  # deliberately public
    named = allowed_hosts("MyBox.lan")
    assert named == frozenset({"localhost", "mybox.lan"})
    assert host_allowed("mybox.lan:8000", named) and host_allowed("MYBOX.LAN.", named)
    loopback = allowed_hosts("127.0.0.1")
    assert loopback is not None
    for good in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "10.0.0.7"):
        assert host_allowed(good, loopback), good
    for bad in ("", "mybox.lan", "attacker.example:8000", "[::1", "127.0.0.1.nip.io"):
        assert not host_allowed(bad, loopback), bad


# ---------------------------------------------------------------------------------------------
# Slow and idle clients, with real sockets on 127.0.0.1


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (reads what it sends meanwhile), None if it did not."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - start
    return None


@pytest.mark.slow
def test_idle_sockets_cannot_take_the_cli_server_down(run: Path) -> None:
    """Issue 12: 4 idle TCP connections with --max-concurrency 4 made /health answer 503 to everyone
    until they closed. Now only requests count, and a socket without a request is dropped after 5 s."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CIFARLAB_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "serve", str(run), "--port", str(port),
                             "--max-concurrency", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        idle[0].sendall(b"GET /health HTTP/1.1\r\nHo")  # a trickler: part of a head, then nothing
        time.sleep(0.5)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status_code == 200, health.text
        waited = [_closed_within(sock, 10) for sock in idle]
        assert all(w is not None and w < 8 for w in waited), waited
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_slow_clients_are_dropped(run: Path, image: Path, http: str) -> None:
    """A trickled head is closed after header_seconds, a head over 64 KB at once, a trickled body
    gets 408 after upload_seconds; meanwhile a normal client is served."""
    pytest.importorskip(http)
    import httpx

    limits = Limits(header_seconds=1.0, upload_seconds=1.0)
    with live_server(create_app(run, limits), http, limits) as url:
        port = int(url.rsplit(":", 1)[1])
        trickle = _http(port, b"GET /health HTTP/1.1\r\n")
        for _ in range(4):  # a header line every 0.3 s never completes the head
            trickle.sendall(b"X-A: b\r\n")
            time.sleep(0.3)
        waited = _closed_within(trickle, 3)
        assert waited is not None, "a trickled head kept its socket"
        flood = _http(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):
            for _ in range(200):
                flood.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        assert _closed_within(flood, 3) is not None, "a 200 KB head was accepted"
        body = _http(port, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\nxx")
        reply = _reply(body)
        assert reply.startswith(b"HTTP/1.1 408") and b"upload too slow" in reply, reply[:200]
        assert _closed_within(body, 3) is not None  # and the socket goes once its head time is up
        assert httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=5).status_code == 200
        for sock in (trickle, flood, body):
            sock.close()


@pytest.mark.slow
def test_uploads_in_flight_are_limited_not_sockets(run: Path, image: Path) -> None:
    import httpx

    limits = Limits(max_concurrency=1, upload_seconds=1.5)
    with live_server(create_app(run, limits), "h11", limits) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [_http(port, b"") for _ in range(5)]
        # idle sockets do not count
        assert httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=5).status_code == 200
        slow = _http(port, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\nx")
        time.sleep(0.3)
        busy = httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=5)
        assert busy.status_code == 503 and "in flight" in busy.json()["detail"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # GETs are never held up
        assert _reply(slow).startswith(b"HTTP/1.1 408")
        assert httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=5).status_code == 200
        for sock in (*idle, slow):
            sock.close()
