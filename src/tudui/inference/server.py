"""`tudui serve`: a FastAPI app around a Predictor, and the page to try it.

    GET  /              the page (static/index.html: inline CSS/JS, no external resource)
    GET  /health        {"status": "ok"}
    GET  /info          model metadata and class names (the model's file name, never a path on the server)
    POST /predict       an image as multipart field `file`, or as the raw request body
                        -> {"predictions": [{"class", "probability"}], "time_ms", ...}
    GET  /docs          Swagger UI, its script and styles served from this server (the fastapi-offline
                        package ships them), so the page loads nothing from any other host; --no-docs turns it off
    GET  /openapi.json  the API's OpenAPI schema

Bad input never stops the server; each case has its status and a one-line JSON
{"error": ...}: empty body 400, body not complete within --read-timeout 408,
over --max-upload-mb 413 (Content-Length checked first, then counted while
reading, so a chunked upload cannot exceed it either), more pixels than the
limit 413 (read from the header, before decoding), an image whose decoding needs
more memory than --max-decode-mb 413 (also from the header), not an image 415, a
bad query parameter (or one given twice) 422; an unknown path 404 and a wrong method
405 answer the same JSON, and so does anything unexpected (500, its traceback in the
server's log).

Memory: a small upload can decode to a large image (a 142 KB PNG is 64 Mpx of
16-bit grey), so decodes are admitted by what they will hold, not by upload size
(budget.py): at most one per CPU core at once, and their declared bytes
(data/images.decode_cost) together within --max-decode-mb; the others wait their
turn. Resident memory stays within the server's own (the model, the libraries)
plus --max-decode-mb plus the uploads being received (each at most
--max-upload-mb) plus the allocator's slack (tests/inference/test_server_memory.py).

Concurrent requests share forward passes: each upload is decoded to uint8 pixels
in the thread pool, then queued for the micro-batcher (batching.py), which
normalises and runs up to --max-batch of them as one batch on its own thread;
while other requests are still being decoded, a batch waits for them, at most
--max-wait-ms (a lone request does not wait; --max-batch 1: one at a time).
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import __version__
from ..core.errors import TuduiError
from ..core.options import ServeOptions, field_meta, range_message
from ..data.images import MAX_PIXELS, BadImage, decode_cost
from ..engine import cam, rejection
from .batching import MicroBatcher
from . import runtime
from .budget import DecodeBudget, cores
from .predictor import UNKNOWN, Predictor

INSTALL_SERVE = "pip install 'tudui[serve]'"
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing (boundaries, part headers) allowed beyond the file limit
DOCS_ASSETS = "/docs/assets"  # where Swagger UI's script, styles and icon are served from

# /predict takes its body as bytes it reads itself (to bound size and time), so its OpenAPI entry declares the
# accepted bodies by hand: the /docs page then offers a file upload, and schema-driven fuzzers send both kinds.
PREDICT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "minLength": 1,
                 "description": "the image (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)"},
    }}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1,
                                            "description": "the image file's bytes (any image/* type is read too)"}},
}}


if sys.version_info >= (3, 11):
    # A timer on the event loop: 7 us a request, against 30 us for anyio.fail_after's cancel scope (measured under
    # uvloop), which was a tenth of the loop's time per request at thousands of requests a second.
    body_deadline = asyncio.timeout
else:
    @contextlib.asynccontextmanager
    async def body_deadline(seconds: float):
        import anyio

        with anyio.fail_after(seconds):
            yield

# Images of at most this many pixels are decoded on the event loop (classify): about 0.1 ms for a 28x28 PNG.
INLINE_DECODE_PIXELS = 128 * 128
# The query strings the direct /predict path answers (_with_direct_predict): none, or topk=K with K >= 1. Any other
# (another parameter, a bad value) goes through FastAPI's route, which checks it and answers 422 in its words.
DIRECT_QUERY = re.compile(rb"(?:topk=([1-9][0-9]{0,8}))?")
_DIRECT_APPS: dict = {}  # FastAPI class -> its subclass with the direct path


def _with_direct_predict(base):
    """`base` (FastAPI's class) answering POST /predict through its `direct_predict` before anything else, the
    other routes as usual.

    Why by hand: under load, FastAPI's way through a request (its middleware stack, routing, the endpoint's
    parameters and jsonable_encoder) took about a quarter of the event loop's busy time for a
    28-px prediction (py-spy under wrk, benchmarks/serve_load.py); the direct path reads the body with the same
    limits, answers with the same JSON and errors, and skips the rest. The route stays declared in FastAPI,
    for the OpenAPI schema and the query strings the direct path leaves to it.
    """
    if base not in _DIRECT_APPS:
        class DirectPredict(base):
            direct_predict = None  # async (scope, receive, send, topk or None), set by create_app

            async def __call__(self, scope, receive, send) -> None:
                if (self.direct_predict is not None and scope["type"] == "http" and scope["path"] == "/predict"
                        and scope["method"] == "POST"
                        and (m := DIRECT_QUERY.fullmatch(scope.get("query_string", b""))) is not None):
                    await self.direct_predict(scope, receive, send, int(m.group(1)) if m.group(1) else None)
                else:
                    await super().__call__(scope, receive, send)

        _DIRECT_APPS[base] = DirectPredict
    return _DIRECT_APPS[base]


def _import_web():
    try:
        import fastapi
        import python_multipart  # noqa: F401  (FastAPI needs python-multipart to parse uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TuduiError(f"serving needs fastapi, uvicorn and python-multipart ({e.name} is missing): "
                         f"{INSTALL_SERVE}") from None
    return fastapi


def _schemas():
    """Pydantic models of the JSON bodies, for the OpenAPI schema only (responses are built as plain dicts)."""
    from pydantic import BaseModel, ConfigDict, Field

    class ClassProbability(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        class_: str = Field(alias="class", description="class name")
        probability: float = Field(ge=0, le=1)

    class ImageInfo(BaseModel):
        width: int
        height: int
        bytes: int

    class PredictResponse(BaseModel):
        predictions: list[ClassProbability] = Field(description="the top-k classes, most probable first")
        labels: list[ClassProbability] | None = Field(None, description="a multi-label model's answer: every class "
                                                                        "whose sigmoid probability reaches its "
                                                                        "threshold, most probable first")
        time_ms: float = Field(description="time in the server from the request's arrival to the answer (ms)")
        preprocess_ms: float = Field(description="decoding and resizing the image (ms)")
        inference_ms: float = Field(description="the forward pass this image was part of (ms)")
        batch: int = Field(ge=1, description="how many requests that forward pass answered")
        image: ImageInfo
        label: str | None = Field(None, description="with --reject-below / --reject auto: the top class, or "
                                                    "'unknown' when the score is below the threshold")
        unknown: bool | None = Field(None, description="with rejection on: whether the image was rejected")
        score: float | None = Field(None, description="with rejection on: the image's --score (msp or energy)")

    class ErrorResponse(BaseModel):
        error: str
        status: int

    class Health(BaseModel):
        status: str

    class Info(BaseModel):
        model: str | None = Field(description="the model's file name (no directory)")
        format: str
        runtime: str = Field(description="what runs the forward pass: torch, onnxruntime or openvino (--runtime)")
        classes: list[str]
        num_classes: int
        img_size: int
        channels: int
        mean: list[float]
        std: list[float]
        arch: str | None
        tudui_version: str | None
        max_upload_mb: float
        max_pixels: int
        max_decode_mb: float
        max_decodes: int
        topk: int
        max_batch: int
        max_wait_ms: float
        read_timeout_s: float
        multi_label: bool = False
        thresholds: list[float] | None = Field(None, description="a multi-label model's per-class thresholds")

    return PredictResponse, ErrorResponse, Health, Info


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def opened_image(data: bytes, max_pixels: int, spec=None) -> tuple[Image.Image, int, int, int]:
    """(the PIL image opened on `data`, its pixels not decoded yet; width; height; bytes its decoding for `spec` (a
    DataSpec) holds at most: 0 without one) from the image header; ApiError 415/413 when unusable. A small upload is
    decoded from the opened image on the event loop, without parsing its header again."""
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            img = Image.open(io.BytesIO(data))  # in memory: no file to close
            w, h = img.size
            cost = decode_cost(img, spec.channels, spec.img_size, spec.crop_pct) if spec is not None else 0
    except Image.DecompressionBombError as e:  # Pillow refuses > 2x its limit already at open
        raise ApiError(413, f"image has too many pixels: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ApiError(415, "the upload is not an image that can be decoded (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)") \
            from None
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h:,} pixels, over this server's limit of {max_pixels:,}")
    return img, w, h, cost


EXPLAIN_METHOD = "layercam"  # POST /explain's default method (?method=): `tudui explain`'s default


def map_png(arr: np.ndarray, m: np.ndarray, side: int = 224) -> bytes:
    """The (S, S, C) uint8 image the model saw, enlarged to `side` px, with the (S, S) map in [0, 1] over it (jet
    colours at half opacity) as PNG bytes."""
    from matplotlib import colormaps

    image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB").resize((side, side),
                                                                                           Image.BILINEAR)
    heat = Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    pixels = np.round(0.5 * np.asarray(image) + 0.5 * colours * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _public_arch(name: str | None) -> str | None:
    """A user model's 'path/to/model.py:Tudui' as 'model.py:Tudui': no directories in what the server tells."""
    return Path(name).name if name and ".py:" in name else name


