"""Throughput and latency of the prediction service on loopback, with N concurrent clients.

    python benchmarks/serve.py MODEL IMAGE [--clients 4] [--seconds 20] [--heatmap] [--backend torch]

MODEL is a bundle (``medlens export``) or a run folder; IMAGE is sent as the upload of every
request. The service (``create_app``, a bearer token, uvicorn) runs in a background thread on a free
127.0.0.1 port; each client is a thread with its own httpx connection that posts IMAGE back to back
for 3 s of warm-up (3 requests per client first) plus ``--seconds``, timed. Prints requests/s, p50/p90/p99 latency
(ms) and the error count, which must be 0 (the script exits 1 otherwise). Then the single-image
latency of ``Predictor.predict(IMAGE)`` (read, preprocess, network, calibration; median and p90 of
``--repeats`` calls after 20 of warm-up) through every backend the bundle carries: PyTorch,
TorchScript and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import threading
import time
from pathlib import Path


def serve(app):
    import uvicorn

    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on every connection, as it does when uvicorn binds
    # (`medlens serve`); a plain socket.socket() does not, and each response waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def client(url: str, token: str, data: bytes, params: dict, until: float, latencies: list, errors: list) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(3):
            http.post("/v1/predict", params=params, files={"file": ("image", data)})
        while time.perf_counter() < until:
            start = time.perf_counter()
            response = http.post("/v1/predict", params=params, files={"file": ("image", data)})
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                errors.append(response.status_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heatmap", action="store_true")
    parser.add_argument("--backend", default="torch", choices=["torch", "torchscript", "onnx"])
    parser.add_argument("--repeats", type=int, default=200, help="Predictor latency: calls per backend")
    args = parser.parse_args(argv)
    errors = service_benchmark(args)
    predictor_latency(args.model, args.image, args.repeats)
    return 1 if errors else 0


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


def service_benchmark(args) -> list:
    """The concurrent-clients run; returns the non-200 statuses."""
    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app

    token = secrets.token_urlsafe(16)
    predictor = Predictor.from_path(args.model, backend=args.backend)
    server, url = serve(create_app(predictor, token=token))
    data, params = args.image.read_bytes(), {"heatmap": str(args.heatmap).lower()}
    latencies, errors = [], []
    until = time.perf_counter() + 3 + args.seconds
    threads = [threading.Thread(target=client, args=(url, token, data, params, until, latencies, errors))
               for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # requests that finish in the first 3 s are warm-up and not counted
    started, count_before = time.perf_counter(), len(latencies)
    for thread in threads:
        thread.join()
    elapsed, timed = time.perf_counter() - started, latencies[count_before:]
    server.should_exit = True
    cuts = statistics.quantiles(timed, n=100) if len(timed) > 1 else [timed[0]] * 99
    print(f"model {predictor.card.get('model_version')} ({args.model.name}, backend {args.backend}), "
          f"{args.image.name} ({len(data)} bytes), heatmap={args.heatmap}")
    print(f"{args.clients} clients x {args.seconds:.0f} s: {len(timed)} requests, {len(timed) / elapsed:.1f} req/s, "
          f"p50 {cuts[49] * 1000:.1f} ms, p90 {cuts[89] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, "
          f"errors {len(errors)}")
    return errors


if __name__ == "__main__":
    sys.exit(main())
