"""The DICOM listener of ``medlens serve BUNDLE --dicom AE_TITLE@PORT``: a C-STORE SCP (pynetdicom).

>>> listener = PacsListener(predictor, pool, ListenerConfig("MEDLENS", 11112, allow=("SCANNER",),
...                                                         destination=Destination.parse("PACS@pacs:104")))
>>> listener.start(); ...; listener.stop()

Only the calling AE titles in ``allow`` may associate (others are rejected at association, and the log says
so). Each received instance is written into a spool folder of its series; for a model of several series (its
plan's ``dataset.series_rules``), into a folder of its study, a subfolder per series, and "series" below reads
"study": the study's series that the rules pick (one each, else it is dropped with the reason) are the case, and
a study is complete ``settle_s`` after its last instance only (each of its series may come on an association of
its own). A series is complete
``settle_s`` seconds after its last instance, or ``RELEASE_GRACE_S`` after the association that sent it is
released (a sender that opens one association per instance then still makes one series). A completed series
the model's rules take is predicted in one of the service's worker processes (its time, memory and voxel
limits: a hostile series costs a worker, never the listener), its DICOM results are sent to the destination,
and its spool folder is removed. A series that matches no rule is logged with the reason and dropped; nothing
is sent. A series whose prediction or sending fails stays under ``spool/failed/`` and the log says why.
Log lines name a series by number, modality and slice count: never a patient, a UID or a description.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from medlens.deploy.pacs.send import Destination

LOG = logging.getLogger("medlens.pacs")
RELEASE_GRACE_S = 0.5  # after an association's release, how long its series wait for a next association
CHECK_INTERVAL_S = 0.1
ANY_AE = "*"


@dataclass(frozen=True)
class ListenerConfig:
    """How the listener is reached, whom it accepts, and where results go.

    Attributes:
        ae_title: this node's AE title (what senders call).
        port: TCP port; ``host`` the address bound.
        allow: calling AE titles accepted; ``("*",)`` accepts any.
        destination: where results are sent.
        kinds: DICOM result kinds sent for each series (``seg``, ``rtstruct``, ``sr``, ``capture``).
        spool: where received instances wait (a temporary folder when ``None``).
        settle_s: a series is complete this long after its last instance.
    """

    ae_title: str
    port: int
    allow: tuple[str, ...]
    destination: Destination
    kinds: tuple[str, ...]
    host: str = "127.0.0.1"
    spool: Path | None = None
    settle_s: float = 5.0


@dataclass
class _Series:
    folder: Path
    last_s: float
    count: int = 0
    voxels: int = 0
    over_budget: bool = False
    open_associations: set = field(default_factory=set)
    released_s: float | None = None


class SeriesSpool:
    """Received instances by series (or by study: the key is the listener's choice), and which are complete
    (thread-safe).

    Args:
        max_voxels: pixels a series may hold in the spool (the service's work budget): past it, the series' further
            instances are refused and the series is dropped, so a sender cannot fill the disk with one series.
        on_release: a series is also complete ``RELEASE_GRACE_S`` after the association that sent it ends (off for
            studies: a PACS often sends each series of a study on an association of its own).
    """

    def __init__(self, root: Path, settle_s: float, max_voxels: int | None = None, *, on_release: bool = True):
        self.root, self.settle_s, self.max_voxels = Path(root), settle_s, max_voxels
        self.on_release = on_release
        self._lock = threading.Lock()
        self._open: dict[str, _Series] = {}
        self._made = 0

    def folder_for(self, series_uid: str, association: int, voxels: int = 0) -> Path | None:
        """The spool folder of an arriving instance of ``voxels`` pixels (a new folder after that series was
        completed); ``None`` when the series would exceed ``max_voxels`` (it is then dropped whole)."""
        with self._lock:
            series = self._open.get(series_uid)
            if series is None:
                self._made += 1
                key = hashlib.sha256(series_uid.encode()).hexdigest()[:12]
                series = self._open[series_uid] = _Series(self.root / f"{self._made:05d}-{key}", time.monotonic())
                series.folder.mkdir(parents=True)
            series.last_s, series.count, series.voxels = time.monotonic(), series.count + 1, series.voxels + voxels
            series.open_associations.add(association)
            series.released_s = None
            if self.max_voxels is not None and series.voxels > self.max_voxels:
                if not series.over_budget:
                    series.over_budget = True
                    shutil.rmtree(series.folder, ignore_errors=True)
                    LOG.warning("a series passed the work budget of %d voxels after %d instances; its instances are "
                                "refused (the limit is set by `medlens serve --max-voxels`)", self.max_voxels,
                                series.count)
                return None
            return series.folder

    def released(self, association: int) -> None:
        with self._lock:
            for series in self._open.values():
                series.open_associations.discard(association)
                if not series.open_associations:
                    series.released_s = time.monotonic()

    def complete(self) -> list[Path]:
        """The folders of series now complete (each returned once)."""
        now, done = time.monotonic(), []
        with self._lock:
            for uid, series in list(self._open.items()):
                settled = now - series.last_s >= self.settle_s
                released = (self.on_release and series.released_s is not None
                            and now - series.released_s >= RELEASE_GRACE_S)
                if settled or released:
                    series = self._open.pop(uid)
                    if not series.over_budget:
                        done.append(series.folder)
        return done


class PacsListener:
    """A Storage SCP predicting each completed series on a :class:`~medlens.deploy.workers.WorkerPool`.

    Args:
        predictor: the model (its rules; the pool's workers load the same model and predict).
        pool: the HTTP service's :class:`~medlens.deploy.workers.WorkerPool`: the service starts it on its event
            loop (``pool.loop``); the listener's threads hand their jobs to that loop.
        config: see :class:`ListenerConfig`.
    """

    def __init__(self, predictor, pool, config: ListenerConfig):
        from medlens.deploy.pacs.rules import SeriesRules, StudyRules

        self.predictor, self.pool, self.config = predictor, pool, config
        self.rules = SeriesRules.of(predictor)
        self.study_rules = StudyRules.of(predictor)  # a model of several series collects whole studies
        self._temp = None
        self._server = None
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max(2, pool.spec.workers), thread_name_prefix="medlens-pacs")
        self.spool: SeriesSpool | None = None
        self.delivered = 0  # series whose results were sent
        self.refused = 0  # series no rule took, or whose prediction or sending failed

    def describe(self) -> str:
        """The startup lines: where it listens, whom it takes, where results go (and a warning for ``*``)."""
        c = self.config
        text = (f"medlens serve: DICOM C-STORE as {c.ae_title} on {c.host}:{c.port} from {', '.join(c.allow)}; "
                f"takes {(self.study_rules or self.rules).describe()}; results ({','.join(c.kinds)}) to "
                f"{c.destination.describe()}")
        if ANY_AE in c.allow:
            text += ("\nmedlens serve: WARNING: --dicom-allow '*' accepts any calling AE title: anyone who reaches "
                     "the port can send images and have results sent on; list the senders' AE titles instead")
        return text

    def start(self) -> None:
        """Listen (returns at once; the server and the completion check run in threads)."""
        import tempfile

        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines describe every object received
        root = self.config.spool
        if root is None:
            self._temp = tempfile.TemporaryDirectory(prefix="medlens-spool-")
            root = Path(self._temp.name)
        self.spool = SeriesSpool(Path(root), self.config.settle_s, self.pool.spec.budget.max_voxels,
                                 on_release=self.study_rules is None)
        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)  # C-ECHO: a PACS tests the connection with it
        ae.require_calling_aet = [] if ANY_AE in self.config.allow else list(self.config.allow)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_RELEASED, self._on_end),
                    (evt.EVT_ABORTED, self._on_end), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        threading.Thread(target=self._watch, name="medlens-pacs-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop listening; series still waiting for a worker are given up (the service has stopped its pool)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self._executor.shutdown(wait=True)
        if self._temp is not None:
            self._temp.cleanup()

    # ---- receiving --------------------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        """Write one instance into its series' spool folder; 0x0000, or a failure status (never raises)."""
        from medlens._files import write_bytes_atomic

        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
            if not series_uid or not sop_uid:
                LOG.warning("an instance without SeriesInstanceUID or SOPInstanceUID was refused")
                return 0xC000
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            key = series_uid
            if self.study_rules is not None:  # a study's series in one spool folder, a subfolder each
                key = str(ds.get("StudyInstanceUID", ""))
                if not key:
                    LOG.warning("an instance without StudyInstanceUID was refused (the model takes whole studies)")
                    return 0xC000
            folder = self.spool.folder_for(key, id(event.assoc),
                                           int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames)
            if folder is None:
                return 0xA700  # Out of resources: the series (or study) is past the work budget
            if self.study_rules is not None:
                folder = folder / hashlib.sha256(series_uid.encode()).hexdigest()[:12]
                folder.mkdir(exist_ok=True)
            name = hashlib.sha256(sop_uid.encode()).hexdigest()[:20] + ".dcm"
            write_bytes_atomic(folder / name, event.encoded_dataset(include_meta=True))
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - a bad instance is refused; the listener keeps listening
            LOG.error("an instance could not be stored in the spool (%s)", type(exc).__name__)
            return 0xA700

    def _on_end(self, event) -> None:
        self.spool.released(id(event.assoc))

    def _on_rejected(self, event) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        LOG.warning("association from AE title %r refused: not in --dicom-allow (%s)", calling,
                    ", ".join(self.config.allow))

    # ---- completed series -------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            for folder in self.spool.complete():
                try:
                    self._executor.submit(self._process, folder)
                except RuntimeError:  # stopping: the executor takes no more series
                    return

    def _process(self, folder: Path) -> None:
        """Check the rules, predict in a worker, send, clean up (in an executor thread; never raises)."""
        from medlens.deploy.pacs.rules import summarise

        try:
            if self.study_rules is not None:
                picked, reason, what = self._study(folder)
            else:
                summary = summarise(folder)
                picked, reason, what = {}, self.rules.refusal(summary), summary.describe()
            if reason:
                self.refused += 1
                LOG.info("not predicted: %s; nothing sent", reason)
                shutil.rmtree(folder, ignore_errors=True)
                return
            self._predict_and_send(folder, what, picked)
        except Exception as exc:  # noqa: BLE001 - one series failing must not stop the listener
            self.refused += 1
            LOG.error("a received %s failed unexpectedly (%s); kept under %s",
                      "study" if self.study_rules is not None else "series", type(exc).__name__, self._keep(folder))

    def _study(self, folder: Path) -> tuple[dict[str, Path], str | None, str]:
        """The series the model's rules pick of a received study, why it is not taken, and its log name."""
        from medlens.errors import DatasetError

        try:
            return self.study_rules.pick(folder)
        except DatasetError:
            return {}, "a study without a DICOM image series", "a study"

    def _predict_and_send(self, folder: Path, what: str, views: dict[str, Path]) -> None:
        """Predict the series in ``folder`` (or the study's picked ``views``) in a worker, and send its results."""
        from medlens.deploy.pacs.send import SendError, send_files
        from medlens.deploy.service import scrub_paths
        from medlens.deploy.workers import WorkerRefusal

        started, out = time.monotonic(), folder.with_name(folder.name + ".results")
        job = {"path": str(next(iter(views.values()), folder)), "folder": str(folder), "options": {},
               "dicom": {"out": str(out), "kinds": list(self.config.kinds)}}
        if views:  # the results refer to the first view's series
            job["views"] = {name: str(series) for name, series in views.items()}
        try:
            files = [Path(p) for p in self._run(job)["files"]]
            send_files(files, self.config.destination)
        except (WorkerRefusal, SendError) as exc:
            self.refused += 1
            message = scrub_paths(str(exc)).replace(str(folder), "the series")
            LOG.warning("%s: %s; nothing sent, kept under %s", what, message, self._keep(folder, out))
            return
        self.delivered += 1
        LOG.info("%s: %d result object(s) sent to %s in %.1f s", what, len(files),
                 self.config.destination.describe(), time.monotonic() - started)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

    def _run(self, job: dict) -> dict:
        """``pool.predict(job)`` on the pool's event loop, from this thread.

        Raises:
            WorkerRefusal: the worker refused the series or broke a limit, or the service stopped meanwhile.
        """
        from concurrent.futures import TimeoutError as Pending

        from medlens.deploy.workers import WorkerRefusal

        loop = self._pool_loop()
        future = asyncio.run_coroutine_threadsafe(self.pool.predict(job), loop)
        while True:
            try:
                return future.result(timeout=0.5)
            except Pending:
                if not loop.is_running():  # the service stopped: nobody will finish this job
                    future.cancel()
                    raise WorkerRefusal("the service stopped before the series was predicted", 503) from None

    def _pool_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the service started the pool on (waiting while the service starts its workers).

        Raises:
            WorkerRefusal: the service never started its workers.
        """
        from medlens.deploy.workers import START_TIMEOUT_S, WorkerRefusal

        deadline = time.monotonic() + START_TIMEOUT_S
        while self.pool.loop is None and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.05)
        if self.pool.loop is None:
            raise WorkerRefusal("the service's prediction workers never started", 503)
        return self.pool.loop

    def _keep(self, folder: Path, *more: Path) -> str:
        failed = self.spool.root / "failed"
        failed.mkdir(exist_ok=True)
        for path in (folder, *more):
            if path.exists():
                shutil.move(str(path), str(failed / path.name))
        return str(failed)


def listener_config(*, listen: str | None, allow: str | None, destination: str | None, outputs: str | None,
                    settle_s: float, host: str) -> ListenerConfig | None:
    """``medlens serve``'s ``--dicom*`` options checked (before the model loads); ``None`` without ``--dicom``.
    ``kinds`` holds ``--dicom-outputs`` as given (``()``: the task's default): :func:`parse_kinds` resolves it.

    Raises:
        ConfigError: a malformed option, a missing ``--dicom-allow`` / ``--dicom-destination``, or a ``--dicom-*``
            option without ``--dicom``.
    """
    from medlens.deploy.pacs.send import Destination
    from medlens.errors import ConfigError

    if not listen:
        if allow or destination or outputs:
            raise ConfigError("--dicom-allow / --dicom-destination / --dicom-outputs configure the DICOM listener; "
                              "add --dicom AE_TITLE@PORT to start it")
        return None
    ae_title, port = parse_listen(listen)
    allowed = parse_allow(allow)
    if not destination:
        raise ConfigError("--dicom needs --dicom-destination AE@HOST:PORT (a DICOM node, C-STORE) or "
                          "http(s)://HOST[:PORT]/dicom-web (a DICOMweb server, STOW-RS): where each series' results go")
    if not settle_s > 0:
        raise ConfigError(f"--dicom-settle-s {settle_s}: must be a positive number of seconds")
    kinds = (outputs,) if outputs else ()
    return ListenerConfig(ae_title, port, allowed, Destination.parse(destination), kinds, host=host, settle_s=settle_s)


def parse_listen(text: str) -> tuple[str, int]:
    """``--dicom AE_TITLE@PORT`` as ``(ae_title, port)``.

    Raises:
        ConfigError: not of that form.
    """
    from medlens.errors import ConfigError

    ae, sep, port = text.strip().rpartition("@")
    if not sep or not 1 <= len(ae) <= 16 or "\\" in ae or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--dicom {text!r}: expected AE_TITLE@PORT, an AE title of 1-16 characters and a port "
                          "1..65535, e.g. --dicom MEDLENS@11112")
    return ae, int(port)


def parse_allow(text: str | None) -> tuple[str, ...]:
    """``--dicom-allow AE[,AE]`` (or ``*``: any AE title) as a tuple.

    Raises:
        ConfigError: missing (the listener never accepts anyone by default), or an AE title longer than 16.
    """
    from medlens.errors import ConfigError

    if not text or not text.strip():
        raise ConfigError("--dicom needs --dicom-allow AE[,AE]: the calling AE titles of the scanners / PACS that "
                          "may send (or --dicom-allow '*' to accept any AE title on a trusted network)")
    titles = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in titles if len(t) > 16]
    if bad:
        raise ConfigError(f"--dicom-allow: {', '.join(bad)} is longer than an AE title's 16 characters")
    return titles


def parse_kinds(given, predictor) -> tuple[str, ...]:
    """``--dicom-outputs seg,sr`` (a string or a sequence of them) as a tuple (the task's default when empty).

    Raises:
        ConfigError: a kind medlens does not write, or one the model's task cannot give.
    """
    from medlens.deploy.dicom import check_kinds
    from medlens.deploy.dicom import parse_kinds as parse_dicom_kinds
    from medlens.deploy.pacs.results import default_outputs

    given = ",".join(given) if isinstance(given, (tuple, list)) else given
    kinds = parse_dicom_kinds(given) if given else default_outputs(predictor.task.name)
    check_kinds(predictor, kinds)
    return tuple(kinds)
