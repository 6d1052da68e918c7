"""The pod's processes: one accelerator process, N front ends that serve its ports, and this
supervisor, which starts them, watches them and stops them.

    python -m service   (or resnet-serve)

* It claims the HTTP and gRPC ports (``ports.py``: every front end listens on each with a
  socket of its own, and the kernel spreads new connections over them), creates the run
  directory (Unix sockets, the admission file, the multiprocess metrics) and, without Redis,
  holds the pod's in-memory job store.
* A front end that dies is replaced at once; only the requests on its own connections are
  lost (and the few connections the kernel had queued on its sockets but it had not yet
  accepted; new ones go to the others). One whose event loop stopped turning for
  ``SERVE_FRONTEND_STALL_S`` is killed, then replaced (``heartbeats.py``). Front ends that keep
  dying (``FRONTEND_RESTARTS`` each within ``ENGINE_WINDOW_S``) end the pod (exit 1).
* The accelerator process is restarted when it dies; meanwhile the front ends answer 503
  (readiness too). Dying ``ENGINE_RESTARTS`` times within ``ENGINE_WINDOW_S`` ends the pod
  (exit 1): the kubelet restarts the container, with its backoff.
* SIGTERM: the front ends drain (readiness 503 at once, in-flight requests finish within
  ``SERVE_GRACEFUL_TIMEOUT_S``), then the accelerator process stops, then this process
  exits 0. A second SIGINT kills everything at once, and this process exits 130 (128 +
  SIGINT, as a shell reports it): requests were dropped.
* It reaps what its children leave: in a container it is PID 1, to which the kernel hands every
  orphan (a killed accelerator process's resource tracker and workers), and elsewhere it makes
  itself their subreaper. asyncio waits only for the processes it started, so the others would
  stay zombies, one more PID each, for the pod's life.

It imports neither TensorFlow nor the web framework: it stays small, and it is what the
container's PID 1 runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ..lifetime import PARENT_PID_ENV
from ..metrics import MULTIPROC_ENV
from ..rundir import ADMISSION, HEARTBEATS, JOBS_SOCKET, METRICS
from ..settings import Settings
from ..wire import segments
from . import heartbeats, ports

log = logging.getLogger("service.supervisor")

RUN_PREFIX = "resnet-serve-"

ENGINE_RESTARTS = 5
ENGINE_WINDOW_S = 300.0
# Front ends that die this often (per front end, in ENGINE_WINDOW_S) cannot start: the pod
# stops (exit 1) rather than restart them for ever.
FRONTEND_RESTARTS = 5
# How often the zombies of orphaned descendants are reaped.
REAP_S = 2.0
# After the front ends' graceful timeout, how long they may still take to exit.
EXIT_GRACE_S = 10.0
# The exit status after a second SIGINT killed every process.
KILLED = 128 + signal.SIGINT
# The front ends' environment (the supervisor's own wins): two malloc arenas instead of
# glibc's eight per core. gRPC's threads each take one, and what a flood of large headers
# left in an arena stays resident: after repeated floods of 32 MB of metadata a front end
# stayed ~100 MB above its baseline with the default, ~50 MB with two (docs/RELIABILITY.md).
FRONTEND_ENV = {"MALLOC_ARENA_MAX": "2"}


def run_dir() -> Path:
    """A fresh private directory, in memory where the pod has a writable /dev/shm, after the
    removal of those of runs that were killed there (``wire/segments.py``)."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    segments.remove_stale(base, RUN_PREFIX)
    return Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=base))