def create_app(predictor: "Predictor", options: ServeOptions | None = None, *, max_pixels: int = MAX_PIXELS,
               max_decodes: int | None = None, **limits):
    """The FastAPI app serving `predictor` with the limits of `options` (or ServeOptions' fields as keywords:
    `create_app(predictor, max_batch=8)`); uploads over max_upload_mb MiB or `max_pixels` pixels get 413, and so
    does an image whose decoding would hold more than max_decode_mb MiB.

    max_batch: concurrent requests answered by one forward pass at most (1: one request per pass, in arrival
    order); max_wait_ms: how long a request may wait for others to join its batch; read_timeout_s: the
    whole request body must arrive within this many seconds (408 otherwise); docs: serve /docs (Swagger UI);
    max_decodes: images decoded at once at most (None: one per CPU core), their declared bytes within max_decode_mb.
    """
    o = options or ServeOptions.build({"model": predictor.source or "", **limits})  # checks every limit's range
    max_upload_mb, topk, max_batch, max_wait_ms = o.max_upload_mb, o.topk, o.max_batch, o.max_wait_ms
    read_timeout_s, docs, max_decode_mb = o.read_timeout_s, o.docs, o.max_decode_mb
    fastapi = _import_web()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.requests import ClientDisconnect
    from starlette.exceptions import HTTPException as StarletteHTTPException

    max_bytes = int(max_upload_mb * 1024 * 1024)
    # Decoding blocks a thread and holds memory (a 64-Mpx 16-bit PNG: 260 MiB): one decode per core at most, and
    # their declared bytes within the budget, however many requests arrive at once.
    budget = DecodeBudget(int(max_decode_mb * 1024 * 1024), max_decodes or cores())
    page = resources.files("tudui.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    PredictResponse, ErrorResponse, Health, Info = _schemas()
    # Only the file's name: the server's directory layout is nobody's business.
    info = {"model": Path(predictor.source).name if predictor.source else None, "format": predictor.format,
            "runtime": predictor.runtime,
            "classes": predictor.classes, "num_classes": len(predictor.classes), "img_size": predictor.spec.img_size,
            "channels": predictor.spec.channels, "mean": predictor.spec.mean, "std": predictor.spec.std,
            "arch": _public_arch(predictor.meta.get("arch", {}).get("name")), "tudui_version": predictor.meta.get("tudui_version"),
            "max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "max_decode_mb": max_decode_mb,
            "max_decodes": budget.slots, "topk": topk, "max_batch": max_batch,
            "max_wait_ms": max_wait_ms, "read_timeout_s": read_timeout_s,
            "multi_label": predictor.spec.multi_label, "thresholds": predictor.thresholds}

    def forward(arrays: list) -> list:
        """[(H, W, C) uint8 array, ...] -> one ((num_classes,) probabilities, (num_classes,) class indices most
        probable first, score or None) per array, from one forward pass.

        All torch work happens here, on the batcher's single thread: torch calls from many threads at once would
        each start their own team of intra-op threads and fight over the cores.
        """
        logits = predictor.logits(predictor.batch(arrays))  # (B, C, H, W) normalised -> (B, K)
        # with --reject-below / --reject auto, each row's score too (an energy needs the logits, not the probabilities)
        scores = rejection.score(logits, predictor.reject_score, predictor.temperature).tolist() \
            if predictor.reject_limit is not None else [None] * len(arrays)
        # calibrated softmax, or multi-label sigmoids: (num_classes,) NumPy rows, which the event loop reads cheaply
        probs = predictor.probabilities_of(logits).numpy()
        # the top-k order for the whole batch in one call, here rather than per request on the event loop
        return list(zip(probs, predictor.class_order(probs), scores))

    # --max-batch 1 goes through it too: one request per forward pass, in arrival order.
    batcher = MicroBatcher(forward, max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()

    async def one_value_each(request: Request) -> None:
        """?topk=3&topk=5: a parameter given twice is refused (422) rather than its last value quietly taken."""
        names = [k for k, _ in request.query_params.multi_items()]
        twice = sorted({k for k in names if names.count(k) > 1})
        if twice:
            raise ApiError(422, f"invalid request: query parameter {', '.join(map(repr, twice))} given more than "
                                "once; give each once")

    kwargs = dict(title="tudui", description=f"image classifier: {len(predictor.classes)} classes",
                  version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  dependencies=[fastapi.Depends(one_value_each)])
    if docs:
        try:
            from fastapi_offline import FastAPIOffline
        except ImportError:
            raise TuduiError(f"the /docs page needs the fastapi-offline package: {INSTALL_SERVE} "
                             "(or serve without it: --no-docs)") from None
        # Mounts Swagger UI's files at DOCS_ASSETS; the /docs page itself is ours (below), with a policy.
        app = FastAPIOffline(static_url=DOCS_ASSETS, **kwargs)
    else:
        app = fastapi.FastAPI(**kwargs)
    app.__class__ = _with_direct_predict(type(app))  # (FastAPIOffline is a function returning a FastAPI app)

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers or None)

    def api_error(exc: ApiError) -> JSONResponse:
        # 408/413: the rest of the body was not read, so the connection cannot carry another request.
        return error(exc.status, exc.message, **({"Connection": "close"} if exc.status in (408, 413) else {}))

    def unexpected(exc: Exception) -> JSONResponse:
        # sent, then the exception re-raised, so uvicorn logs the traceback; the client learns no internals
        return error(500, f"internal server error ({type(exc).__name__}); the server's log has the details")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return api_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # 404, 405, ...: the same JSON as ours
        return error(exc.status_code, str(exc.detail), **(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return unexpected(exc)  # Starlette sends it, then re-raises

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError):
        for e in exc.errors():  # ?topk=0: the words `tudui predict --topk 0` and `tudui serve --topk 0` use
            if tuple(e.get("loc", ()))[-1:] == ("topk",) and e.get("type") == "greater_than_equal":
                message = range_message("topk", e.get("input"), field_meta(ServeOptions, "topk"))
                return error(422, f"invalid request: {message}")
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error(422, f"invalid request: {problems}")

    async def read_body(scope, stream) -> bytes:
        """The body of the request `scope` from `stream`, its async iterator of byte chunks, refusing (413) as soon
        as it is known to be too big; uploads may be chunked (no length)."""
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
        too_big = ApiError(413, f"upload is over this server's limit of {max_upload_mb:g} MiB (--max-upload-mb)")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, n = [], 0
        try:
            # A client that opens a request and then sends its body slowly (or never) would hold a connection and
            # a buffer forever; the whole body must arrive within read_timeout_s.
            async with body_deadline(read_timeout_s):
                async for chunk in stream:
                    n += len(chunk)
                    if n > limit:
                        raise too_big
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, f"the upload did not arrive within {read_timeout_s:g} s (--read-timeout); "
                                f"{n:,} bytes came") from None
        body = b"".join(chunks)
        if not multipart:
            return body
        # Re-parse the bytes already read (and bounded) with Starlette's own multipart parser.
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, replay).form()
        except Exception as e:  # noqa: BLE001 - malformed multipart framing
            raise ApiError(400, f"malformed multipart upload ({e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart upload has no file field named 'file'")
        data = await upload.read()
        if len(data) > max_bytes:
            raise too_big
        return data

    @app.get("/", response_class=HTMLResponse, summary="the page to try the model in a browser")
    async def index():
        # The page needs nothing from outside this server; the policy makes the browser enforce that.
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'")
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    if docs:
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/docs", include_in_schema=False)
        async def swagger_ui():
            root = app.root_path or ""
            html = get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}", title="tudui API",
                swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                # validatorUrl null: Swagger UI would otherwise send the schema to an outside validator service.
                swagger_ui_parameters={"validatorUrl": None})
            # Everything from this server; the inline script is FastAPI's SwaggerUIBundle call, data: for its icons.
            html.headers["Content-Security-Policy"] = (
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'")
            return html

    @app.get("/health", response_model=Health, summary="is the server up")
    async def health():
        return {"status": "ok"}

    @app.get("/info", response_model=Info, summary="the model (classes, input, preprocessing) and the serving limits")
    async def get_info():
        return info

    documented = {status: {"model": ErrorResponse, "description": why} for status, why in (
        (400, "empty upload, malformed multipart, or no field named 'file'"),
        (408, "the body did not arrive within --read-timeout"),
        (413, "over --max-upload-mb, more pixels than the server's limit, or decoding needs over --max-decode-mb"),
        (415, "not an image that can be decoded"), (422, "a bad query parameter"),
        (501, "POST /explain on a server running an ONNX or TorchScript export"),
        (500, "an unexpected error in the server (its log has the traceback)"))}

    async def upload(scope, stream) -> tuple[bytes, Image.Image, int, int, int]:
        """The request's image bytes, the PIL image opened on them (pixels not decoded yet), its width and height and
        the bytes decoding it will take, or the ApiError every upload route answers the same way: 400 empty, 413 over
        --max-decode-mb (and read_body's and opened_image's own)."""
        data = await read_body(scope, stream)
        if not data:
            raise ApiError(400, "empty upload: send an image as multipart field 'file' or as the request body")
        img, width, height, cost = opened_image(data, max_pixels, predictor.spec)
        if cost > budget.capacity:
            raise ApiError(413, f"decoding this {width}x{height} image needs about {cost / 2**20:,.0f} MiB, over this "
                                f"server's limit of {max_decode_mb:g} MiB (--max-decode-mb)")
        return data, img, width, height, cost

    @app.post("/predict", responses={200: {"model": PredictResponse}, **documented}, summary="classify one image",
              openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, k: int | None = fastapi.Query(
            None, alias="topk", ge=1, description="classes to return (default: the server's --topk)")):
        t0 = time.perf_counter()
        return await classify(t0, *await upload(request.scope, request.stream()), k)

    async def classify(t0: float, data: bytes, img: Image.Image, width: int, height: int, cost: int,
                       k: int | None) -> dict:
        """POST /predict's answer for an upload that arrived at perf_counter() t0 (s) and passed upload()'s checks."""
        def decode(src):
            t1 = time.perf_counter()
            try:
                arr = predictor.spec.decode(src)  # (S, S, C) uint8, as the model was evaluated
            except BadImage as e:
                raise ApiError(415, f"the upload is not a readable image: {e.reason}") from None
            return arr, (time.perf_counter() - t1) * 1000

        if width * height <= INLINE_DECODE_PIXELS:
            # A small image decodes in about 0.1 ms on the event loop; handing it to a thread (and waking the loop
            # when it is done) cost more than that, and the GIL hand-over slowed the batcher's thread too. It is
            # decoded from the image upload() opened: parsing its header again was a twentieth of the loop's time.
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError) as e:  # what data/images.open_image catches
                raise ApiError(415, f"the upload is not a readable image: corrupt or truncated ({e})") from None
            arr, pre_ms = decode(img)
        else:
            # Pillow decoding blocks (and releases the GIL): in the thread pool, one per core at most. Waits for a
            # free core and `cost` bytes of the decode budget, in arrival order; the decoding thread is waited for
            # even if the request is cancelled, so what it holds is counted until it is freed.
            async with budget.admit(cost):
                with batcher.expecting():  # a batch that is forming waits for this request (at most --max-wait-ms)
                    arr, pre_ms = await run_in_threadpool(decode, data)
        (probs, order, score), batch, inf_ms = await batcher.submit(arr)  # (num_classes,) probabilities, ...
        top = predictor.top_classes(probs[None], k or topk, order[None])[0]
        above = predictor.labels_above(probs[None])  # a multi-label model: every class over its threshold
        labels = {} if above is None else {"labels": [{"class": c, "probability": p} for c, p in above[0]]}
        unknown = {} if score is None else {"label": UNKNOWN if score < predictor.reject_limit else top[0][0],
                                            "unknown": score < predictor.reject_limit, "score": score}
        return {"predictions": [{"class": c, "probability": p} for c, p in top], **labels, **unknown,
                "time_ms": round((time.perf_counter() - t0) * 1000, 3), "preprocess_ms": round(pre_ms, 3),
                "inference_ms": round(inf_ms, 3), "batch": batch,
                "image": {"width": width, "height": height, "bytes": len(data)}}

    async def direct_predict(scope, receive, send, k: int | None) -> None:
        """POST /predict as an ASGI app (see _with_direct_predict): the route's answer, status and errors."""
        t0 = time.perf_counter()

        async def chunks():  # the body's bytes as they arrive, as Starlette's Request.stream() gives them
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        try:
            # encoded as JSONResponse encodes it, without building one (its headers object and call path were a
            # twentieth of the event loop's time per request): the two messages it would send are sent below
            body = json.dumps(await classify(t0, *await upload(scope, chunks()), k), ensure_ascii=False,
                              allow_nan=False, separators=(",", ":")).encode("utf-8")
        except ClientDisconnect:
            return  # nobody left to answer
        except ApiError as e:
            await api_error(e)(scope, receive, send)
            return
        except Exception as e:
            await unexpected(e)(scope, receive, send)
            raise  # uvicorn logs the traceback, as for the other routes
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    app.direct_predict = direct_predict

    explain_lock = threading.Lock()  # maps need gradients: one at a time, off the batcher's thread
    explain_layer: list = []  # the layer maps are read from, chosen on the first request

    def class_map(arr, wanted: str | None, method: str):
        """(H, W, C) uint8 -> ((S, S) map in [0, 1], class index, its probability): `method` from the layer
        engine/cam.py chooses, as `tudui explain` computes them."""
        with explain_lock:
            x = predictor.batch([arr])
            probs = predictor.probabilities(x)[0]
            c = predictor.classes.index(wanted) if wanted is not None else int(probs.argmax())
            if not explain_layer:
                explain_layer.append(cam.find_layer(predictor.model, x))
            m = cam.class_maps(predictor.model, x, [c], method, explain_layer[0])[0]
        return m, c, float(probs[c])

    @app.post("/explain", responses={200: {"description": "the image as the model saw it with the map over it "
                                                          "(PNG), or with ?format=json the map as numbers",
                                           "content": {"image/png": {}, "application/json": {}}}, **documented},
              summary="where the evidence for a class lies in one image (class-activation map)",
              openapi_extra={"requestBody": PREDICT_BODY})
    async def explain(request: Request, fmt: str = fastapi.Query("png", alias="format", pattern="^(png|json)$",
                                                                 description="png, or json for the map as numbers"),
                      wanted: str | None = fastapi.Query(None, alias="class", description="the class mapped "
                                                         "(default: the image's top class)",
                                                         json_schema_extra={"enum": list(predictor.classes)}),
                      method: str = fastapi.Query(EXPLAIN_METHOD, description="how the map is computed, as `tudui "
                                                  "explain --method` (gradcam++ spelled gradcam%2B%2B in a URL)",
                                                  json_schema_extra={"enum": list(cam.METHODS)})):
        method = method.replace(" ", "+")  # a '+' left unescaped in the query string arrives as a space
        if predictor.format not in runtime.PYTORCH_FORMATS:
            raise ApiError(501, f"maps need the PyTorch model; this server runs a {predictor.format} export: serve "
                                "its checkpoint to explain")
        if wanted is not None and wanted not in predictor.classes:
            raise ApiError(422, f"invalid request: class {wanted!r} is not one of the model's classes")
        if method not in cam.METHODS:
            raise ApiError(422, f"invalid request: method {method!r} is not one of {', '.join(cam.METHODS)}")
        data, _, width, height, cost = await upload(request.scope, request.stream())

        def decode():
            try:
                return predictor.spec.decode(data)
            except BadImage as e:
                raise ApiError(415, f"the upload is not a readable image: {e.reason}") from None

        async with budget.admit(cost):
            arr = await run_in_threadpool(decode)
        m, c, prob = await run_in_threadpool(class_map, arr, wanted, method)
        if fmt == "json":  # "layer": None for a method that perturbs the input instead (occlusion)
            return {"class": predictor.classes[c], "probability": prob, "method": method,
                    "layer": None if method in cam.INPUT_METHODS else explain_layer[0].name,
                    "map": np.round(m, 4).tolist()}
        return Response(map_png(arr, m), media_type="image/png")

    app.state.batcher = batcher  # for tests and benchmarks: batches run, items answered
    app.state.decode_budget = budget  # for tests: the most bytes and decodes admitted at once
    return app


