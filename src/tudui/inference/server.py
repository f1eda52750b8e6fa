"""`tudui serve`: a FastAPI app around a Predictor, and the page to try it.

    GET  /          the page (static/index.html: inline CSS/JS, no external resource)
    GET  /health    {"status": "ok"}
    GET  /info      model metadata and class names
    POST /predict   an image as multipart field `file`, or as the raw request body
                    -> {"predictions": [{"class", "probability"}], "time_ms", ...}

Bad input never stops the server; each case has its status and a one-line JSON
{"error": ...}: empty body 400, over --max-upload-mb 413 (Content-Length checked
first, then counted while reading, so a chunked upload cannot exceed it either),
more pixels than the limit 413 (read from the header, before decoding), not an
image 415.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.
import io
import socket
import sys
import time
import warnings
from importlib import resources

from ..data.images import MAX_PIXELS, BadImage
from ..core.errors import TuduiError
from .predictor import Predictor

INSTALL_SERVE = "pip install 'tudui[serve]'"
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing (boundaries, part headers) allowed beyond the file limit


def _import_web():
    try:
        import fastapi
        import python_multipart  # noqa: F401  (FastAPI needs python-multipart to parse uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TuduiError(f"serving needs fastapi, uvicorn and python-multipart ({e.name} is missing): "
                         f"{INSTALL_SERVE}") from None
    return fastapi


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_pixels(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image header, before any decoding; ApiError 415/413 when unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError as e:  # Pillow refuses > 2x its limit already at open
        raise ApiError(413, f"image has too many pixels: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ApiError(415, "the upload is not an image that can be decoded (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)") \
            from None
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h:,} pixels, over this server's limit of {max_pixels:,}")
    return w, h


def create_app(predictor: "Predictor", max_upload_mb: float = 10.0, topk: int = 5, max_pixels: int = MAX_PIXELS):
    """The FastAPI app serving `predictor`; uploads over `max_upload_mb` MiB or `max_pixels` pixels get 413."""
    fastapi = _import_web()
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    max_bytes = int(max_upload_mb * 1024 * 1024)
    page = resources.files("tudui.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    info = {"model": predictor.source, "format": predictor.format, "classes": predictor.classes,
            "num_classes": len(predictor.classes), "img_size": predictor.spec.img_size,
            "channels": predictor.spec.channels, "mean": predictor.spec.mean, "std": predictor.spec.std,
            "arch": predictor.meta.get("arch", {}).get("name"), "tudui_version": predictor.meta.get("tudui_version"),
            "max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "topk": topk}

    app = fastapi.FastAPI(title="tudui", description="image classifier", version=str(info["tudui_version"]))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status)

    async def read_body(request: Request) -> bytes:
        """The body, refusing (413) as soon as it is known to be too big; uploads may be chunked (no length)."""
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
        too_big = ApiError(413, f"upload is over this server's limit of {max_upload_mb:g} MiB (--max-upload-mb)")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise too_big
            chunks.append(chunk)
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
            form = await Request(request.scope, replay).form()
        except Exception as e:  # noqa: BLE001 - malformed multipart framing
            raise ApiError(400, f"malformed multipart upload ({e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart upload has no file field named 'file'")
        data = await upload.read()
        if len(data) > max_bytes:
            raise too_big
        return data

    @app.get("/", response_class=HTMLResponse)
    async def index():
        # The page needs nothing from outside this server; the policy makes the browser enforce that.
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'")
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def get_info():
        return info

    @app.post("/predict")
    async def predict(request: Request, k: int | None = fastapi.Query(None, alias="topk", ge=1)):
        t0 = time.perf_counter()
        data = await read_body(request)
        if not data:
            raise ApiError(400, "empty upload: send an image as multipart field 'file' or as the request body")
        width, height = check_pixels(data, max_pixels)

        def run():  # decoding and the forward pass block: run them off the event loop
            t1 = time.perf_counter()
            try:
                x = predictor.preprocess([data])  # (1, C, S, S) normalised float
            except BadImage as e:
                raise ApiError(415, f"the upload is not a readable image: {e.reason}") from None
            t2 = time.perf_counter()
            probs = predictor.probabilities(x)[0]  # (num_classes,)
            return probs, (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000

        probs, pre_ms, inf_ms = await run_in_threadpool(run)
        top = predictor.top_classes(probs[None], k or topk)[0]
        return {"predictions": [{"class": c, "probability": p} for c, p in top],
                "time_ms": round((time.perf_counter() - t0) * 1000, 3), "preprocess_ms": round(pre_ms, 3),
                "inference_ms": round(inf_ms, 3), "image": {"width": width, "height": height, "bytes": len(data)}}

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0, topk: int = 5,
          device: str = "auto", log_level: str = "info", tta: bool | None = None, model_file: str | None = None) -> None:
    """Load `model` (checkpoint, run directory, .onnx, ...) and serve it with uvicorn until interrupted."""
    _import_web()
    import uvicorn

    if max_upload_mb <= 0:
        raise TuduiError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    predictor = Predictor.from_path(model, device=device, tta=tta, model_file=model_file)
    app = create_app(predictor, max_upload_mb=max_upload_mb, topk=topk)
    # Bind here so a busy port or a bad host is a one-line error (uvicorn would log it and exit);
    # --port 0 takes a free port, printed below.
    sock = None
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise TuduiError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None
    if host not in ("127.0.0.1", "localhost", "::1"):  # 0.0.0.0 or an interface address: reachable from outside
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can use the model "
              "(there is no authentication); use the default --host 127.0.0.1 to keep it local",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"tudui: serving {predictor.source} ({predictor.format}, {len(predictor.classes)} classes) "
          f"on http://{shown}:{sock.getsockname()[1]}/  (Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
