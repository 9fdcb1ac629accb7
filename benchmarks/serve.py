"""Throughput and latency of the prediction service on loopback, with N concurrent clients.

    python benchmarks/serve.py MODEL IMAGE [--clients 4] [--seconds 20] [--heatmap] [--backend torch]
                               [--workers N] [--mixed-clients 20] [--mixed-seconds 20] [--repeats 200]

MODEL is a bundle (``medlens export``) or a run folder; IMAGE is sent as the upload of every
request. The service runs as ``medlens serve`` runs it (``create_app`` with a bearer token and a
pool of ``--workers`` worker processes, uvicorn with :func:`~medlens.deploy.service.server_config`)
in a background thread on a free 127.0.0.1 port; each client is a thread with its own httpx
connection that posts IMAGE back to back for 3 s of warm-up (3 requests per client first) plus
``--seconds``, timed. Prints requests/s, p50/p90/p99 latency (ms) and the error count, which must
be 0. Then the mixed phase: ``--mixed-clients`` clients for ``--mixed-seconds``, each alternating
IMAGE with one of the malformed uploads of ``tests/deploy/corpus.py`` (truncated files, bombs,
lying headers, wrong types); prints the errors among the valid requests (must be 0), their latency
percentiles, and the refusals by status. The script exits 1 if a valid request failed or a
malformed one got a 5xx. Last, the single-image latency of ``Predictor.predict(IMAGE)`` (read,
preprocess, network, calibration; median and p90 of ``--repeats`` calls after 20 of warm-up)
through every backend the bundle carries: PyTorch, TorchScript and ONNX Runtime (``--repeats 0``
skips it).
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from itertools import cycle
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "deploy"


def serve(app):
    import uvicorn

    from medlens.deploy.service import server_config

    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on every connection, as it does when uvicorn binds
    # (`medlens serve`); a plain socket.socket() does not, and each response waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app))  # lifespan on: the worker pool starts with the app
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heatmap", action="store_true")
    parser.add_argument("--backend", default="torch", choices=["torch", "torchscript", "onnx"])
    parser.add_argument("--workers", type=int, help="worker processes (default: as medlens serve)")
    parser.add_argument("--mixed-clients", type=int, default=20)
    parser.add_argument("--mixed-seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=200, help="Predictor latency: calls per backend")
    args = parser.parse_args(argv)
    failed = service_benchmark(args)
    if args.repeats:
        predictor_latency(args.model, args.image, args.repeats)
    return 1 if failed else 0


def predictor_latency(model: Path, image: Path, repeats: int) -> None:
    """Median / p90 ms of one ``Predictor.predict(image)`` per backend (the bundle's exports only)."""
    from medlens.deploy import Predictor
    from medlens.deploy.bundle import is_bundle

    backends = ["torch"] + (["torchscript", "onnx"] if is_bundle(model) else [])
    for backend in backends:
        try:
            predictor = Predictor.from_path(model, backend=backend)
        except Exception as exc:  # noqa: BLE001 - a bundle exported with --format none lacks the exports
            print(f"Predictor latency, {backend}: skipped ({exc})")
            continue
        for _ in range(20):
            predictor.predict(image)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict(image)
            times.append(time.perf_counter() - start)
        cuts = statistics.quantiles(times, n=10)
        print(f"Predictor latency, {backend:<11}: median {statistics.median(times) * 1000:.2f} ms, "
              f"p90 {cuts[8] * 1000:.2f} ms ({repeats} calls)")


def service_benchmark(args) -> bool:
    """The concurrent-clients run, then the mixed run; True when a valid request failed or a bad one got a 5xx."""
    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app
    from medlens.deploy.workers import WorkerPool, WorkerSpec, default_workers

    token = secrets.token_urlsafe(16)
    predictor = Predictor.from_path(args.model, backend=args.backend)
    spec = WorkerSpec(args.model, workers=args.workers or default_workers(), backend=args.backend)
    server, url = serve(create_app(predictor, token=token, workers=WorkerPool(spec)))
    data, params = args.image.read_bytes(), {"heatmap": str(args.heatmap).lower()}
    print(f"model {predictor.card.get('model_version')} ({args.model.name}, backend {args.backend}, {spec.workers} "
          f"worker(s)), {args.image.name} ({len(data)} bytes), heatmap={args.heatmap}")
    try:
        timed, errors, elapsed = load(url, token, [(data, 200)], params, args.clients, args.seconds)
        failed = errors["valid"]
        print(f"{args.clients} clients x {args.seconds:.0f} s: {len(timed)} requests, {len(timed) / elapsed:.1f} "
              f"req/s, {percentiles(timed)}, errors {len(failed)} {dict(Counter(failed))}")
        mixed = [(data, 200)] + [(bad.data, bad.status) for bad in malformed_uploads()]
        timed, errors, elapsed = load(url, token, mixed, params, args.mixed_clients, args.mixed_seconds)
        print(f"mixed, {args.mixed_clients} clients x {args.mixed_seconds:.0f} s ({len(mixed) - 1} malformed uploads "
              f"interleaved with IMAGE): {len(timed)} valid requests, {percentiles(timed)}, valid-request errors "
              f"{len(errors['valid'])} {dict(Counter(errors['valid']))}; refusals by status "
              f"{dict(sorted(errors['refused'].items()))}")
    finally:
        server.should_exit = True
    server_errors = sum(n for status, n in errors["refused"].items() if status >= 500 or status == 0)
    return bool(failed) or bool(errors["valid"]) or server_errors > 0


def malformed_uploads() -> list:
    """The malformed uploads of the service's tests (``tests/deploy/corpus.py``)."""
    sys.path.insert(0, str(CORPUS))
    from corpus import malformed_uploads as corpus

    return corpus()


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99 or [float("nan")] * 99
    return f"p50 {cuts[49] * 1000:.1f} ms, p90 {cuts[89] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


def load(url: str, token: str, uploads: list[tuple[bytes, int]], params: dict, clients: int, seconds: float):
    """``clients`` threads cycling through ``uploads`` (the first is the valid one) for 3 s of warm-up + ``seconds``.

    Returns:
        (latencies of the timed valid requests, {"valid": [statuses of failed valid requests],
        "refused": Counter of the malformed uploads' statuses}, timed seconds).
    """
    latencies, errors = [], {"valid": [], "refused": Counter()}
    until = time.perf_counter() + 3 + seconds
    threads = [threading.Thread(target=client, args=(url, token, uploads, i, params, until, latencies, errors))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # requests that finish in the first 3 s are warm-up and not counted
    started, count_before = time.perf_counter(), len(latencies)
    for thread in threads:
        thread.join()
    return latencies[count_before:], errors, time.perf_counter() - started


def client(url: str, token: str, uploads: list[tuple[bytes, int]], offset: int, params: dict, until: float,
           latencies: list, errors: dict) -> None:
    """Post ``uploads`` in turn (each client starting at its own offset), valid ones timed."""
    import httpx

    sequence = uploads[:1] if len(uploads) == 1 else [u for bad in uploads[1:] for u in (uploads[0], bad)]
    order = cycle(sequence[offset * 2 % len(sequence):] + sequence[:offset * 2 % len(sequence)])
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(3):
            http.post("/v1/predict", params=params, files={"file": ("image", uploads[0][0])})
        while time.perf_counter() < until:
            data, expected = next(order)
            start = time.perf_counter()
            try:
                status = http.post("/v1/predict", params=params, files={"file": ("image", data)}).status_code
            except httpx.TransportError:
                status = 0
            if expected == 200:
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors["valid"].append(status)
            else:
                errors["refused"][status] += 1


if __name__ == "__main__":
    sys.exit(main())
