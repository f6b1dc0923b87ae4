"""The supervisor: forks the workers, restarts the ones that die, and drains
them all on SIGTERM.

Rules:
- It forks before any event loop or thread exists, so each worker starts
  clean and builds its own loop, listener (SO_REUSEPORT) and store.
- A worker that dies is restarted with the same index, so it reopens the same
  inbox file and owns the same users; its clients reconnect. A worker that
  keeps dying is restarted with growing delays (up to 5 s), not in a tight loop.
- SIGTERM or SIGINT is passed to every worker, which drains (workers.worker);
  the supervisor exits once they all have.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import traceback

from roost import __version__
from roost.config import Settings
from roost.engine.loop import listen_socket
from roost.errors import ConfigError
from roost.workers.links import link_listener
from roost.workers.stats import SharedStats

log = logging.getLogger("roost.supervisor")

MAX_RESTART_DELAY = 5.0  # seconds
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_FATAL = 3  # a worker's status for "do not restart me": the same would fail again


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    workers = settings.workers or os.cpu_count() or 1
    from roost.auth import load_api_key, load_push_secret, load_secret

    # Generated once, before the fork: workers racing to create them would clash.
    load_secret(settings.data_dir, settings.secret_file)
    load_api_key(settings.data_dir, settings.api_key_file)
    if settings.push_webhook:
        load_push_secret(settings.data_dir, settings.push_secret_file)
    _banner(settings, workers)
    _preflight(settings, workers)
    return Supervisor(settings, workers).run()


def _banner(settings: Settings, workers: int) -> None:
    host_port = f"{settings.host}:{settings.port}"
    lines = [f"roost {__version__} listening on ws://{host_port}/ws with {workers} workers"]
    if settings.demo:
        lines.append(f"demo page: http://{host_port}/")
    lines.append(f"metrics: http://{host_port}/metrics")
    lines.append(f"backend API: http://{host_port}/api/ (OpenAPI at /api/openapi.json)")
    lines.append("settings:")
    lines.extend(f"  {name} = {value}" for name, value in settings.describe())
    print("\n".join(lines), flush=True)


def _preflight(settings: Settings, workers: int) -> None:
    from roost.doctor.preflight import preflight

    for warning in preflight(settings.max_connections, workers):
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this worker if the supervisor dies: an
    orphaned worker would keep a share of the port that no one supervises.
    A crash of the supervisor is then a crash of the whole server, which
    loses nothing acked."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.stats = SharedStats(workers)
        self.namespace = str(os.getpid())
        # Made here, before any fork, and kept across worker restarts: a
        # restarting worker's share of new connections and links waits in
        # its backlogs instead of being refused.
        try:
            self.listeners = [listen_socket(settings) for _ in range(workers)]
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from None
        self.link_listeners = [link_listener(self.namespace, i) for i in range(workers)]
        self.children: dict[int, int] = {}  # pid -> worker index
        self.failures: dict[int, int] = {}  # worker index -> consecutive quick deaths
        self.stopping = False
        self.exit_status = 0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        for index in range(self.workers):
            self._spawn(index)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code == EXIT_FATAL:
                log.error("worker %d cannot run; stopping", index)
                self.exit_status = 1
                self._on_stop(signal.SIGTERM, None)
                continue
            self._restart(index, code)
        return self.exit_status

    def _restart(self, index: int, code: int) -> None:
        started = self.stats.row(index)["started_unix"]
        quick = time.time() - started < 10
        self.failures[index] = self.failures.get(index, 0) + 1 if quick else 0
        delay = min(MAX_RESTART_DELAY, 0.1 * 2 ** self.failures[index]) if quick else 0.0
        log.warning("worker %d exited with %d; restarting in %.1f s", index, code, delay)
        time.sleep(delay)
        if not self.stopping:
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = index
            return
        # The child: never return into the supervisor's code.
        _die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = 1
        try:
            for i, (listener, links) in enumerate(
                zip(self.listeners, self.link_listeners, strict=True)
            ):
                if i != index:
                    listener.close()
                    links.close()
            from roost.workers.worker import Place, run_worker

            place = Place(
                index,
                self.workers,
                self.namespace,
                self.stats,
                self.listeners[index],
                self.link_listeners[index],
            )
            code = run_worker(self.settings, place)
        except ConfigError as exc:
            log.error("%s", exc)
            code = EXIT_FATAL
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: draining %d workers", len(self.children))
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
