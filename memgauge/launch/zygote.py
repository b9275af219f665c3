"""The preloaded worker zygote: a server process that has imported torch, transformers, the
technique libraries and the worker's own modules, has run no torch op, and forks one fresh child
per cell.

Why: a spawned worker pays every import again (seconds per cell on a small CPU); a forked child
starts with them loaded.  What stays as in a spawned worker (memgauge.launch.isolate):
- one process per cell, in its own process group (the zygote and the child both call setpgid,
  so the parent can kill the group from the moment it knows the pid), killed at its timeout;
- the cell's own environment: the child's os.environ is replaced by the parent's worker_env for
  that cell (MEMGAUGE_PLUGINS and the like are read at run time; plugins are imported in the
  child, never in the zygote, so a plugin that monkey-patches torch dies with its cell);
- the memory limit (RLIMIT_AS) and clean peaks: set and reset in the child (the worker's main);
- stdout/stderr to the parent's files, the exit status as waitpid gives it.
What the zygote must not do, and checks: initialise CUDA (a forked child could not use it), or
start Python threads (fork keeps only the calling thread).  The one native thread torch's import
leaves (OpenBLAS's pool, via numpy) is shut down and restarted by OpenBLAS's own fork handlers.
Variables read at import time (TORCHAO_FORCE_SKIP_LOADING_SO_FILES, MALLOC_MMAP_THRESHOLD_ which
glibc reads at start) are the zygote's own: a cell whose environment differs in anything but the
run-time variables (`RUNTIME_ENV`) gets a new zygote.

Lifetime: one zygote per orchestrating process at a time (a sweep, a `run`, a test session),
started on first use, ended by `close()` (atexit, Ctrl-C through isolate.kill_current), by the
end of its control pipe, or by the parent's death (PR_SET_PDEATHSIG; the child has the same on
the zygote, so nothing outlives a `kill -9` of the orchestrator).

Protocol: the parent writes one JSON request a line on the zygote's stdin
({"cell", "env", "stdout", "stderr"}); the zygote answers JSON lines on its stdout: {"ready"}
once, then {"pid"} when a child is forked and {"pid", "wait_status"} when it has ended.  The
parent side of this module imports no torch."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

PRELOAD = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",  # with it torchao (transformers imports it)
    "transformers.models.gpt2.modeling_gpt2",
    "memgauge.workloads.worker",
    "memgauge.workloads.build",
    "memgauge.workloads.steps",
    "memgauge.workloads.distributed",
    "memgauge.estimate.analytic",
    "memgauge.estimate.traced",
    "memgauge.profilers.breakdown",
    "memgauge.profilers.cpu_peak",
    "memgauge.profilers.timing",
    "memgauge.results.provenance",
)
"""imported by every zygote (no torch op runs during these imports): what every cell imports"""

PRELOAD_CPU = ("torchao.quantization", "torchao.optim")
"""the technique libraries every CPU cell's imports load anyway, CPU zygotes only (on a CUDA
machine torchao's import loads its CUDA extensions).  bitsandbytes (+40 MiB resident) and peft
(+9 MiB) are not preloaded: a forked child maps all of the zygote's memory, so a library there
is in every cell's host peak, and a baseline cell would read ~11 % above its spawned value; the
cells that use them import them (peft ~2 s)."""

RUNTIME_ENV = ("MEMGAUGE_", "PYTEST_CURRENT_TEST")
"""environment variables (prefixes) read only at run time: a cell may differ in them and still be
forked from the same zygote (the child gets them)"""

START_TIMEOUT_S = 300.0


class ZygoteError(RuntimeError):
    """The zygote could not start or died; the caller falls back to a spawned worker."""


def _key(env: dict[str, str], python: str, device: str) -> tuple:
    kept = tuple(sorted((k, v) for k, v in env.items() if not k.startswith(RUNTIME_ENV)))
    return (python, device.startswith("cuda"), kept)


class Zygote:
    """The parent's handle on one zygote process."""

    def __init__(self, env: dict[str, str], python: str, cuda: bool) -> None:
        zenv = dict(env)  # its run-time variables are dropped in the zygote itself (serve)
        if cuda:  # torch.cuda.is_available() by NVML: does not initialise CUDA before fork
            zenv["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        t0 = time.perf_counter()
        self._err = tempfile.TemporaryFile()  # import warnings: kept, never a full pipe
        self.proc = subprocess.Popen(
            [python, "-m", "memgauge.launch.zygote", str(os.getpid()), "cuda" if cuda else "cpu"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=zenv,
            start_new_session=True,  # Ctrl-C reaches the parent only; it ends us
        )
        self._buf = b""
        self.child: int | None = None
        global _starting
        _starting = self.proc  # close() (a signal handler) ends it while it preloads
        try:
            ready = self._read(START_TIMEOUT_S)
        finally:
            _starting = None
        if ready is None or not ready.get("ready"):
            err = self._stderr_tail()
            self.close()
            raise ZygoteError(f"the worker zygote did not start: {ready or err}")
        self.preload_s = ready.get("preload_s")
        self.start_s = time.perf_counter() - t0
        self.native_threads = ready.get("threads")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        try:
            self._err.seek(0)
            return self._err.read().decode("utf-8", "replace")[-2000:]
        except (OSError, ValueError):
            return ""

    def _read(self, timeout: float | None) -> dict[str, Any] | None:
        """The next JSON line from the zygote, or None on timeout / end of pipe."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:  # closed under us by close() (a signal handler): the same as its end
                fd = self.proc.stdout.fileno()
                r, _, _ = select.select([fd], [], [], left)
                if not r:
                    return None
                chunk = os.read(fd, 65536)
            except (OSError, ValueError):
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def fork(self, cell: dict[str, Any], env: dict[str, str], stdout: str, stderr: str) -> int:
        """Start the cell in a forked child; its pid (also its process group)."""
        req = {"cell": cell, "env": env, "stdout": stdout, "stderr": stderr}
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ZygoteError(f"the worker zygote is gone: {exc}") from None
        msg = self._read(30.0)
        if msg is None or "pid" not in msg:
            raise ZygoteError(f"the worker zygote did not fork: {msg or self._stderr_tail()}")
        self.child = msg["pid"]
        return msg["pid"]

    def wait(self, timeout: float) -> int | None:
        """The child's wait status once it has ended, or None if still running after timeout."""
        msg = self._read(timeout)
        if msg is None:
            if not self.alive():
                raise ZygoteError("the worker zygote died while its child ran")
            return None
        self.child = None
        return int(msg["wait_status"])

    def close(self) -> None:
        """End the zygote (and, through PDEATHSIG, any child it still has)."""
        if self.child:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self._err):
            with contextlib.suppress(Exception):
                f.close()


_zygote: Zygote | None = None
_key_now: tuple | None = None
_starting: subprocess.Popen | None = None


def get(env: dict[str, str], python: str, device: str) -> Zygote:
    """The zygote for cells of this environment, started (or restarted) if needed."""
    global _zygote, _key_now
    key = _key(env, python, device)
    if _zygote is not None and (key != _key_now or not _zygote.alive()):
        close()
    if _zygote is None:
        _zygote = Zygote(env, python, cuda=str(device).startswith("cuda"))
        _key_now = key
    return _zygote


def close() -> None:
    """End this process's zygote, if it has one."""
    global _zygote, _key_now
    z, _zygote, _key_now = _zygote, None, None
    if z is not None:
        z.close()
    if _starting is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(_starting.pid, signal.SIGKILL)


atexit.register(close)


# --- the zygote process itself (below: runs in the server, with torch) ------------------------


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)  # noqa: SLF001