class Supervisor:
    """Runs the pod's processes until SIGTERM.

    Args:
        settings: what the children read too (they inherit the environment).
        directory: the run directory.
    """

    def __init__(self, settings: Settings, directory: Path):
        self.settings = settings
        self.dir = directory
        self.processes = settings.frontends
        self.frontends: dict[int, asyncio.subprocess.Process] = {}
        self.engine: asyncio.subprocess.Process | None = None
        self.stopping = False
        heartbeats.create(directory / HEARTBEATS, self.processes)
        self._heartbeats = heartbeats.Heartbeats(directory / HEARTBEATS)
        self.failed = False
        self.killed = False  # by a second SIGINT
        self._engine_deaths: deque[float] = deque()
        self._frontend_deaths: deque[float] = deque()
        self._watchers: set[asyncio.Task] = set()
        self._stopped = asyncio.Event()

    # -- children --------------------------------------------------------------------------

    async def _spawn(
        self, *args: str, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        # A session of its own: a terminal's Ctrl-C (or any signal to the supervisor's
        # process group) reaches the supervisor alone, which stops the children in order.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            "--run-dir",
            str(self.dir),
            start_new_session=True,
            env={**(env or {}), **os.environ, PARENT_PID_ENV: str(os.getpid())},
        )

    async def start_engine(self) -> None:
        self.engine = await self._spawn("-m", "service.engine.process")
        log.info("accelerator process started (pid %d)", self.engine.pid)
        self._watch(self.engine, self._engine_exited)

    async def start_frontend(self, index: int, replacement: bool = False) -> None:
        self._heartbeats.clear(index)
        process = await self._spawn(
            "-m",
            "service.server.frontend",
            "--index",
            str(index),
            "--processes",
            str(self.processes),
            *(["--replacement"] if replacement else []),
            env=FRONTEND_ENV,
        )
        self.frontends[index] = process
        self._watch(process, lambda code: self._frontend_exited(index, process, code))

    def _watch(self, process: asyncio.subprocess.Process, on_exit) -> None:  # type: ignore[no-untyped-def]
        async def wait() -> None:
            code = await process.wait()
            _mark_dead(process.pid)
            await on_exit(code)

        task = asyncio.create_task(wait())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _frontend_exited(
        self, index: int, process: asyncio.subprocess.Process, code: int
    ) -> None:
        if self.frontends.get(index) is not process:
            return
        from . import pod_admission

        pod_admission.reset(self.dir / ADMISSION, index)
        if self.stopping:
            return
        if _too_often(self._frontend_deaths, FRONTEND_RESTARTS * self.processes):
            log.critical(
                "front ends died %d times in %.0f s; stopping the pod",
                len(self._frontend_deaths),
                ENGINE_WINDOW_S,
            )
            self.failed = True
            self.stop()
            return
        log.error("front end %d (pid %d) exited with %s; replacing it", index, process.pid, code)
        await self.start_frontend(index, replacement=True)

    async def _engine_exited(self, code: int) -> None:
        if self.stopping:
            return
        if _too_often(self._engine_deaths, ENGINE_RESTARTS):
            log.critical(
                "the accelerator process died %d times in %.0f s; stopping the pod",
                len(self._engine_deaths),
                ENGINE_WINDOW_S,
            )
            self.failed = True
            self.stop()
            return
        log.error("the accelerator process exited with %s; restarting it", code)
        await self.start_engine()

    # -- life ------------------------------------------------------------------------------

    async def run(self) -> int:
        from . import pod_admission

        pod_admission.create(self.dir / ADMISSION, self.processes)
        store = await self._job_store()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        await self.start_engine()
        for index in range(self.processes):
            await self.start_frontend(index)
        reaper = asyncio.create_task(self._reap(), name="reaper")
        stalls = None
        if self.settings.frontend_stall_s > 0:
            stalls = asyncio.create_task(self._kill_stalled(), name="stalls")
        log.info(
            "serving on %s:%d: %d front-end processes, 1 accelerator process",
            self.settings.host,
            self.settings.port,
            self.processes,
        )
        await self._stopped.wait()
        if stalls is not None:  # a draining front end's loop no longer ticks
            stalls.cancel()
        await self._shutdown()
        reaper.cancel()
        with contextlib.suppress(OSError):
            self.reap_orphans()
        if store is not None:
            await store.close()
        if self.killed:
            return KILLED
        return 1 if self.failed else 0

    async def _kill_stalled(self) -> None:
        """Kill each front end whose event loop stopped turning (``heartbeats.py``); its exit
        then replaces it, as any front end that died."""
        limit = self.settings.frontend_stall_s
        every = min(1.0, limit / 4)
        loop = asyncio.get_running_loop()
        last = judge_from = loop.time()
        while not self.stopping:
            await asyncio.sleep(every)
            now = loop.time()
            since, last = now - last, now
            if since > every + 1.0:
                # This process did not run either (the pod was paused, or starved of CPU):
                # the front ends, resumed with it, get time to beat again before they are
                # judged.
                judge_from = now + min(limit, 5.0)
            if now < judge_from:
                continue
            for index, process in list(self.frontends.items()):
                age = self._heartbeats.age(index)
                if age is None or age <= limit or process.returncode is not None:
                    continue
                log.error(
                    "front end %d (pid %d): its event loop has not turned for %.1f s "
                    "(SERVE_FRONTEND_STALL_S); killing it",
                    index,
                    process.pid,
                    age,
                )
                self._heartbeats.clear(index)  # one kill; the next one is judged afresh
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    async def _job_store(self):  # type: ignore[no-untyped-def]
        """Without Redis, the pod's in-memory job store lives here."""
        if self.settings.redis_url:
            return None
        from ..jobs.memory import MemoryJobStore
        from ..jobs.shared import StoreServer

        s = self.settings
        server = StoreServer(MemoryJobStore(s.max_jobs, s.job_ttl_s))
        await server.listen(str(self.dir / JOBS_SOCKET))
        return server

    def _on_signal(self, sig: int) -> None:
        if self.stopping and sig == signal.SIGINT:
            log.warning("second SIGINT: killing every process")
            self.killed = True
            for process in self._children():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            return
        log.warning("signal %d: draining", sig)
        self.stop()

    def reap_orphans(self) -> int:
        """Reap the zombies among this process's children that asyncio does not wait for
        (those it did not start); returns how many."""
        started = {p.pid for p in self._children()}
        reaped = 0
        for pid in zombie_children(os.getpid()):
            if pid in started:
                continue
            with contextlib.suppress(ChildProcessError):
                reaped += os.waitpid(pid, os.WNOHANG)[0] == pid
        return reaped

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_S)
            try:
                if reaped := self.reap_orphans():
                    log.info("reaped %d orphaned processes", reaped)
            except OSError:  # no /proc: nothing to reap this way
                return

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._stopped.set()

    def _children(self) -> list[asyncio.subprocess.Process]:
        children = list(self.frontends.values())
        return children + ([self.engine] if self.engine is not None else [])

    async def _shutdown(self) -> None:
        # Each front end closes its listening sockets as it starts to drain.
        grace = self.settings.graceful_timeout_s + EXIT_GRACE_S
        await _terminate(list(self.frontends.values()), grace)
        if self.engine is not None:
            await _terminate([self.engine], 30.0)
        for task in list(self._watchers):
            task.cancel()


