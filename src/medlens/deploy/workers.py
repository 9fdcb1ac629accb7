"""Prediction in worker processes: one slow or greedy request never stalls the others.

>>> pool = WorkerPool(WorkerSpec("model.bundle", workers=2, timeout_s=30, memory_mb=2048))
>>> await pool.start()                                  # each worker loads the model itself
>>> body = await pool.predict({"path": "/tmp/medlens-upload-x/upload.png", "folder": ..., "options": {...}})

A case of several inputs sends ``"views": {view: staged path}`` instead of ``"path"``, and ``"clinical"``.

The server process stages an upload (cheap header checks) and hands a free worker its staged path;
the worker reads, predicts under the service's :class:`~medlens.budget.WorkBudget` and answers with
the JSON body. Requests wait in arrival order for a free worker. While one runs, the server's thread
watches it every 50 ms: past ``timeout_s`` (503) or ``memory_mb`` of resident memory (413) the worker
is killed, the client gets a JSON refusal and a fresh worker takes its place; the service stays up.
Behind the watchdog, each worker's address space is capped (``RLIMIT_AS``) so that an allocation
spike between two looks fails with a MemoryError (413) rather than waking the out-of-memory killer.

Workers start with ``spawn`` (``fork`` after torch has started threads can deadlock). A worker's
stdout and stderr go to ``/dev/null`` once its model is loaded and every Python warning is
swallowed: readers (pydicom, SimpleITK) quote header values and temporary paths in theirs, and the
service log must carry status, size, type and latency only. The server logs how many were suppressed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from medlens.budget import SERVICE_BUDGET, WorkBudget
from medlens.errors import MedlensError

LOG = logging.getLogger("medlens.service")
WATCH_INTERVAL_S = 0.05  # how often a busy worker's clock and memory are read
START_TIMEOUT_S = 300.0  # importing torch and loading a bundle on a busy machine


def default_workers() -> int:
    """min(CPU cores, 4), at least 1: more workers than cores only share the same cores."""
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads and the limits each request runs under.

    Attributes:
        model: the bundle (folder or .zip) or run folder each worker opens with ``Predictor.from_path``.
        workers: worker processes (requests predicted at the same time).
        backend: ``torch``, ``torchscript`` or ``onnx`` (classification).
        budget: the work budget in force in every worker.
        timeout_s: wall-clock time one request may run in a worker.
        memory_mb: resident memory (MiB) a worker may hold while it predicts.
    """

    model: Path
    workers: int = field(default_factory=default_workers)
    backend: str = "torch"
    budget: WorkBudget = SERVICE_BUDGET
    timeout_s: float = 30.0
    memory_mb: float = 2048.0

    def __post_init__(self):
        from medlens.errors import ConfigError

        for name, low in (("workers", 1), ("timeout_s", 1e-3), ("memory_mb", 1.0)):
            if not getattr(self, name) >= low:
                raise ConfigError(f"{name} {getattr(self, name)}: must be at least {low}")


class WorkerRefusal(MedlensError):
    """A request the pool answers with an HTTP error (the worker's own, or a limit it broke).

    Attributes:
        status: 413 (budget or memory), 422 (unreadable input), 503 (time limit), 500 (anything else).
        raw: True when ``message`` comes from a reader in the worker and still needs the upload's paths scrubbed.
    """

    def __init__(self, message: str, status: int, *, raw: bool = False):
        super().__init__(message)
        self.status, self.raw = status, raw


# ---- the worker process -------------------------------------------------------------------------------------------
def _worker_main(conn, spec: WorkerSpec, threads: int) -> None:
    """Load the model, tell the server it is ready, then answer one job per message until ``None``."""
    import warnings

    suppressed = [0]

    def swallow(*_args, **_kwargs) -> None:  # pydicom's validation warnings quote header values
        suppressed[0] += 1

    warnings.showwarning = swallow
    warnings.simplefilter("always")  # counted, never shown: "once" filters would hide repeats from the count
    try:
        predictor = _load(spec, threads)
    except Exception as exc:  # noqa: BLE001 - the operator's own model path: the server prints why it failed
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    _cap_address_space(spec.memory_mb)
    _silence_output()
    conn.send(("ready", os.getpid()))
    settled_mb = resident_mb(os.getpid())
    while (job := conn.recv()) is not None:
        suppressed[0] = 0
        conn.send((*_answer(predictor, job, spec.memory_mb), suppressed[0]))
        if resident_mb(os.getpid()) > settled_mb + TRIM_ABOVE_MB:
            _give_back_memory()
            settled_mb = max(settled_mb, resident_mb(os.getpid()))


# a worker holding this much more than after its first requests hands freed heap back to the system
TRIM_ABOVE_MB = 64


