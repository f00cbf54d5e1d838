"""A web demo and JSON API for one model: `cifarlab serve RUN [--host 127.0.0.1] [--port 8000]`.

    cifarlab serve runs/base-20261122-101500
    curl --data-binary @cat.jpg http://127.0.0.1:8000/predict
    curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?top_k=3'

FastAPI + uvicorn rather than Gradio: the upload path has to refuse a 50 MB body before reading it
and a decompression bomb before decoding it, which needs control of the raw request stream; FastAPI
gives that plus an OpenAPI description for free, in a few small, well-kept packages, and the page
is one self-contained HTML file (`page.py`). fastapi/uvicorn are imported inside functions:
`cifarlab train` must not need them.

Every upload goes through the same path as `cifarlab predict`: `sources.decode_image` (any size or
mode to 32x32 RGB), then the model, loaded once at start. Bad input is a 4xx JSON error
`{"detail": "..."}` and the server goes on serving.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
# time, and the request/response classes are imported inside `create_app`.

import contextlib
import importlib.util
import io
import ipaddress
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cifarlab import checkpoint, rundir
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_logits
from cifarlab.serve.limits import Limits
from cifarlab.serve.page import render_page
from cifarlab.sources import IMAGE_FORMATS, decode_image  # the formats PIL may open: not EPS & co.

REPORT_DIR = "report"
MAX_HEAD_BYTES = 64 << 10  # a request line and headers; browsers send 1-2 KB


class Rejected(Exception):
    """An upload the server will not classify: HTTP status and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Predictor:
    """The model, loaded once, and the bytes -> 32x32 -> probabilities path."""

    def __init__(self, run_or_ckpt: str | Path, max_pixels: int, weights: str = "best",
                 model: checkpoint.ModelArg = None):
        self.model_file = checkpoint.find_model_file(run_or_ckpt, weights).resolve()
        self.model, record = checkpoint.load_model(self.model_file, model=model)
        self.classes: list[str] = list(record["classes"])
        self.max_pixels = max_pixels
        # None where RUN/report is missing or a link: /report/ must not serve another folder
        self.report_dir = rundir.found_output_folder(self.model_file.parent, REPORT_DIR)
        metrics = record.get("metrics", {})
        self.info: dict[str, Any] = {
            "name": str(record.get("model")), "recipe": record.get("config", {}).get("recipe"),
            "run": self.model_file.parent.name, "classes": self.classes,
            "val_acc": metrics.get("val_acc"), "weights": record.get("weights", "final"),
            "epoch": record.get("epoch"),
        }
        self.weights_used = checkpoint.describe_weights(record, self.model_file)

    def check_header(self, data: bytes) -> None:
        """Refuse non-images and oversized images from the header alone, before any decoding."""
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size
        except Image.DecompressionBombError as exc:
            raise Rejected(413, f"image too large: {exc}") from exc
        except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
            accepted = ", ".join(IMAGE_FORMATS)
            raise Rejected(415, f"not an image, or a damaged one (accepted: {accepted})") from exc
        if width * height > self.max_pixels:
            raise Rejected(413, f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                                f"the limit is {self.max_pixels / 1e6:g} (--max-pixels)")

    def predict(self, data: bytes, top_k: int = 5) -> list[dict[str, Any]]:
        """Top-k labels with probabilities for one encoded image."""
        if not data:
            raise Rejected(400, "empty upload: send an image as the request body or as a multipart "
                                "field named 'file'")
        self.check_header(data)
        try:
            image, _ = decode_image(data, "upload")
        except UserError as exc:  # e.g. a truncated file whose header was fine
            raise Rejected(400, str(exc)) from exc
        batch = np.stack([image])  # a writable copy: decode_image's array is read-only
        probs = predict_logits(self.model, batch, torch.device("cpu")).softmax(1)[0]
        top = probs.topk(max(1, min(top_k, len(self.classes))))
        return [{"label": self.classes[int(i)], "prob": float(p)}
                for p, i in zip(top.values, top.indices, strict=True)]


