"""``medlens serve BUNDLE_OR_RUN``: the prediction service (HTTP API + web page) on one model."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["model"], {"type": Path, "help": "a bundle from `medlens export` (folder or .zip) or a run folder"}),
    (["--host"], {"default": "127.0.0.1", "help": "address to bind (default 127.0.0.1: this machine only; "
                                                  "0.0.0.0 exposes the service, use --token-file then)"}),
    (["--port"], {"type": int, "default": 8000, "help": "TCP port (default 8000)"}),
    (["--token-file"], {"type": Path, "help": "a file holding the bearer token clients must send "
                                              "(Authorization: Bearer TOKEN); /healthz and / stay open"}),
    (["--max-upload-mb"], {"type": float, "default": 64.0, "help": "largest upload accepted, in MiB (default 64)"}),
    (["--backend"], {"default": "torch", "choices": ["torch", "torchscript", "onnx"],
                     "help": "classification: run the bundle's TorchScript or ONNX export (default: torch; heat maps "
                             "always use the PyTorch weights)"}),
]


def run(args) -> int:
    import logging

    import uvicorn

    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app
    from medlens.errors import ConfigError

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: must be a positive number of MiB")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be 1..65535")
    token = read_token(args.token_file) if args.token_file else None
    predictor = Predictor.from_path(args.model, backend=args.backend)
    app = create_app(predictor, token=token, max_upload_bytes=int(args.max_upload_mb * 2**20))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"medlens serve: {predictor.task} model {predictor.card.get('model_version')} on http://{args.host}:{args.port}/"
          + ("  (bearer token required)" if token else ""))
    # access_log off: the service logs its own line per request (status, size, type, latency; no file names)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    return 0


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is empty or holds more than one line.
    """
    from medlens.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--token-file {path}: no such file; write the token into it first "
                                "(e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\" > token.txt)")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"--token-file {path} is empty; write the token into it")
    if any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one word without spaces or line breaks")
    return token