def _give_back_memory() -> None:
    """Hand the heap a large request freed back to the system.

    glibc keeps freed memory for reuse, so a worker that once decoded a large image would hold its
    peak for good, and the service's memory would only ever grow with the inputs it refused. Only
    after such a request: trimming costs milliseconds a small request should not pay.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        pass


def _load(spec: WorkerSpec, threads: int):
    import torch

    from medlens.budget import set_budget
    from medlens.deploy import Predictor

    torch.set_num_threads(threads)
    set_budget(spec.budget)
    _quiet_readers()
    return Predictor.from_path(spec.model, backend=spec.backend)


def _quiet_readers() -> None:
    """SimpleITK prints warnings that name the file (a temporary upload path) straight to stderr."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    logging.getLogger().handlers.clear()
    logging.disable(logging.CRITICAL)  # pydicom logs header problems too; nothing in a worker is logged


def _cap_address_space(memory_mb: float) -> None:
    """A backstop behind the server's 50 ms watchdog: an allocation spike between two looks fails here with a
    MemoryError (answered 413) instead of reaching the kernel's out-of-memory killer. The cap is the address
    space at ready plus twice the resident limit: PyTorch reserves address space it never touches, so a cap
    on the resident limit alone would refuse valid requests."""
    import resource

    with open("/proc/self/status", encoding="ascii", errors="replace") as status:
        size_kb = next((int(line.split()[1]) for line in status if line.startswith("VmSize:")), None)
    if size_kb is None:
        return
    cap = size_kb * 1024 + int(2 * memory_mb * 2**20)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _silence_output() -> None:
    """stdout / stderr to /dev/null: C++ readers write there behind Python's back."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _answer(predictor, job: dict, memory_mb: float) -> tuple:
    """``("ok", body)`` or ``("error", status, message, raw)`` for one job; never raises."""
    from medlens.errors import BudgetError

    try:
        if "dicom" in job:  # the PACS listener: predict a series and write its DICOM results (medlens.deploy.pacs)
            from medlens.deploy.pacs.results import answer_dicom_job

            return "ok", answer_dicom_job(predictor, job)
        source = job["views"] if "views" in job else job["path"]  # a case of several views: {view: staged path}
        extra = {"clinical": job["clinical"]} if job.get("clinical") is not None else {}
        from medlens.deploy.service import predict_body

        return "ok", predict_body(predictor, source, job["options"], Path(job["folder"]), extra)
    except BudgetError as exc:
        return "error", exc.status, str(exc), True
    except MedlensError as exc:
        return "error", 422, str(exc), True
    except (MemoryError, RuntimeError) as exc:  # torch's allocator raises RuntimeError("... can't allocate memory")
        if isinstance(exc, MemoryError) or "allocate memory" in str(exc):
            return "error", 413, memory_refusal(memory_mb), False
        return "error", 500, type(exc).__name__, False
    except Exception as exc:  # noqa: BLE001 - the client learns the type only, the worker keeps serving
        return "error", 500, type(exc).__name__, False


def memory_refusal(memory_mb: float) -> str:
    return (f"the prediction needed more than the worker's memory limit of {memory_mb:.0f} MiB; send a smaller or "
            "downsampled image (the server's limit is set by `medlens serve --worker-memory-mb`)")


# ---- the server side ----------------------------------------------------------------------------------------------
class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, spec: WorkerSpec):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        threads = max(1, (os.cpu_count() or 1) // spec.workers)
        self.process = context.Process(target=_worker_main, args=(child, spec, threads), daemon=True,
                                       name="medlens-worker")
        self.process.start()
        child.close()
        self.usable = True

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the worker has loaded its model.

        Raises:
            MedlensError: the worker could not load the model, died, or took longer than ``timeout_s``.
        """
        if not self.conn.poll(timeout_s):
            self.kill()
            raise MedlensError(f"a prediction worker did not load the model within {timeout_s:.0f} s")
        try:
            state, detail = self.conn.recv()
        except EOFError:
            self.kill()
            raise MedlensError(f"a prediction worker stopped while loading the model (exit code "
                               f"{self.process.exitcode})") from None
        if state != "ready":
            self.kill()
            raise MedlensError(f"a prediction worker could not load the model: {detail}")

    def call(self, job: dict, timeout_s: float, memory_mb: float) -> dict:
        """Send ``job`` and wait for the answer, watching the clock and the worker's memory.

        Returns:
            The JSON body.

        Raises:
            WorkerRefusal: the worker refused the input, or broke a limit (it is then killed, ``usable`` False).
        """
        self.usable = False  # until the answer is in: an exception on the way leaves it for replacement
        self.conn.send(job)
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(WATCH_INTERVAL_S):
            self._watch(deadline, timeout_s, memory_mb)
        try:
            answer = self.conn.recv()
        except EOFError:
            self._watch(deadline, timeout_s, memory_mb)
            raise
        self.usable = True
        return _body_of(answer)

    def _watch(self, deadline: float, timeout_s: float, memory_mb: float) -> None:
        if not self.process.is_alive():
            self.process.join()
            code = self.process.exitcode
            # SIGKILL from outside is the kernel's out-of-memory killer in all likelihood
            status = 413 if code == -signal.SIGKILL else 500
            raise WorkerRefusal(f"the prediction stopped its worker (exit code {code}); the service replaced it",
                                status)
        if resident_mb(self.process.pid) > memory_mb:
            self.kill()
            raise WorkerRefusal(memory_refusal(memory_mb), 413)
        if time.monotonic() > deadline:
            self.kill()
            raise WorkerRefusal(f"the prediction took longer than the limit of {timeout_s:g} s and was stopped; send "
                                "a smaller image, or retry later (the limit is set by `medlens serve "
                                "--request-timeout-s`)", 503)

    def kill(self) -> None:
        self.usable = False
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        """Ask the worker to exit (it finishes nothing: only idle workers are stopped this way), then make sure."""
        try:
            self.conn.send(None)
            self.process.join(timeout=5)
        except (OSError, ValueError):  # pipe already closed: the worker is gone
            pass
        self.kill()


