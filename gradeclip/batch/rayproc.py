"""The processes of a local Ray started by one ``batch`` run: tagged, kept quiet, and gone when the run ends.

Every process the run's Ray starts (GCS, raylet, dashboard and runtime-env agents, workers, actors) inherits the
environment variable ``GRADECLIP_RAY_RUN`` set to the run's own Ray temp folder (a fresh ``/tmp/gcray-*``), so
they can be found by ``/proc/PID/environ`` even after Ray renamed them (``ray::IDLE``) or the driver died. A
watchdog child (this file run as a script, in its own session so that Ctrl-C does not reach it) waits for the
driver to exit and then ends every process so tagged and removes the folder: after a SIGKILL of the driver
nothing of its Ray outlives it by more than a few seconds. Only processes of this user carrying the run's tag are
ever signalled. Imports only the standard library and psutil (the watchdog must start fast).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, TextIO

MARK = "GRADECLIP_RAY_RUN"  # environment variable naming the run's Ray temp folder in each of its processes
POLL_S = 0.5  # how often the watchdog looks at the driver
# `ray start` options given a free port each, chosen on 127.0.0.1 (see PATIENT_START for why)
PORT_OPTIONS = ("port", "node-manager-port", "object-manager-port", "metrics-export-port",
                "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "runtime-env-agent-port")


# `ray start` with two changes for a loaded 2-core machine. (1) The raylet aborts ("Check failed") when the
# dashboard and runtime-env agents have not written their port files within a fixed 15 s (no setting of Ray 2.60
# changes it; their Python start-up alone took 17 s at load 20): the ports are chosen here, so their files are
# written before the raylet starts (the agents then bind those same ports). (2) Ray waits a fixed 30 s for the node
# to register with its GCS (node.py); here it waits until the deadline, unless the raylet died (then the start is
# tried again, START_TRIES).
PATIENT_START = """
import os, time
import ray._private.services as services
from ray.scripts.scripts import main
original = services.get_node
raylet_err = os.path.join({tag!r}, "session_latest", "logs", "raylet.err")
def get_node(*args, **kwargs):
    while True:
        try:
            return original(*args, **kwargs)
        except RuntimeError:
            if time.time() > {deadline} or (os.path.isfile(raylet_err)
                                             and b"Check failed" in open(raylet_err, "rb").read()):
                raise
            time.sleep(0.5)
services.get_node = get_node
import inspect
import ray._raylet as raylet_lib
start_raylet = services.start_raylet
def persist_then_start(*args, **kwargs):
    given = inspect.signature(start_raylet).bind(*args, **kwargs).arguments
    for name in ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port", "runtime_env_agent_port"):
        if given.get(name):
            raylet_lib.persist_port(given["session_dir"], given["node_id"], name, int(given[name]))
    return start_raylet(*args, **kwargs)
services.start_raylet = persist_then_start
main()
"""


def private_env(tag: str) -> dict:
    """Environment of a private local Ray: its processes tagged with ``tag``; Ray's local-only mode (every service
    and the node address on 127.0.0.1, what Ray does by default on macOS and Windows); no token authentication
    (nothing listens beyond loopback); no usage statistics."""
    return {MARK: tag, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_agent_register_timeout_ms": "240000"}


def free_ports(count: int) -> List[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (held together while chosen, so none repeats)."""
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_head(num_cpus: int, tag: str, log_path: str, timeout_s: float) -> str:
    """Start a private Ray head node (``ray start --head`` on 127.0.0.1, ``num_cpus`` CPUs, no dashboard, temp
    folder ``tag``, every port chosen here) and return its address ``127.0.0.1:PORT``. Its output is appended to
    ``log_path``. RuntimeError (one line) when it fails or takes longer than ``timeout_s``."""
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    command = [sys.executable, "-c", PATIENT_START.format(deadline=time.time() + timeout_s, tag=tag), "start", "--head",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=false",
               f"--temp-dir={tag}", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())]
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run(command, env={**os.environ, **private_env(tag)}, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, timeout=max(timeout_s, 0.01))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`ray start --head` did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"`ray start --head` failed (exit {done.returncode})")
    return f"127.0.0.1:{ports['port']}"


