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
    (["--workers"], {"type": int, "help": "worker processes predicting at the same time, each with its own copy of "
                                          "the model (default: min(CPU cores, 4))"}),
    (["--max-voxels"], {"type": int, "help": "the work budget: voxels any one step may make from an upload "
                                             "(default 512^3 = 134,217,728)"}),
    (["--request-timeout-s"], {"type": float, "default": 30.0,
                               "help": "a prediction running longer is stopped, answered 503, and its worker "
                                       "replaced (default 30)"}),
    (["--worker-memory-mb"], {"type": float, "default": 2048.0,
                              "help": "a worker holding more resident memory while it predicts is stopped, the "
                                      "request answered 413, the worker replaced (default 2048)"}),
    (["--max-connections"], {"type": int, "default": 512,
                             "help": "open connections past which requests are answered 503 (default 512)"}),
    (["--header-timeout-s"], {"type": float, "default": 10.0,
                              "help": "a connection that has not sent its request headers within this time (or "
                                      "pauses a body upload this long x3) is closed (default 10)"}),
    (["--dicom"], {"metavar": "AE_TITLE@PORT", "help": "also listen for DICOM C-STORE as this AE title on this port "
                                                       "(needs --dicom-allow and --dicom-destination)"}),
    (["--dicom-allow"], {"metavar": "AE[,AE]", "help": "calling AE titles allowed to send ('*': any, with a warning)"}),
    (["--dicom-destination"], {"metavar": "AE@HOST:PORT|URL",
                               "help": "where results go: a DICOM node (C-STORE) or a DICOMweb root (STOW-RS)"}),
    (["--dicom-outputs"], {"metavar": "KINDS", "help": "DICOM results per series: seg,rtstruct,sr,capture "
                                                       "(default: seg,sr for segmentation, sr otherwise)"}),
    (["--dicom-settle-s"], {"type": float, "default": 5.0,
                            "help": "a received series is complete this long after its last instance (default 5)"}),
]


def run(args) -> int:
    import uvicorn

    from medlens.budget import SERVICE_BUDGET, WorkBudget, set_budget
    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app, log_scrubbed, server_config
    from medlens.deploy.uploads import UploadLimits
    from medlens.deploy.workers import WorkerPool, WorkerSpec, default_workers

    check_limits(args)
    dicom = dicom_config(args)  # checked before the model loads
    token = read_token(args.token_file) if args.token_file else None
    max_voxels = args.max_voxels or getattr(args, "budget_max_voxels", None)  # `medlens --max-voxels N serve` too
    budget = SERVICE_BUDGET if max_voxels is None else WorkBudget(max_voxels, SERVICE_BUDGET.hint)
    set_budget(budget)  # this process stages uploads (header checks) under the same budget as the workers
    predictor = Predictor.from_path(args.model, backend=args.backend)  # the card, the task's options
    spec = WorkerSpec(Path(args.model), workers=args.workers or default_workers(), backend=args.backend,
                      budget=budget, timeout_s=args.request_timeout_s, memory_mb=args.worker_memory_mb)
    pool = WorkerPool(spec)
    app = create_app(predictor, token=token, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     limits=UploadLimits(max_voxels=budget.max_voxels), workers=pool)
    listener = pacs_listener(dicom, predictor, pool) if dicom else None  # beside uvicorn, on the same workers
    log_scrubbed()
    print(f"medlens serve: {predictor.task.name} model {predictor.card.get('model_version')} on http://{args.host}:{args.port}/"
          f" ({spec.workers} worker(s), {spec.timeout_s:g} s and {spec.memory_mb:.0f} MiB per request)"
          + ("  (bearer token required)" if token else ""), flush=True)
    if listener is not None:
        print(listener.describe(), flush=True)
    config = server_config(app, host=args.host, port=args.port, max_connections=args.max_connections,
                           head_timeout_s=args.header_timeout_s, body_timeout_s=3 * args.header_timeout_s)
    if listener is not None:
        listener.start()
    try:
        uvicorn.Server(config).run()
    finally:
        if listener is not None:
            listener.stop()
    return 0


def dicom_config(args):
    """The ``--dicom*`` options as a listener configuration (``None`` without ``--dicom``)."""
    from medlens.deploy.pacs.listener import listener_config

    return listener_config(listen=args.dicom, allow=args.dicom_allow, destination=args.dicom_destination,
                           outputs=args.dicom_outputs, settle_s=args.dicom_settle_s, host=args.host)


def pacs_listener(config, predictor, pool):
    """The DICOM listener on the service's worker pool (see ``medlens.deploy.pacs.listener``)."""
    from dataclasses import replace

    from medlens.deploy.pacs.listener import PacsListener, parse_kinds

    return PacsListener(predictor, pool, replace(config, kinds=parse_kinds(config.kinds, predictor)))


def check_limits(args) -> None:
    """Each numeric option in its range.

    Raises:
        ConfigError: the first option out of range, with the range.
    """
    from medlens.errors import ConfigError

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: must be a positive number of MiB")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be 1..65535")
    for flag, value, low in (("--workers", args.workers, 1), ("--max-voxels", args.max_voxels, 1),
                             ("--request-timeout-s", args.request_timeout_s, 0.01),
                             ("--worker-memory-mb", args.worker_memory_mb, 16),
                             ("--max-connections", args.max_connections, 1),
                             ("--header-timeout-s", args.header_timeout_s, 0.01)):
        if value is not None and not value >= low:
            raise ConfigError(f"{flag} {value}: must be at least {low}")


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