def listen_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` TCP sockets on host:port (0: a free port) that the kernel spreads new connections over (SO_REUSEPORT, on
    Linux: inference/http.py says why), one per `--workers` process; elsewhere one, which they all share."""
    if n == 1 or not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return [listen_socket(host, port)]
    # First a plain socket, which cannot be bound where any other socket is: with SO_REUSEPORT alone, a second tudui
    # serve of the same user on the same port would silently share it (and its clients) instead of failing.
    probe = listen_socket(host, port)
    port = probe.getsockname()[1]
    probe.close()
    socks = [listen_socket(host, port, reuse_port=True)]
    try:
        for _ in range(n - 1):
            socks.append(listen_socket(host, port, reuse_port=True))
    except TuduiError:
        for sock in socks:
            sock.close()
        raise
    return socks


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port), for uvicorn to listen on; `reuse_port`: SO_REUSEPORT, so
    more sockets can be bound to the same port (by this user).

    Bound here so a busy port or a bad host is a one-line error (uvicorn would log it and exit).
    """
    sock = None
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose
        # socket says so, and with it on, every response (headers and body written separately) waited ~40 ms for
        # the client's delayed ACK: 45 ms per request instead of 0.4 ms on loopback.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise TuduiError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None
    return sock


WORKER_OPTIONS_ENV = "TUDUI_SERVE_OPTIONS"  # the ServeOptions (JSON) each --workers process builds its app from
WORKER_ONNX_ENV = "TUDUI_SERVE_ONNX"  # the ONNX Runtime copy the parent made (inference/runtime.py), or empty


def worker_app():
    """The app of one `--workers` process (uvicorn's factory, run in the spawned process): its own model, run on one
    thread, so N processes use N cores without fighting over them."""
    import torch

    o = ServeOptions(**json.loads(os.environ[WORKER_OPTIONS_ENV]))
    torch.set_num_threads(1)  # also onnxruntime's and OpenVINO's thread count (inference/formats.py)
    predictor = Predictor.from_path(o.model, device=o.device, tta=o.tta, model_file=o.model_file,
                                    trust_code=True)  # the parent already had the user's consent, or refused
    predictor.reject(o.reject_below, o.reject, o.coverage, o.score)  # as the parent checked it
    runtime.attach(predictor, Path(os.environ[WORKER_ONNX_ENV]) if os.environ.get(WORKER_ONNX_ENV) else None)
    return create_app(predictor, o)


def serve(options: ServeOptions) -> None:
    """Load `options.model` (checkpoint, run directory, .onnx, ...) and serve it with uvicorn until interrupted:
    in this process (--workers 1), or in N spawned processes sharing the listening socket (inference/http.py).

    The options were checked when they were built (core/options.py), so a typo costs no waiting for the model; the
    model is loaded here first either way, so a bad model file is one error line before anything listens."""
    _import_web()
    o = options
    workers = o.processes()
    folder = Path(tempfile.mkdtemp(prefix="tudui-serve-"))  # the ONNX Runtime copy, removed when serving ends
    try:
        # (no name for the predictor here: with --workers N, _serve lets go of it once the workers load their own)
        _serve(Predictor.from_path(o.model, device=o.device, tta=o.tta, model_file=o.model_file,
                                   trust_code=o.trust_code)
               .reject(o.reject_below, o.reject, o.coverage, o.score),  # "unknown" below a threshold (checked here)
               o, workers, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(predictor: Predictor, o: ServeOptions, workers: int, folder: Path) -> None:
    import uvicorn

    from .http import run_workers, uvicorn_config

    host, port = o.host, o.port
    onnx_file, runs_on = runtime.prepare(predictor, o.runtime, folder)
    app = create_app(runtime.attach(predictor, onnx_file), o) if workers == 1 else None
    socks = listen_sockets(host, port, workers)
    if host not in ("127.0.0.1", "localhost", "::1"):  # 0.0.0.0 or an interface address: reachable from outside
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can use the model "
              "(there is no authentication); use the default --host 127.0.0.1 to keep it local",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    batching = f"batches of up to {o.max_batch}, {o.max_wait_ms:g} ms wait" if o.max_batch > 1 else \
        "one request per pass"
    processes = f"; {workers} worker processes" if workers > 1 else ""
    line = (f"tudui: serving {predictor.source} ({predictor.format} on {runs_on}, {len(predictor.classes)} classes; "
            f"{batching}{processes}) on http://{shown}:{socks[0].getsockname()[1]}/  (Ctrl+C stops)")
    try:
        if workers == 1:
            print(line, flush=True)
            uvicorn.Server(uvicorn_config(app, o)).run(sockets=socks)
        else:
            del predictor  # each worker loads its own
            os.environ[WORKER_OPTIONS_ENV] = json.dumps(dataclasses.asdict(o))  # inherited by the spawned workers
            os.environ[WORKER_ONNX_ENV] = str(onnx_file or "")
            run_workers(uvicorn_config(f"{__name__}:worker_app", o, factory=True, workers=workers), socks,
                        lambda: print(line, flush=True))
    finally:
        for sock in socks:
            sock.close()
