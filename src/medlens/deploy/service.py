"""The prediction service: an HTTP API and a web page over one :class:`~medlens.deploy.Predictor`.

>>> app = create_app(Predictor.from_bundle("model.bundle"), token="s3cret")
>>> uvicorn.run(app, host="127.0.0.1", port=8000)           # or `medlens serve model.bundle`

Endpoints: ``POST /v1/predict`` (multipart field ``file``; ``heatmap=true``, ``mask=true`` as query or
form fields; ``viewer=true``: a 3D image and its mask / heat map / boxes as NIfTI for the 3D viewer),
``GET /v1/model`` (the model card), ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the web
page) and ``GET /static/niivue.js`` / ``/static/medlens_viewer.js`` (the 3D viewer's scripts, cached).
A model of several inputs (issue 16) takes one file field per view,
``view:NAME`` (a model of one image keeps ``file``), and its clinical values as a JSON object in the form
field ``clinical``; every file passes the same upload checks and the whole case runs under one work budget
(and in one worker). With a token every endpoint but ``/healthz``, ``/`` and ``/static/`` needs
``Authorization: Bearer <token>``. Every refusal is JSON ``{"error": "..."}``; logs and errors carry
status, size, type and latency only, never a file name, a path or anything from a DICOM header.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from medlens.budget import SERVICE_BUDGET, WorkBudget, work_budget
from medlens.deploy.uploads import UploadError, UploadLimits, staged_upload
from medlens.deploy.workers import WorkerPool, WorkerRefusal
from medlens.errors import BudgetError, MedlensError

LOG = logging.getLogger("medlens.service")
ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/static/niivue.js", "/static/medlens_viewer.js")
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# multipart boundaries and part headers around the file
_FORM_OVERHEAD_BYTES = 64 * 1024
# a refused body up to this much past the limit is read and dropped so the client sees the 413
_DRAIN_BYTES = 16 << 20
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
OPTIONS = ("heatmap", "mask", "overlay", "map", "viewer")  # POST /v1/predict's boolean options
#: the options every model takes (the others: those its task answers); viewer: a 3D input's volumes for the 3D viewer
SERVICE_OPTIONS = ("viewer",)
STATIC_MAX_AGE_S = 86400  # the viewer's scripts change only with the installed medlens
CLINICAL_FIELD, VIEW_PREFIX, STUDY_FIELD = "clinical", "view:", "study"
MAX_CLINICAL_CHARS = 64 * 1024  # the clinical form field: a JSON object of a few values


@dataclass(frozen=True)
class FormFields:
    """The form ``POST /v1/predict`` takes for a model.

    Attributes:
        files: the file fields: ``("file",)``, or ``("view:NAME", ...)`` for a model of named views.
        clinical: whether the ``clinical`` field (a JSON object) is taken.
        series_rules: a model of several DICOM series (``dataset.series_rules``) also takes the field ``study``
            instead of the views: a .zip of the study, whose series these rules pick.
    """

    files: tuple[str, ...]
    clinical: bool
    series_rules: tuple[str, ...] = ()

    @classmethod
    def of(cls, predictor) -> FormFields:
        views = tuple(getattr(predictor, "views", ()))
        files = tuple(f"{VIEW_PREFIX}{v}" for v in views) or ("file",)
        config = getattr(predictor, "config", None)
        rules = tuple(config.dataset.series_rules or ()) if config is not None else ()
        return cls(files, getattr(predictor, "clinical", None) is not None, rules)

    @property
    def fused(self) -> bool:
        return self.files != ("file",) or self.clinical

    def describe(self) -> str:
        study = f" (or {STUDY_FIELD}: a .zip of the DICOM study)" if self.series_rules else ""
        return ", ".join([*self.files, *((CLINICAL_FIELD,) if self.clinical else ())]) + study


@dataclass
class Submission:
    """A parsed ``POST /v1/predict``: the uploads by field, the clinical record (``None``: none sent), the options."""

    uploads: dict
    clinical: dict | None
    options: dict[str, bool]


class Metrics:
    """Request counts per endpoint, method and status, and a latency histogram per endpoint (thread-safe)."""

    def __init__(self, info: dict[str, str]):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, list] = {}  # endpoint -> [bucket counts..., sum, count]
        self._info = info

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, method, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            row = self._latency.setdefault(endpoint, [0] * len(LATENCY_BUCKETS_S) + [0.0, 0])
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                row[i] += seconds <= bound
            row[-2] += seconds
            row[-1] += 1

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in self._info.items())
        lines = ["# HELP medlens_model_info The model this service predicts with.", "# TYPE medlens_model_info gauge",
                 f"medlens_model_info{{{labels}}} 1",
                 "# HELP medlens_requests_total HTTP requests by endpoint, method and status.",
                 "# TYPE medlens_requests_total counter"]
        with self._lock:
            for (endpoint, method, status), n in sorted(self._counts.items()):
                lines.append(f'medlens_requests_total{{endpoint="{endpoint}",method="{method}",status="{status}"}} {n}')
            lines += ["# HELP medlens_request_duration_seconds Time from request to the end of the response.",
                      "# TYPE medlens_request_duration_seconds histogram"]
            for endpoint, row in sorted(self._latency.items()):
                for bound, n in zip((*LATENCY_BUCKETS_S, "+Inf"), (*row[:-2], row[-1])):
                    lines.append(f'medlens_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {n}')
                lines.append(f'medlens_request_duration_seconds_sum{{endpoint="{endpoint}"}} {row[-2]:.6f}')
                lines.append(f'medlens_request_duration_seconds_count{{endpoint="{endpoint}"}} {row[-1]}')
        return "\n".join(lines) + "\n"


def scrub_paths(message: str) -> str:
    """``message`` without any temporary upload folder's path (``/tmp/medlens-upload-XXXX/...``)."""
    return re.sub(r"/?[^\s'\":]*medlens-upload-[^\s'\":]*", "the upload", message)


