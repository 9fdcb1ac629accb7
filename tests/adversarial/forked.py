"""``medlens ARGV`` in a forked child: its exit status, output, time and peak memory.

Importing torch and medlens once and forking per case costs milliseconds instead of the seconds a
fresh interpreter takes. The forking parent is a small server process (:class:`ForkServer`), not
the test process: a process that has trained a model holds torch's OpenMP thread pool, and a child
forked from it hangs at its first parallel operation. The parent reads the child's peak resident size from ``wait4``'s
``ru_maxrss`` and compares it with its own resident size at the fork (the child starts with the
parent's pages). A child still running past the time limit is sent SIGUSR1, so faulthandler writes
where it is (the module at fault) to ``stack.txt``; past ``kill_s`` it is killed. The child's
address space is capped 3 GiB above the parent's, so a runaway allocation fails there
(``MemoryError``) instead of swapping the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GUARD_BYTES = 3 << 30  # address space a child may add before its allocations fail


@dataclass(frozen=True)
class Ran:
    """What one forked ``medlens`` command did.

    Attributes:
        rc: exit status; ``-N`` when killed by signal N. timed_out: killed after ``kill_s``.
        out, err: what it printed. wall_s: seconds until it exited. grew_mb: peak resident size over the parent's.
        stack: where it was when it passed the time limit (a faulthandler dump), else empty.
    """

    rc: int
    out: str
    err: str
    wall_s: float
    grew_mb: float
    timed_out: bool
    stack: str = ""


def resident_kb(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _virtual_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


#: imported once by the fork server, so a child does not spend seconds importing them (no torch op runs)
PRELOAD = ("torch", "SimpleITK", "pydicom", "PIL.Image", "monai.data", "monai.networks.nets", "monai.inferers",
           "medlens.cli", "medlens.io", "medlens.deploy", "medlens.data", "medlens.data.audit", "medlens.explain",
           "medlens.tasks.classification.task", "medlens.tasks.classification.predict", "medlens.models.classifiers",
           "medlens.tasks.segmentation.task", "medlens.tasks.segmentation.infer", "medlens.models.segmenters")


def preload() -> None:
    """Import what the commands need once, in the parent, so each forked child starts at once."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # a module moved: its children import it themselves, only slower
            pass


def run_medlens(argv: list[str], folder: Path, limit_s: float, kill_s: float) -> Ran:
    """``medlens.cli.main(argv)`` in a forked child whose working directory is ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out_path, err_path, stack_path = folder / "stdout.txt", folder / "stderr.txt", folder / "stack.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    base_kb, guard = resident_kb(), _virtual_bytes() + GUARD_BYTES
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child never returns
        _child(argv, folder, (out_path, err_path, stack_path), guard)
    status, usage, timed_out = _wait(pid, start, limit_s, kill_s)
    wall_s = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    return Ran(rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), wall_s,
               max(0.0, (usage.ru_maxrss - base_kb) / 1024), timed_out, stack_path.read_text(errors="replace"))


def _child(argv: list[str], folder: Path, paths: tuple[Path, Path, Path], guard: int) -> None:
    code = 70
    try:
        import faulthandler
        import resource
        import traceback

        os.chdir(folder)
        for fd, path in ((1, paths[0]), (2, paths[1])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        stack = open(paths[2], "w")
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        faulthandler.register(signal.SIGUSR1, file=stack, all_threads=False)
        resource.setrlimit(resource.RLIMIT_AS, (guard, guard))
        from medlens.cli import main

        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what an uncaught exception does to the console script
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _wait(pid: int, start: float, limit_s: float, kill_s: float):
    """(status, rusage, killed) of the child: its stack dumped past ``limit_s``, killed past ``kill_s``."""
    dumped = killed = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, killed
        elapsed = time.perf_counter() - start
        if elapsed > limit_s and not dumped:
            os.kill(pid, signal.SIGUSR1)
            dumped = True
        if elapsed > kill_s and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.005 if elapsed < 1 else 0.02)


class ForkServer:
    """A fresh interpreter that imports medlens (running no torch operation) and forks one child per command.

    >>> with ForkServer() as server:
    ...     ran = server.run(["info", "scan.nii"], Path("work"), limit_s=5, kill_s=8)
    """

    def __enter__(self) -> ForkServer:
        tests = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "adversarial.forked"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the fork server did not start")
        return self

    def run(self, argv: list[str], folder: Path, limit_s: float, kill_s: float) -> Ran:
        self.process.stdin.write(json.dumps({"argv": argv, "folder": str(folder), "limit_s": limit_s,
                                             "kill_s": kill_s}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server exited ({self.process.poll()})")
        return Ran(**json.loads(answer))

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serve() -> None:
    preload()
    answers = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    print("ready", file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ran = run_medlens(request["argv"], Path(request["folder"]), request["limit_s"], request["kill_s"])
        print(json.dumps(asdict(ran)), file=answers, flush=True)


if __name__ == "__main__":
    _serve()