def _preload(cuda: bool) -> None:
    import importlib
    import warnings

    from memgauge.techniques import base

    saved = sys.stdout
    sys.stdout = sys.stderr  # libraries print on import; our stdout is the protocol
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in PRELOAD + (() if cuda else PRELOAD_CPU):
                try:
                    importlib.import_module(name)
                except ImportError:  # an optional library: the child imports it (or fails) itself
                    pass
            # the built-in techniques (plugins are the child's: base._load runs there)
            for name in base.builtin_modules():
                importlib.import_module(name)
    finally:
        sys.stdout = saved


def _settle() -> list[str]:
    """After the imports: the code-version parse cache warmed (source digests by path, mtime and
    size: an edited file is parsed again in the child) and every object so far frozen out of
    the garbage collector (gc.freeze), so a child's gc.collect() and its scans for live tensors
    (gc.get_objects() leaves frozen objects out) walk only what the cell made, not the
    libraries' ~400,000 objects.  Frozen only if the imports left no tensor behind, else the
    child's live-tensor baseline would miss it; what stood in the way is returned."""
    import gc

    from memgauge import codeversion
    from memgauge.profilers.live import live_tensors
    from memgauge.techniques import base

    codeversion.module_closure(codeversion.CORE + tuple(base.builtin_modules()))
    codeversion._cell_version.cache_clear()  # noqa: SLF001 - only the per-file cache is kept
    gc.collect()
    if live_tensors():
        return ["imports left tensors alive: not frozen"]
    gc.freeze()
    return []