def scrub_upload(message: str, staged) -> str:
    """``message`` without the staged upload's temporary path or the names inside it (a zip's entry names
    may identify a patient, and readers quote the file they failed on)."""
    message = scrub_paths(staged.scrub(message))
    names = {part for path in staged.folder.rglob("*") for part in
             (str(path.relative_to(staged.folder)), path.name) if len(part) >= 3}
    for name in sorted(names, key=len, reverse=True):
        message = message.replace(name, "a file of the upload")
    return message


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Gate:
    """ASGI middleware: caps the request body while it streams in, counts and times every request, logs it.

    A ``Content-Length`` past the cap is answered 413 before the body is read; a body without one
    (chunked) is counted as it arrives and the endpoint reading it gets an :class:`UploadError` (413).
    """

    def __init__(self, app, *, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, state = time.perf_counter(), {"status": 500, "received": 0}
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        scope.setdefault("state", {})

        async def counted_receive():
            message = await receive()
            state["received"] += len(message.get("body", b""))
            if state["received"] > self.max_body_bytes:
                await _drain(receive, message)
                raise UploadError(f"the request body is larger than the limit of {self.max_body_bytes / 2**20:.1f} "
                                  "MiB; send a smaller image or raise the server's --max-upload-mb", 413)
            return message

        def record() -> None:
            if state.get("recorded"):
                return
            state["recorded"] = True
            seconds = time.perf_counter() - start
            self.metrics.observe(endpoint, scope["method"], state["status"], seconds)
            LOG.info("%s %s %d %dB %s %.1fms", scope["method"], endpoint, state["status"], state["received"],
                     scope["state"].get("upload_kind", "-"), seconds * 1000)

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = message.get("headers", [])
                cached = any(key.lower() == b"cache-control" for key, _ in headers)  # the viewer's scripts
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff"),
                                                  *(() if cached else ((b"cache-control", b"no-store"),))]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte goes out: a client that reads /metrics next sees this request
            await send(message)

        try:
            if _content_length(scope) > self.max_body_bytes:
                if _content_length(scope) <= self.max_body_bytes + _DRAIN_BYTES:
                    await _drain(receive, {"more_body": True})
                await _send_json(tracked_send, 413, f"the request body ({_content_length(scope):,} bytes) is larger "
                                 f"than the limit of {self.max_body_bytes:,} bytes; send a smaller image")
            else:
                await self.app(scope, counted_receive, tracked_send)
        finally:
            record()  # once: here only when no complete response went out (client gone, server error)


async def _drain(receive, message: dict) -> None:
    """Read and drop what is left of a refused body, up to ``_DRAIN_BYTES``.

    A server that answers and closes while the client still sends makes many clients (httpx,
    requests) see a reset connection instead of the 413; a modest overshoot is cheaper to swallow.
    """
    dropped = 0
    while message.get("more_body", False) and dropped <= _DRAIN_BYTES:
        message = await receive()
        dropped += len(message.get("body", b""))