def make_temp_dir() -> str:
    """A fresh, short Ray temp folder (``/tmp/gcray-XXXXXXXX``: Ray's Unix sockets need paths under 108 bytes)."""
    return tempfile.mkdtemp(prefix="gcray-", dir="/tmp")


def run_processes(tag: str) -> list:
    """The live processes of this user whose environment has ``GRADECLIP_RAY_RUN=tag`` (never this process or its
    parent). Returns psutil.Process objects."""
    import psutil

    found, me = [], {os.getpid(), os.getppid()}
    uid = os.getuid()
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.pid in me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if has_tag(proc.pid, tag):
                found.append(proc)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    return found


def has_tag(pid: int, tag: str) -> bool:
    """Whether process ``pid`` belongs to the run ``tag``: ``/proc/PID/environ`` holds ``GRADECLIP_RAY_RUN=tag``
    (read raw: Ray's process titles such as ``ray::DashboardAgent`` overwrite that area with NUL bytes from its start,
    and psutil's ``environ()`` then returns nothing), or, when the title erased it all, a file open under ``tag``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"{MARK}={tag}".encode() in f.read().split(b"\0"):
                return True
    except OSError:
        return False
    return holds_file_under(pid, tag)


def holds_file_under(pid: int, folder: str) -> bool:
    """Whether process ``pid`` has a file open under ``folder`` (its logs, for a Ray process whose title erased
    the whole environment area)."""
    prefix = folder.rstrip("/") + "/"
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return True
    except OSError:
        pass
    return False


def reap(tag: str, grace_s: float = 3.0, rounds: int = 5) -> int:
    """End every process of the run ``tag``: SIGTERM, then SIGKILL after ``grace_s``, looking again until none is
    left (the raylet restarts an agent that ends before it does; the new agent would be missed by one look), at most
    ``rounds`` times. Returns how many processes were ended. Ray's shutdown normally leaves only such agents; those
    of a killed driver would otherwise linger for minutes."""
    import psutil

    ended = 0
    for _ in range(rounds):
        procs = run_processes(tag)
        if not procs:
            break
        ended += len(procs)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        time.sleep(0.2)  # time for a restarted agent to appear
    return ended


def start_watchdog(tag: str) -> subprocess.Popen:
    """Start the watchdog of this process's Ray run ``tag`` (its temp folder): when this process exits, however it
    exits, the watchdog reaps the run's processes and removes the folder. Stop it with ``stop_watchdog``."""
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid()), tag],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, env={k: v for k, v in os.environ.items()
                                                                         if k != MARK})


def stop_watchdog(watchdog: subprocess.Popen) -> None:
    """End the watchdog after the driver cleaned up itself."""
    with contextlib.suppress(OSError):
        watchdog.kill()
    with contextlib.suppress(Exception):
        watchdog.wait(timeout=5)


def _watch(driver: int, tag: str) -> None:
    """The watchdog's loop: wait for ``driver`` to exit, then reap ``tag`` and remove the folder."""
    import psutil

    try:
        born = psutil.Process(driver).create_time()
    except psutil.Error:
        born = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while born is not None:
        try:
            if psutil.Process(driver).create_time() != born:
                break
            if psutil.Process(driver).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(POLL_S)
    reap(tag)
    shutil.rmtree(tag, ignore_errors=True)


@contextlib.contextmanager
def quiet_stderr(log_path: str) -> Iterator[TextIO]:
    """Send what is written to file descriptor 2 (Ray's C++ logs such as ``core_worker.cc`` lines, Python
    loggers bound to the old stderr) to ``log_path`` (appended), and yield a text stream on the terminal's stderr;
    ``sys.stderr`` is that stream meanwhile, so our own messages and the progress bar still reach the terminal.
    Everything is restored on exit, Ctrl-C included."""
    sys.stderr.flush()
    saved = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    old = sys.stderr
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = terminal
    try:
        yield terminal
    finally:
        sys.stderr = old
        with contextlib.suppress(Exception):
            terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


def leftovers(tag: str) -> List[int]:
    """Pids of the run ``tag``'s processes still alive (for tests and the benchmark)."""
    return [p.pid for p in run_processes(tag)]


if __name__ == "__main__":  # the watchdog: rayproc.py DRIVER_PID TAG
    _watch(int(sys.argv[1]), sys.argv[2])