def create_app(run_or_ckpt: str | Path, limits: Limits = Limits(), host: str = "127.0.0.1",
               weights: str = "best", model: checkpoint.ModelArg = None) -> Any:
    """The FastAPI app for one model (loaded here, once), answering to the Host names that reach
    an address `host` (see `allowed_hosts`)."""
    import anyio.to_thread
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse
    from pydantic import BaseModel

    predictor = Predictor(run_or_ckpt, limits.max_pixels, weights, model)
    limiter = anyio.CapacityLimiter(limits.workers)

    class Guess(BaseModel):
        label: str
        prob: float

    class ModelInfo(BaseModel):
        name: str
        recipe: str | None
        run: str
        classes: list[str]
        val_acc: float | None
        weights: str  # "best" or "final": which weights answer
        epoch: int | None  # the epoch those weights are from

    class Prediction(BaseModel):
        top: list[Guess]
        model: ModelInfo

    class Health(BaseModel):
        status: str
        model: ModelInfo

    class Error(BaseModel):
        detail: str

    # /docs and /redoc load their scripts from a CDN, so they stay off; /openapi.json is served.
    app = FastAPI(title="cifarlab", summary=f"Image classifier {predictor.info['run']}",
                  docs_url=None, redoc_url=None)
    app.state.predictor = predictor
    app.add_middleware(Guard, hosts=allowed_hosts(host), max_requests=limits.max_concurrency)
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Error, "description": "empty, truncated or undecodable upload"},
        413: {"model": Error, "description": "upload or image larger than the server's limits"},
        415: {"model": Error, "description": "not an image"},
    }
    upload_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        has_report = predictor.report_dir is not None and (predictor.report_dir / "report.html").is_file()
        return HTMLResponse(render_page(predictor.info, limits.max_upload_bytes, has_report))

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.info}

    @app.post("/predict", response_model=Prediction, responses=errors, openapi_extra=upload_body)
    async def predict(request: Request,
                      top_k: int = Query(5, ge=1, le=1000, description="how many classes")) -> dict[str, Any]:
        """Classify one image sent as the raw body or as a multipart field `file`."""
        try:
            data = await read_upload(request, limits.max_upload_bytes, limits.upload_seconds)
            top = await anyio.to_thread.run_sync(predictor.predict, data, top_k, limiter=limiter)
        except Rejected as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        return {"top": top, "model": predictor.info}

    @app.get("/report/{path:path}", include_in_schema=False)
    def report(path: str) -> FileResponse:
        """Files of RUN/report/ only: the resolved path (symlinks too) must stay inside it."""
        found = False
        if predictor.report_dir is not None:
            root = predictor.report_dir.resolve()
            try:
                target = (root / (path or "report.html")).resolve()
                found = target.is_relative_to(root) and target.is_file()
            except (OSError, ValueError):  # e.g. a NUL byte in the path
                found = False
        if not found:
            raise HTTPException(404, "not found")
        return FileResponse(target)

    return app