def _content_length(scope) -> int:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def _send_json(send, status: int, error: str) -> None:

    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(predictor, *, token: str | None = None, max_upload_bytes: int = 64 << 20,
               limits: UploadLimits | None = None, workers: WorkerPool | None = None,
               budget: WorkBudget = SERVICE_BUDGET):
    """The FastAPI application serving ``predictor``.

    With ``workers`` every prediction runs in one of the pool's processes, under its time and memory
    limits (what ``medlens serve`` does); the pool starts with the app (or at the first request when
    the server runs without lifespan events) and stops with it. Without, predictions run in this
    process, one at a time behind a lock (Grad-CAM hooks the network), under ``budget``: the way for
    an in-memory ``Predictor`` that no worker could load from a path (tests, library users).

    Args:
        predictor: a :class:`~medlens.deploy.Predictor` (``card``, ``task``, ``predict``); with
            ``workers`` it answers ``/v1/model`` and checks options, the workers predict.
        token: when given, clients must send ``Authorization: Bearer <token>`` (not for ``/healthz``, ``/``).
        max_upload_bytes: the largest uploaded file; the request body may exceed it by the form's overhead.
        limits: the other upload limits (voxels, zip entries, decompressed size); its
            ``max_upload_bytes`` is replaced by the argument.
        workers: a :class:`~medlens.deploy.workers.WorkerPool` loading the same model, or None.
        budget: the work budget of in-process predictions (the pool's spec carries its own).

    Returns:
        A FastAPI app; run it with uvicorn.
    """
    import contextlib

    from fastapi import Depends, FastAPI

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if workers is not None:
            await workers.start()
        try:
            yield
        finally:
            if workers is not None:
                workers.close()

    limits = replace(limits or UploadLimits(), max_upload_bytes=max_upload_bytes)
    metrics = Metrics({"model_version": predictor.card.get("model_version", ""), "task": predictor.config.dataset.task})
    app = FastAPI(title="medlens prediction service", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    fields = FormFields.of(predictor)  # each file field may carry a file of up to max_upload_bytes
    app.add_middleware(Gate, metrics=metrics,
                       max_body_bytes=max_upload_bytes * len(fields.files) + _FORM_OVERHEAD_BYTES)
    _add_error_handlers(app)
    guard = [Depends(_bearer_check(token))]
    runner = (_PoolRunner(workers, limits, fields.series_rules) if workers is not None
              else _LockedRunner(predictor, limits, budget))
    _add_routes(app, predictor, guard, metrics, runner, fields, guard_needed=bool(token))
    return app


def _bearer_check(token: str | None):
    from fastapi import HTTPException, Request

    expected = token.encode() if token else None

    def check(request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "missing or wrong bearer token; send the header 'Authorization: Bearer <token>' "
                                     "with the token the server was started with",
                                headers={"WWW-Authenticate": "Bearer"})

    check.__annotations__ = {"request": Request, "return": None}  # real classes: FastAPI injects by type
    return check


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return JSONResponse({"error": f"invalid request: {exc.errors()[:3]}"}, status_code=400)


def _add_routes(app, predictor, guard: list, metrics: Metrics, runner, fields: FormFields, *,
                guard_needed: bool) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.requests import ClientDisconnect

    page = (Path(__file__).with_name("page.html")).read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'none'; img-src data: blob:; "
                                           "style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                                           "connect-src 'self'"})

    _add_viewer_routes(app)

    @app.get("/healthz")
    def healthz():  # says whether a token is needed, so the page asks for one before calling the API
        pool = getattr(runner, "pool", None)
        return {"status": "ok", "auth": "bearer" if guard_needed else "none",
                **({"workers": pool.status()} if pool is not None else {})}

    @app.get("/v1/model", dependencies=guard)
    def model_card():  # the card, and the options (and, for several inputs, the form) POST /v1/predict takes
        service = {"options": list(predictor.task.service_options)}
        if fields.fused:
            service.update(files=list(fields.files), clinical_field=CLINICAL_FIELD if fields.clinical else None,
                           study_field=STUDY_FIELD if fields.series_rules else None)
        return {**predictor.card, "service": service}

    @app.get("/metrics", dependencies=guard)
    def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def predict(request):
        try:
            submission = await _read_form(request, fields)
            _check_options(predictor.task, submission.options)
            return JSONResponse(await runner(submission, request.state))
        except (UploadError, WorkerRefusal, BudgetError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except MedlensError as exc:  # a header check while staging: the input's fault, its temporary path scrubbed
            return JSONResponse({"error": scrub_paths(str(exc))}, status_code=422)
        except ClientDisconnect:  # gone mid-upload (or its body stalled past the deadline): no one to answer
            return JSONResponse({"error": "the client disconnected during the upload"}, status_code=400)
        except Exception as exc:  # noqa: BLE001 - the server keeps serving; the client learns nothing internal
            LOG.error("POST /v1/predict failed unexpectedly: %s", type(exc).__name__)
            return JSONResponse({"error": "internal error while predicting; the server log has the error type"},
                                status_code=500)

    # `from __future__ import annotations` makes annotations strings FastAPI cannot resolve from here
    predict.__annotations__ = {"request": Request}
    app.post("/v1/predict", dependencies=guard)(predict)


async def _read_form(request, fields: FormFields) -> Submission:
    """The uploaded file objects, the clinical record and the boolean options, from the multipart form and the
    query; a model of several inputs refuses a field it does not take, a second file in one field, and a
    clinical field that is not a JSON object (400)."""
    from starlette.exceptions import HTTPException

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(f"send the image as multipart/form-data with the field {_file_hint(fields)}")
    try:
        form = await request.form(max_files=len(fields.files), max_fields=16)
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body, or one with too many files
        if "files" in str(exc.detail).lower() and fields.fused:
            raise UploadError(f"more files than this model takes ({len(fields.files)}: one per field "
                              f"{', '.join(fields.files)}); send one file per view") from None
        raise UploadError(f"malformed multipart body ({exc.detail}); send one field 'file' with the image") from None
    uploads = _uploads(form, fields)
    clinical = _clinical_field(form) if fields.clinical else None
    return Submission(uploads, clinical, _options(form, request))


def _file_hint(fields: FormFields) -> str:
    if not fields.fused:
        return "'file' (curl -F file=@image.png)"
    example = " ".join(f"-F {f}=@FILE" for f in fields.files)
    return f"one per input: {fields.describe()} (curl {example}" + (
        " -F 'clinical={\"COLUMN\": VALUE}')" if fields.clinical else ")")


def _uploads(form, fields: FormFields) -> dict:
    """``{field: UploadFile}`` of the file fields sent (at least one); refusals say which fields the model takes."""
    from starlette.datastructures import UploadFile

    if not fields.fused:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise UploadError("no file in the form field 'file'; send the image as multipart/form-data field 'file'")
        return {"file": upload}
    known = {*fields.files, *((CLINICAL_FIELD,) if fields.clinical else ()), *OPTIONS,
             *((STUDY_FIELD,) if fields.series_rules else ())}
    unknown = sorted({key for key in form.keys() if key not in known})
    if unknown:
        raise UploadError(f"unknown form field {', '.join(map(repr, unknown))[:200]}; this model takes "
                          f"{fields.describe()}")
    if STUDY_FIELD in form.keys():
        return {STUDY_FIELD: _study_upload(form, fields)}
    uploads = {}
    for name in fields.files:
        values = form.getlist(name)
        if len(values) > 1:
            raise UploadError(f"{len(values)} files in the field {name!r}; send one file per field")
        if values and not isinstance(values[0], UploadFile):
            raise UploadError(f"the field {name!r} holds text, not a file; send the image as a file ({name}=@FILE)")
        if values:
            uploads[name] = values[0]
    if not uploads:
        raise UploadError(f"no image in the form; send {_file_hint(fields)}")
    return uploads


def field_limits(limits: UploadLimits, field: str, series_rules: tuple[str, ...]) -> UploadLimits:
    """``limits`` for one form field: the ``study`` field holds every view's series, so what one series may cost
    is allowed once per rule (the whole request is still bounded by the views' fields together)."""
    if field != STUDY_FIELD or not series_rules:
        return limits
    n = len(series_rules)
    return replace(limits, max_upload_bytes=limits.max_upload_bytes * n, max_voxels=limits.max_voxels * n,
                   max_zip_entries=limits.max_zip_entries * n, max_uncompressed_bytes=limits.max_uncompressed_bytes * n)


def _study_upload(form, fields: FormFields):
    """The one file of the ``study`` field (a model of several series), refused beside view fields."""
    from starlette.datastructures import UploadFile

    sent = [name for name in fields.files if name in form.keys()]
    if sent:
        raise UploadError(f"the form has the field {STUDY_FIELD!r} and {', '.join(sent)}; send the study (a .zip) or "
                          "its series one per view field, not both")
    values = form.getlist(STUDY_FIELD)
    if len(values) != 1 or not isinstance(values[0], UploadFile):
        raise UploadError(f"the field {STUDY_FIELD!r} takes one file, a .zip of the study's DICOM files "
                          f"(curl -F {STUDY_FIELD}=@study.zip)")
    return values[0]


def _clinical_field(form) -> dict | None:
    """The ``clinical`` form field as a JSON object (``None`` when absent or empty)."""
    from medlens.data.clinical import record_from_json

    values = form.getlist(CLINICAL_FIELD)
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        raise UploadError("the field 'clinical' must be one JSON object (text), e.g. clinical={\"Age\": 71}")
    text = values[0]
    if not text.strip():
        return None
    if len(text) > MAX_CLINICAL_CHARS:
        raise UploadError(f"the field 'clinical' is longer than {MAX_CLINICAL_CHARS} characters; send the values only")
    try:
        return record_from_json(text)
    except ValueError as exc:
        raise UploadError(f"the field 'clinical': {exc}") from None


def _options(form, request) -> dict[str, bool]:
    """The boolean options, from the form or the query."""
    options = {}
    for name in OPTIONS:
        value = form.get(name) if isinstance(form.get(name), str) else request.query_params.get(name, "")
        if str(value).lower() not in _TRUE + _FALSE:
            raise UploadError(f"option {name}={str(value)[:20]!r}: expected true or false")
        options[name] = str(value).lower() in _TRUE
    return options


def _check_options(task, options: dict[str, bool]) -> None:
    """An option the model's task does not answer with is refused, not ignored."""
    for name, wanted in options.items():
        if wanted and name not in task.service_options and name not in SERVICE_OPTIONS:
            offered = ", ".join(f"{o}=true" for o in task.service_options) or "none"
            raise UploadError(f"{name}=true: a {task.name} model does not answer with a {name} (its options: "
                              f"{offered})")


class _LockedRunner:
    """Predictions in this process, one at a time (Grad-CAM hooks the network), under the service's budget."""

    def __init__(self, predictor, limits: UploadLimits, budget: WorkBudget):
        self.predictor, self.limits, self.budget = predictor, limits, budget
        self.series_rules = tuple(predictor.config.dataset.series_rules or ())
        self.lock = threading.Lock()

    async def __call__(self, submission: Submission, state) -> dict:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self._predict, submission, state)

    def _predict(self, submission: Submission, state) -> dict:
        """Stage every upload, predict under the lock, and build the JSON body (in a worker thread)."""
        options = submission.options
        with work_budget(self.budget), contextlib.ExitStack() as stack:
            staged = {name: stack.enter_context(staged_upload(upload.file, field_limits(self.limits, name,
                                                                                       self.series_rules)))
                      for name, upload in submission.uploads.items()}
            state.upload_kind = _kinds(staged)
            source, extra = _source(staged, submission.clinical, self.series_rules)
            try:
                with self.lock:
                    body = predict_body(self.predictor, source, options, next(iter(staged.values())).folder, extra)
            except BudgetError as exc:
                raise UploadError(_scrub_all(str(exc), staged), exc.status) from None
            except MedlensError as exc:
                raise UploadError(_scrub_all(str(exc), staged), 422) from None
            body["input"] = _input_summary(staged)
            return body


def predict_body(predictor, source, options: dict[str, bool], folder: Path, extra: dict) -> dict:
    """Predict ``source`` and answer the task's JSON body; with ``viewer`` and a 3D image (a model of one input),
    also ``viewer``: the image and what the prediction draws on it (mask, heat map, boxes) as the 3D viewer's
    volumes (:func:`medlens.report.viewer.viewer_volumes`), or ``{"error": "3D viewer not installed: run make
    viewer"}`` when NiiVue is not installed. The image is read once, for both."""
    from medlens.report.viewer import NOT_INSTALLED, installed

    image = predictor.read(source) if options.get("viewer") and not predictor.fused else None
    result = predictor.predict(source if image is None else image, heatmap=options.get("heatmap", False), **extra)
    body = predictor.task.to_json(result, options, folder)
    if image is not None and image.spatial_dims == 3:
        body["viewer"] = viewer_volumes_of(predictor, image, result) if installed() else {"error": NOT_INSTALLED}
    return body


def viewer_volumes_of(predictor, image, result: dict) -> dict:
    """The 3D viewer's volumes for one prediction: ``image`` with the mask (segmentation), the heat map
    (classification with a heat map) or the boxes (detection) its ``result`` holds."""
    from medlens.report.viewer import boxes_overlay, heat_overlay, mask_overlay, viewer_volumes

    overlays = []
    if result.get("mask") is not None:
        from medlens.tasks.segmentation.infer import class_labels

        overlays.append(mask_overlay(result["mask"].array[0], class_labels(predictor.config)))
    if result.get("heatmap_map") is not None:
        overlays.append(heat_overlay(result["heatmap_map"], title=f"heat map ({result.get('explained_class')})"))
    if result.get("boxes") is not None:
        shown = [r for r in result["boxes"] if r["score"] >= result.get("display_threshold", 0)]
        overlays.append(boxes_overlay(shown, image.spatial_shape, predictor.config.dataset.class_names))
    return viewer_volumes(image, overlays)


def _add_viewer_routes(app) -> None:
    """``GET /static/niivue.js`` (NiiVue, 404 with the fix when ``make viewer`` has not run) and
    ``GET /static/medlens_viewer.js``, cached for a day."""
    from fastapi.responses import FileResponse, JSONResponse

    from medlens.report import viewer

    headers = {"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}"}

    @app.get("/static/niivue.js", include_in_schema=False)
    def niivue_js():
        if not viewer.installed():
            return JSONResponse({"error": viewer.NOT_INSTALLED}, status_code=404)
        return FileResponse(viewer.NIIVUE_JS, media_type="text/javascript", headers=headers)

    @app.get("/static/medlens_viewer.js", include_in_schema=False)
    def helper_js():
        return FileResponse(viewer.HELPER_JS, media_type="text/javascript", headers=headers)


def _source(staged: dict, clinical: dict | None, series_rules: tuple[str, ...] = ()) -> tuple[object, dict]:
    """What ``Predictor.predict`` takes: the one staged path, or ``{view: path}`` (for a study, the series its
    rules pick); and ``clinical=`` when sent.

    Raises:
        UploadError: a study that is not a zip of DICOM files, or whose series the rules cannot pick.
    """
    extra = {"clinical": clinical} if clinical is not None else {}
    if list(staged) == ["file"]:
        return staged["file"].path, extra
    if list(staged) == [STUDY_FIELD]:
        return _study_views(staged[STUDY_FIELD], series_rules), extra
    return {name.removeprefix(VIEW_PREFIX): item.path for name, item in staged.items()}, extra


def _study_views(item, series_rules: tuple[str, ...]) -> dict[str, Path]:
    """``{view: series folder}`` of an uploaded study: its DICOM files grouped by series beside the upload, then
    picked by the model's rules (headers only are read here; the pixels in the worker)."""
    from medlens.data.series import list_series, picked_or_problems, study_from_files
    from medlens.errors import DatasetError

    if item.kind != "dicom_series":
        raise UploadError(f"the field {STUDY_FIELD!r} takes a .zip of the study's DICOM files, got a {item.kind} "
                          "file; zip the study folder (or send each series as its view:NAME field)", 415)
    try:
        series = list_series(study_from_files(item.path, item.folder / STUDY_FIELD))
    except DatasetError:
        raise UploadError("the study's zip holds no DICOM image series; zip the study's folder of series",
                          422) from None
    picked, problems = picked_or_problems(series, series_rules)
    if problems:  # the series' labels are the uploader's own headers; no file name of the upload is quoted
        raise UploadError(f"the study's series ({'; '.join(repr(s.label) for s in series)}): {'; '.join(problems)} "
                          f"of the model's rules ({', '.join(series_rules)}); send a study with one series for each, "
                          "or its series one per view:NAME field", 422)
    return picked


def _kinds(staged: dict) -> str:
    return "+".join(item.kind for item in staged.values())


def _input_summary(staged: dict) -> dict:
    """``{"type", "bytes"}`` of one upload; ``{"views": {view: {"type", "bytes"}}}`` of several."""
    if list(staged) in (["file"], [STUDY_FIELD]):
        item = next(iter(staged.values()))
        summary = {"type": item.kind, "bytes": item.size_bytes}
        return summary if "file" in staged else {STUDY_FIELD: summary}
    return {"views": {name.removeprefix(VIEW_PREFIX): {"type": item.kind, "bytes": item.size_bytes}
                      for name, item in staged.items()}}


def _scrub_all(message: str, staged: dict) -> str:
    for item in staged.values():
        message = scrub_upload(message, item)
    return message


class _PoolRunner:
    """Predictions in the pool's worker processes; this process only stages the upload (header checks)."""

    def __init__(self, pool: WorkerPool, limits: UploadLimits, series_rules: tuple[str, ...] = ()):
        self.pool, self.limits, self.series_rules = pool, limits, series_rules

    async def __call__(self, submission: Submission, state) -> dict:
        from starlette.concurrency import run_in_threadpool

        stack = contextlib.ExitStack()
        try:
            staged = {}
            for name, upload in submission.uploads.items():
                limits = field_limits(self.limits, name, self.series_rules)
                staged[name] = await run_in_threadpool(stack.enter_context, staged_upload(upload.file, limits))
            state.upload_kind = _kinds(staged)
            source, extra = await run_in_threadpool(_source, staged, submission.clinical, self.series_rules)
            first = next(iter(staged.values()))
            job = {"folder": str(first.folder), "options": submission.options, **extra}
            job.update({"views": {k: str(v) for k, v in source.items()}} if isinstance(source, dict)
                       else {"path": str(source)})
            try:
                body = await self.pool.predict(job)
            except WorkerRefusal as exc:
                message = await run_in_threadpool(_scrub_all, str(exc), staged) if exc.raw else str(exc)
                raise WorkerRefusal(message, exc.status) from None
            body["input"] = _input_summary(staged)
            return body
        finally:  # the worker is done with the folders (answered or killed): remove them
            await run_in_threadpool(stack.close)


# ---- the HTTP server ----------------------------------------------------------------------------------------------
def timed_protocol(head_timeout_s: float = 10.0, body_timeout_s: float = 30.0):
    """uvicorn's h11 protocol with two deadlines it lacks (uvicorn arms its keep-alive timer only after a
    response, so a connection that never finishes its request headers stays open for ever).

    Args:
        head_timeout_s: from the connection's start (or the end of its previous response) to the end of the
            request headers, however slowly they trickle in; then the connection is closed.
        body_timeout_s: the longest pause while a request body is being received.

    Returns:
        A protocol class for ``uvicorn.Config(http=...)``.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer = _body_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(head_timeout_s, self._expire)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._rearm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._expire)
            self._rearm()

        def connection_lost(self, exc) -> None:
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def _rearm(self) -> None:
            """The head deadline holds until the headers are in; the body deadline restarts with each chunk."""
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self.conn.their_state is not h11.IDLE and self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                self._body_timer = self.loop.call_later(body_timeout_s, self._expire)

        def _expire(self) -> None:
            self._head_timer = self._body_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 512,
                  head_timeout_s: float = 10.0, body_timeout_s: float = 30.0, keep_alive_s: int = 5):
    """The uvicorn configuration ``medlens serve`` runs ``app`` with.

    Args:
        max_connections: open connections (and running requests) past which a request is answered 503.
        head_timeout_s / body_timeout_s: see :func:`timed_protocol`.
        keep_alive_s: how long an idle connection is kept after a response.

    Returns:
        ``uvicorn.Config``: its own per-request access log off (the service logs status, size, type and
        latency), headers capped at 64 KiB.
    """
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=timed_protocol(head_timeout_s, body_timeout_s),
                          limit_concurrency=max_connections, timeout_keep_alive=keep_alive_s,
                          h11_max_incomplete_event_size=64 * 1024, access_log=False, log_config=None,
                          timeout_graceful_shutdown=10)


class ScrubbedLog(logging.Filter):
    """A log handler filter: the service's own records pass; any other library's record (pydicom quotes header
    values, Python warnings name files) is replaced by one line naming its logger only."""

    PASS = ("medlens", "uvicorn")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in self.PASS:
            record.msg, record.args = f"{record.name}: a third-party message was suppressed", None
        if record.exc_info:  # a traceback quotes exception messages, which may quote the input: the type only
            record.msg = f"{record.getMessage()} ({record.exc_info[0].__name__})"
            record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def log_scrubbed(level: int = logging.INFO) -> None:
    """Log to stderr through :class:`ScrubbedLog`, Python warnings included (``medlens serve``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(ScrubbedLog())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