def _body_of(answer: tuple) -> dict:
    state, *rest = answer
    suppressed = rest[-1]
    if suppressed:
        LOG.info("%d reader warning(s) suppressed while predicting", suppressed)
    if state == "ok":
        return rest[0]
    status, message, raw = rest[0], rest[1], rest[2]
    if status == 500:
        LOG.error("POST /v1/predict failed unexpectedly in a worker: %s", message)
        message = "internal error while predicting; the server log has the error type"
    raise WorkerRefusal(message, status, raw=raw)


def resident_mb(pid: int) -> float:
    """The resident set size of process ``pid`` in MiB (``VmRSS`` of ``/proc/PID/status``; 0 when gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0.0


class WorkerPool:
    """``spec.workers`` worker processes; :meth:`predict` runs one job on the next free one, in arrival order."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self._free: asyncio.Queue | None = None
        self._workers: set[_Worker] = set()
        self._started: asyncio.Lock | None = None
        self._closing = False
        self.replaced = 0  # workers killed for a limit or lost, and replaced
        self.ready = 0  # workers loaded and alive (idle or predicting)
        self.loop: asyncio.AbstractEventLoop | None = None  # the event loop the pool started on
        # a request waits for a free worker at most this long: a few requests' time limits, or a worker's start
        self.queue_timeout_s = max(4 * spec.timeout_s, 120.0)

    async def start(self) -> None:
        """Start every worker and wait until all have loaded the model (idempotent).

        Raises:
            MedlensError: a worker could not load the model (the message says why).
        """
        from starlette.concurrency import run_in_threadpool

        if self._started is None:
            self._started = asyncio.Lock()
            self.loop = asyncio.get_running_loop()  # the PACS listener's threads hand their jobs to this loop
        async with self._started:
            if self._free is not None:
                return
            workers = [_Worker(self.spec) for _ in range(self.spec.workers)]
            self._workers.update(workers)
            try:
                await asyncio.gather(*(run_in_threadpool(w.wait_ready, START_TIMEOUT_S) for w in workers))
            except MedlensError:
                self.close()
                raise
            self._free = asyncio.Queue()
            for worker in workers:
                self._free.put_nowait(worker)
            self.ready = len(workers)

    def status(self) -> dict[str, int]:
        """``workers`` (configured), ``ready`` (loaded), ``idle``, ``replaced`` (since the start), for /healthz."""
        idle = self._free.qsize() if self._free is not None else 0
        return {"workers": self.spec.workers, "ready": self.ready, "idle": idle, "replaced": self.replaced}

    async def predict(self, job: dict) -> dict:
        """The JSON body for ``job`` (``path``, ``folder``, ``options``) from the next free worker.

        Raises:
            WorkerRefusal: the input was refused or broke a limit (its ``status`` says which).
        """
        from starlette.concurrency import run_in_threadpool

        if self._free is None:
            await self.start()
        try:
            worker = await asyncio.wait_for(self._free.get(), self.queue_timeout_s)
        except TimeoutError:
            raise WorkerRefusal(f"all {self.spec.workers} prediction workers stayed busy for "
                                f"{self.queue_timeout_s:.0f} s; retry later", 503) from None
        try:
            return await run_in_threadpool(worker.call, job, self.spec.timeout_s, self.spec.memory_mb)
        finally:
            if worker.usable:
                self._free.put_nowait(worker)
            else:
                self.ready -= 1
                asyncio.get_running_loop().create_task(self._replace(worker))

    async def _replace(self, old: _Worker) -> None:
        """Kill ``old`` (if still running) and put a freshly loaded worker in its place; retried until it loads."""
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(old.kill)
        self._workers.discard(old)
        self.replaced += 1
        delay_s = 1.0
        while not self._closing:
            new = _Worker(self.spec)
            self._workers.add(new)
            try:
                await run_in_threadpool(new.wait_ready, START_TIMEOUT_S)
            except MedlensError as exc:
                self._workers.discard(new)
                LOG.error("a replacement worker failed to start (%s); retrying in %.0f s", type(exc).__name__, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 60.0)
                continue
            if self._closing:
                new.stop()
                return
            LOG.warning("a prediction worker was replaced")
            self.ready += 1
            self._free.put_nowait(new)
            return

    def close(self) -> None:
        """Stop every worker (idle ones exit, busy ones are killed)."""
        self._closing = True
        for worker in list(self._workers):
            worker.stop() if worker.usable else worker.kill()
        self._workers.clear()