def become_subreaper() -> bool:
    """Linux: orphaned descendants are handed to this process instead of PID 1."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def zombie_children(parent: int) -> list[int]:
    """The pids of ``parent``'s children that have exited and wait to be reaped (/proc: its
    threads' lists of children, then each child's state)."""
    children: list[int] = []
    for task in os.scandir(f"/proc/{parent}/task"):
        with contextlib.suppress(OSError), open(f"{task.path}/children", "rb") as f:
            children += [int(pid) for pid in f.read().split()]
    found = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # reaped meanwhile
            continue
        # "pid (comm) state ...": comm may hold spaces and parentheses.
        if stat[stat.rfind(b")") + 2 :].startswith(b"Z"):
            found.append(pid)
    return found


def _too_often(deaths: deque[float], limit: int) -> bool:
    """Count one more death; whether ``limit`` of them fell within ``ENGINE_WINDOW_S``."""
    now = time.monotonic()
    deaths.append(now)
    while deaths and deaths[0] < now - ENGINE_WINDOW_S:
        deaths.popleft()
    return len(deaths) >= limit


async def _terminate(processes: list[asyncio.subprocess.Process], timeout: float) -> None:
    """SIGTERM, then SIGKILL what has not exited after ``timeout`` seconds."""
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    waits = [asyncio.create_task(p.wait()) for p in processes]
    if not waits:
        return
    _, late = await asyncio.wait(waits, timeout=timeout)
    for process in processes:
        if process.returncode is None:
            log.error("pid %d did not stop in %.0f s; killing it", process.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    if late:
        await asyncio.wait(late, timeout=5)


def _mark_dead(pid: int) -> None:
    """Its gauges leave the pod's view (prometheus-client's live modes)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(pid)


