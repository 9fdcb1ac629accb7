"""The adversarial corpus against a real ``medlens serve`` process, with a valid client in parallel.

2D cases go to the demo classifier's bundle (with and without ``heatmap=true``), 3D cases to the demo
segmenter's (with and without ``mask=true``); every upload's file name carries a marker. An answer is
clean when it is a 4xx JSON ``{"error": ...}`` (or 200 for a valid file; 503 when the service's time
limit stopped the work), within 5 s, with no traceback and no marker in its body, its headers or the
lines the server logged meanwhile. Meanwhile a thread sends a valid prediction every 0.5 s: each must
succeed no more than 1 s slower than before the corpus. Afterwards the server's memory (the process
and its children) must be within 10% of its level after the warm-up.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adversarial.corpus import Case, fast_subset
from adversarial.forked import resident_kb
from adversarial.judge import (
    LIMIT_S,
    Problem,
    hide_markers,
    likely_site,
    markers_in,
    summary_by_class,
    table,
)
from adversarial.samples import MARKER

httpx = pytest.importorskip("httpx")

OPTION = {2: "heatmap", 3: "mask"}  # the option each bundle's task answers with
VALID = {2: "valid_png", 3: "valid_nifti"}  # what the parallel client sends
CLIENT_TIMEOUT_S = 35.0  # past the service's own per-request limit (30 s), so its answer is seen
PING_PERIOD_S = 0.5
PING_SLACK_S = 1.0
RSS_TOLERANCE = 0.10


@pytest.mark.parametrize("dims", [2, 3], ids=["classifier", "segmenter"])
def test_a_sample_of_each_corpus_class_gets_clean_service_answers(dims, corpus, cls_bundle, seg_bundle, tmp_path):
    cases = fast_subset(corpus, per_class=1, where=lambda case: case.dims == dims and case.applies_to("service"))
    problems = service_problems(cases, corpus, cls_bundle if dims == 2 else seg_bundle, dims, tmp_path)
    assert not problems, report(problems, cases, f"medlens serve ({_bundle_name(dims)}), corpus sample")


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3], ids=["classifier", "segmenter"])
def test_every_corpus_case_gets_clean_service_answers(dims, corpus, cls_bundle, seg_bundle, tmp_path):
    cases = [c for c in corpus if c.dims == dims and c.applies_to("service")]
    problems = service_problems(cases, corpus, cls_bundle if dims == 2 else seg_bundle, dims, tmp_path)
    assert not problems, report(problems, cases, f"medlens serve ({_bundle_name(dims)}), whole corpus")


def _bundle_name(dims: int) -> str:
    return "classification bundle" if dims == 2 else "segmentation bundle"


def report(problems: list[Problem], cases: list[Case], title: str) -> str:
    text = table(problems, title) + "\n\nfailing cases per class: " + summary_by_class(problems, cases)
    print(text)
    return text


# ---- the server -----------------------------------------------------------------------------------------------

class Server:
    """``medlens serve BUNDLE`` in its own process on a free loopback port, its output in a log file."""

    def __init__(self, bundle: Path, log_path: Path):
        self.bundle, self.log_path = bundle, log_path
        self.start()

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "medlens.cli", "serve", str(self.bundle), "--port",
                                         str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"medlens serve exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"medlens serve did not answer /healthz within 120 s:\n{self.log_text()[-3000:]}")

    def log_text(self, offset: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def alive(self) -> bool:
        return self.process.poll() is None

    def tree_rss_mb(self) -> float:
        """Resident memory of the server and every process below it, in MiB."""
        return sum(resident_kb(pid) for pid in _descendants(self.process.pid) | {self.process.pid}) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cpu_ticks(pids: set[int]) -> int:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _wait_until_idle(server: Server, most_s: float = 45.0) -> None:
    """Until the server's processes use under 10% of a core over a second (work a client gave up on may still
    run), at most ``most_s``."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    deadline = time.time() + most_s
    while time.time() < deadline:
        pids = _descendants(server.process.pid) | {server.process.pid}
        before = _cpu_ticks(pids)
        time.sleep(1.0)
        if _cpu_ticks(pids) - before < 0.1 * ticks_per_s:
            return


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


# ---- a valid client in parallel -----------------------------------------------------------------------------

@dataclass
class Pinger:
    """Sends ``data`` every 0.5 s from a thread; records (latency, status, case in flight) of each request."""

    url: str
    data: bytes
    name: str
    option: str
    in_flight: str = "-"
    results: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def once(self) -> tuple[float, int]:
        start = time.perf_counter()
        try:
            response = httpx.post(f"{self.url}/v1/predict", params={self.option: "true"}, timeout=CLIENT_TIMEOUT_S,
                                  files={"file": (self.name, self.data, "application/octet-stream")})
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        return time.perf_counter() - start, status

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CLIENT_TIMEOUT_S + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            case = self.in_flight
            latency, status = self.once()
            self.results.append((latency, status, case if case == self.in_flight else f"{case} / {self.in_flight}"))
            self._stop.wait(max(0.0, PING_PERIOD_S - latency))