async def read_upload(request: Any, limit: int, seconds: float = Limits.upload_seconds) -> bytes:
    """The image bytes of a raw or multipart body, never holding more than `limit` bytes of it,
    nor waiting more than `seconds` for all of it."""
    import anyio
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Rejected(413, too_large(int(declared), limit))
    body = bytearray()
    try:
        with anyio.fail_after(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise Rejected(413, too_large(None, limit))
    except TimeoutError as exc:
        raise Rejected(408, f"upload too slow: the image did not arrive within {seconds:g} s") from exc
    except ClientDisconnect as exc:  # gone mid-upload: nobody to answer, nothing to log
        raise Rejected(400, "the client closed the connection during the upload") from exc
    data = bytes(body)
    del body  # at most one copy alive at a time
    # media types are case-insensitive (RFC 9110): Multipart/Form-Data is multipart too
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await _multipart_file(request.headers, data)
    return data


def too_large(size: int | None, limit: int) -> str:
    what = f"{size / 2**20:.1f} MB, over" if size is not None else "over"
    return f"upload too large: {what} the limit of {limit / 2**20:g} MB (--max-upload-mb)"


async def _multipart_file(headers: Any, body: bytes) -> bytes:
    """The first file field of a multipart body (already size-capped)."""
    from collections.abc import AsyncGenerator

    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise Rejected(400, f"bad multipart upload: {exc.message}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Rejected(400, "the multipart upload has no file field (send the image as 'file')")
        return await files[0].read()
    finally:
        await form.close()


class Guard:
    """ASGI middleware in front of the app: the Host check, and the limit on uploads in flight.
    Only requests with a body count: they hold memory and CPU, and a client that trickles one holds
    its place for up to `upload_seconds`; the page, /health and the report stay answered meanwhile.

    The Host check stops DNS rebinding: a web page at attacker.example can make its own name resolve
    to 127.0.0.1, and the browser then lets it read this server's answers (predictions, the report's
    training images). It cannot change the Host header, which still says attacker.example.
    """

    def __init__(self, app: Any, hosts: frozenset[str] | None, max_requests: int):
        self.app, self.hosts, self.max_requests = app, hosts, max_requests
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.hosts is not None and not host_allowed(host, self.hosts):
            names = ", ".join(sorted(self.hosts))
            detail = (f"this server answers to IP addresses and {names} in the Host header; "
                      "start it with --host NAME to be reached by another name")
            return await JSONResponse({"detail": detail}, 400)(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):  # the page, /health, report files: cheap, no body
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_requests:
            detail = f"busy: {self.max_requests} uploads in flight (--max-concurrency); try again"
            return await JSONResponse({"detail": detail}, 503, {"Retry-After": "1"})(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The Host names a server bound to `host` answers to, besides IP addresses; None: any.

    Bound to 0.0.0.0 or :: the server is deliberately reachable by anyone on the network, under any
    name, so it answers to every Host. Otherwise: localhost, and `host` itself when it is a name.
    An IP address in the Host header is always fine: DNS rebinding needs a name.
    """
    if host in ("0.0.0.0", "::", ""):
        return None
    return frozenset({"localhost", host.lower().rstrip(".")})


def host_allowed(header: str, hosts: frozenset[str]) -> bool:
    """Whether a Host header (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`) names this server."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.split(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in hosts


def http_protocol(limits: Limits, http: str = "auto") -> type:
    """uvicorn's HTTP protocol (httptools if installed, else h11) with what it lacks: a request head
    must arrive within `limits.header_seconds` of connecting or of the last response, and be at most
    MAX_HEAD_BYTES. uvicorn's keep-alive timer stops at the first byte, so without these a client
    that sends nothing, or a byte a second, holds its socket forever (slowloris)."""
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base: Any
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class HeadDeadline(base):
        # `self.cycle` is uvicorn's current request: it changes when a new request head is complete.
        _head_timer: Any = None
        _head_bytes = 0  # received since the last response (or the connection) without a full head
        _waiting_after: Any = None  # the request that was current then

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is self._waiting_after:  # still no complete head
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self.transport.close()

        def on_response_complete(self) -> None:
            self._await_head()  # first: a pipelined request that super() starts counts as arrived
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._waiting_after, self._head_bytes = self.cycle, 0
            self._head_timer = self.loop.call_later(limits.header_seconds, self._head_overdue)

        def _head_overdue(self) -> None:
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


def uvicorn_config(app: Any, limits: Limits = Limits(), http: str = "auto") -> Any:
    """How `serve` runs uvicorn (tests use it too)."""
    import uvicorn

    return uvicorn.Config(app, http=http_protocol(limits, http), ws="none", log_level="warning",
                          limit_concurrency=limits.max_connections, timeout_keep_alive=5)


def listen(host: str, port: int) -> socket.socket:
    """Bind before starting, so a taken port is one clear error rather than a uvicorn traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(run_or_ckpt: str | Path, host: str = "127.0.0.1", port: int = 8000,
          limits: Limits = Limits(), weights: str = "best", model: checkpoint.ModelArg = None) -> None:
    """Load the model, bind, and serve until Ctrl-C. Python form of `cifarlab serve`."""
    import uvicorn

    app = create_app(run_or_ckpt, limits, host, weights, model)
    sock = listen(host, port)
    # One image is tiny: many requests on one thread each beat one request on many threads.
    torch.set_num_threads(1)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    info = app.state.predictor.info
    print(f"cifarlab: serving {info['run']} (model {info['name']}) with "
          f"{app.state.predictor.weights_used} on http://{shown}:{bound_port}/ (Ctrl-C stops)",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops cleanly on Ctrl-C, then re-raises it
        uvicorn.Server(uvicorn_config(app, limits)).run(sockets=[sock])
    print("cifarlab: server stopped", flush=True)