def _log_format_given() -> str:
    """SERVE_LOG_FORMAT where it is valid: the lines refusing the settings, which configure
    the logs, are in the format asked for."""
    given = os.environ.get("SERVE_LOG_FORMAT", "text").strip().lower()
    return given if given in ("text", "json") else "text"


def _warn_unknown(warnings: list[str]) -> None:
    for warning in warnings:
        log.warning("%s", warning)


def main() -> int:
    from ..errors import BackendUnavailable, WeightsUnavailable
    from ..lifetime import run
    from ..logs import configure_logging
    from ..model.loader import check_weights, check_weights_file
    from . import preflight

    try:
        settings = preflight.load_settings()
    except preflight.SettingsInvalid as exc:
        configure_logging("info", _log_format_given(), False)
        _warn_unknown(preflight.unknown_variables(os.environ))
        for problem in exc.problems:
            log.critical("invalid setting: %s", problem)
        return preflight.BAD_SETTINGS
    configure_logging(settings.log_level, settings.log_format, settings.log_tracebacks)
    _warn_unknown(preflight.unknown_variables(os.environ))
    from ..model.backends import check

    try:
        check(settings.backend)
    except BackendUnavailable as exc:
        log.critical("%s", exc)
        return 3
    try:
        if settings.strict:
            check_weights(settings.model, settings.weights)
        for where, path in preflight.weight_files(settings):
            if os.path.isfile(path):  # a missing one: random weights, unless strict
                check_weights_file(path, where)
    except WeightsUnavailable as exc:
        log.critical("%s", exc)
        return 3  # what uvicorn answers for a failed startup
    become_subreaper()
    try:
        directory = run_dir()
    except OSError as exc:  # a read-only root file system without a writable /dev/shm or /tmp
        log.critical(
            "no run directory: %s; the pod needs a writable /dev/shm or temporary directory "
            "(TMPDIR, /tmp: an emptyDir volume where the root file system is read-only)",
            exc,
        )
        return 1
    lock = segments.hold(directory)  # noqa: F841 - held until this process exits
    os.environ[segments.TAG_ENV] = directory.name  # its children name their segments after it
    (directory / METRICS).mkdir()
    os.environ[MULTIPROC_ENV] = str(directory / METRICS)
    held: list[socket.socket] = []
    try:
        port, which = settings.port, "SERVE_PORT"
        held.append(ports.claim(settings.host, port))
        if settings.grpc_port:
            port, which = settings.grpc_port, "SERVE_GRPC_PORT"
            held.append(ports.claim(settings.host, port))
    except OSError as exc:
        log.critical("cannot listen on %s:%d (SERVE_HOST, %s): %s", settings.host, port, which, exc)
        for s in held:
            s.close()
        shutil.rmtree(directory, ignore_errors=True)
        return 1
    try:
        return run(Supervisor(settings, directory).run())
    finally:
        for s in held:
            s.close()
        shutil.rmtree(directory, ignore_errors=True)