# ---- the run ----------------------------------------------------------------------------------------------------

def service_problems(cases: list[Case], corpus: list[Case], bundle: Path, dims: int, tmp_path: Path) -> list[Problem]:
    valid = next(c for c in corpus if c.name == VALID[dims])
    server = Server(bundle, tmp_path / "serve.log")
    problems = []
    try:
        pinger = Pinger(server.url, valid.data, valid.file_name, OPTION[dims])
        baseline_s = statistics.median(_warm_up(pinger))
        rss_after_warm_up = server.tree_rss_mb()
        pinger.start()
        try:
            for case in cases:
                for option in (None, OPTION[dims]):
                    pinger.in_flight = case.name
                    problems += send_case(server, case, option)
                    if not server.alive():
                        problems.append(Problem("service", case.kind, case.name, case.format,
                                                f"the server exited ({server.process.returncode})",
                                                likely_site(case, "service")))
                        server.start()
                        pinger.url = server.url
        finally:
            pinger.in_flight = "-"
            pinger.stop()
        problems += _ping_problems(pinger, baseline_s, cases)
        problems += _memory_problems(server, rss_after_warm_up)
    finally:
        server.stop()
    return problems


def _warm_up(pinger: Pinger) -> list[float]:
    latencies = []
    for _ in range(5):
        latency, status = pinger.once()
        if status != 200:
            raise RuntimeError(f"a valid {pinger.name} was answered {status} during the warm-up")
        latencies.append(latency)
    return latencies[1:]


def send_case(server: Server, case: Case, option: str | None) -> list[Problem]:
    """Post ``case`` once and judge the answer and the log lines written meanwhile."""
    target = "service" + (f"+{option}" if option else "")
    offset = server.log_size()
    start = time.perf_counter()
    try:
        response = httpx.post(f"{server.url}/v1/predict", params={option: "true"} if option else None,
                              timeout=CLIENT_TIMEOUT_S,
                              files={"file": (f"{MARKER}_{case.file_name}", case.data, "application/octet-stream")})
    except httpx.HTTPError as exc:
        return [Problem(target, case.kind, case.name, case.format, f"no answer: {type(exc).__name__} after "
                        f"{time.perf_counter() - start:.1f} s", likely_site(case, "service"))]
    elapsed = time.perf_counter() - start
    time.sleep(0.05)  # the request's log line is written as the response leaves
    return judge_answer(case, target, response, elapsed, server.log_text(offset))


def judge_answer(case: Case, target: str, response, elapsed: float, log: str) -> list[Problem]:
    where = likely_site(case, "service")
    found = []

    def problem(what: str) -> None:
        found.append(Problem(target, case.kind, case.name, case.format, what, where))

    status, expect = response.status_code, case.expectation("service")
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if elapsed > LIMIT_S:
        problem(f"took {elapsed:.1f} s")
    refused = 400 <= status < 500 or status == 503
    if (expect == "error" and not refused) or (expect == "ok" and status != 200) or \
            (expect == "either" and not (refused or status == 200)):
        problem(f"status {status}, expected {expect}" + (f" ({hide_markers(str(error))[:90]})" if error else ""))
    if status != 200 and not isinstance(error, str):
        problem(f"status {status} without a JSON error body")
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for what, text in (("body", response.text), ("headers", headers), ("server log", log)):
        if markers_in(text):
            problem(f"marker in the {what}")
        if "Traceback" in text:
            problem(f"traceback in the {what}")
    if tempfile.gettempdir() + "/medlens-upload-" in log:
        problem("temporary upload path in the server log")
    return found


def _ping_problems(pinger: Pinger, baseline_s: float, cases: list[Case]) -> list[Problem]:
    kinds = {c.name: (c.kind, c.format) for c in cases}
    problems = []
    for latency, status, in_flight in pinger.results:
        kind, fmt = kinds.get(in_flight.split(" / ")[0], ("-", "-"))
        if status != 200:
            problems.append(Problem("parallel valid", kind, in_flight, fmt, f"valid request answered {status}",
                                    "medlens/deploy/service.py"))
        elif latency > baseline_s + PING_SLACK_S:
            problems.append(Problem("parallel valid", kind, in_flight, fmt, f"valid request took {latency:.2f} s "
                                    f"(baseline {baseline_s:.2f} s)", "medlens/deploy/service.py"))
    if not pinger.results:
        problems.append(Problem("parallel valid", "-", "-", "-", "no valid request completed", "?"))
    return problems


def _memory_problems(server: Server, before_mb: float) -> list[Problem]:
    _wait_until_idle(server)
    after_mb = server.tree_rss_mb()
    if after_mb > before_mb * (1 + RSS_TOLERANCE):
        return [Problem("service memory", "-", "after the corpus", "-", f"server tree RSS {after_mb:.0f} MB, "
                        f"{before_mb:.0f} MB after the warm-up (+{100 * (after_mb / before_mb - 1):.0f}%)",
                        "medlens/deploy/service.py")]
    return []