MADV_POPULATE_READ = 22


def _resident_file_pages() -> list[tuple[int, int]]:
    """The zygote's file-backed pages present in its page tables, as (address, length) runs.
    fork copies no page-table entries of read-only file mappings (library code and data): the
    child would fault them back lazily and start with a smaller resident set than a spawned
    worker that imported the same libraries.  The child maps these runs again
    (`_map_like_zygote`), so its host peak equals a spawned worker's."""
    import numpy as np

    page = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pm:
            for line in maps:
                f = line.split()
                if len(f) < 6 or f[4] == "0" or not f[5].startswith("/"):
                    continue
                a, b = (int(x, 16) for x in f[0].split("-"))
                pm.seek(a // page * 8)
                bits = np.frombuffer(pm.read((b - a) // page * 8), dtype=np.uint64)
                present = (bits >> np.uint64(63)).astype(np.int8)  # bit 63: page present
                if not present.any():
                    continue
                d = np.diff(np.concatenate(([0], present, [0])))
                for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True):
                    runs.append((a + int(s) * page, int(e - s) * page))
    except OSError:
        return []
    return runs


def _map_like_zygote(runs: list[tuple[int, int]]) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for addr, length in runs:
        if libc.madvise(addr, length, MADV_POPULATE_READ) != 0:
            return  # a kernel before 5.14: the child's resident set starts smaller


def _child(req: dict[str, Any], ctl: tuple[int, int], runs: list[tuple[int, int]]) -> None:
    """In the forked child: become the cell's worker; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_TRUNC)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_TRUNC)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {null, out, err} - set(ctl) - {2}:  # the control pipe's ends are replaced
            os.close(fd)
        os.environ.clear()
        os.environ.update(req["env"])
        _map_like_zygote(runs)
        from memgauge.workloads import worker

        code = worker.serve(req["cell"])
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # noqa: SLF001 - never run the zygote's atexit handlers or its loop


def serve(parent: int, cuda: bool) -> int:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us, never a terminal
    for k in [k for k in os.environ if k.startswith(RUNTIME_ENV)]:
        del os.environ[k]  # MEMGAUGE_PLUGINS and the like are each cell's, never the zygote's
    t0 = time.perf_counter()
    _preload(cuda)
    import threading

    import torch

    problems = []
    if torch.cuda.is_initialized():
        problems.append("CUDA was initialised by an import")
    if threading.active_count() != 1:
        problems.append(f"imports started Python threads: {threading.enumerate()}")
    out = sys.stdout.buffer
    if problems:
        out.write((json.dumps({"ready": False, "error": "; ".join(problems)}) + "\n").encode())
        out.flush()
        return 1
    threads = sorted(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else []
    notes = _settle()
    runs = _resident_file_pages()
    ready = {"ready": True, "preload_s": round(time.perf_counter() - t0, 3), "notes": notes}
    ready["threads"] = len(threads)
    out.write((json.dumps(ready) + "\n").encode())
    out.flush()
    ctl = (0, 1)
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(0, 1 << 20)
            if not chunk:  # the parent closed the pipe (or died): done
                return 0
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        req = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, ctl, runs)
        with contextlib.suppress(OSError):  # the child does the same: no race with a killpg
            os.setpgid(pid, pid)
        out.write((json.dumps({"pid": pid}) + "\n").encode())
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write((json.dumps({"pid": pid, "wait_status": status}) + "\n").encode())
        out.flush()


if __name__ == "__main__":
    raise SystemExit(serve(int(sys.argv[1]), sys.argv[2] == "cuda"))
