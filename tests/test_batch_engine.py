"""The engines of `batch`: the local path (no Ray) and a private local Ray (bound to 127.0.0.1, its processes gone
when the driver ends, is interrupted or is killed), the same outputs from both, `auto`'s choice, and one line when
Ray cannot start. Ray runs are separate drivers (`python -m gradeclip`), watched from here with psutil through the
run's tag (`GRADECLIP_RAY_RUN` in each Ray process's environment); only processes with that tag are looked at."""
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradeclip.batch import local as local_engine
from gradeclip.batch.rayproc import MARK
from gradeclip.cli import main

from batch_helpers import moving_disc
from conftest import write_video

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

GROUPS = r"(?P<subject>\d{3})-(?P<condition>nm|bg)-(?P<view>\d{3})"
NAMES = ["001-nm-000", "001-bg-090", "002-nm-090", "002-bg-000"]
PROMPTS = ["a red circle", "a blue square"]
REPO = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 30  # bounded wait for the run's processes to end (the watchdog polls every 0.5 s; 3 s grace)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 videos of 10 frames, 48x64 (non-square), a red disc moving on a path that differs per video, and masks of
    the first video's disc (so its records carry mask metrics)."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("engines")
    for i, name in enumerate(NAMES):
        frames, masks = moving_disc(10, seed=i)
        (root / "videos").mkdir(exist_ok=True)
        write_video(root / "videos" / f"{name}.avi", frames)
        if i == 0:
            target = root / "masks" / name
            target.mkdir(parents=True)
            for t, mask in enumerate(masks):
                cv2.imwrite(str(target / f"{name}-{t + 1:03d}.png"), mask.astype(np.uint8) * 255)
    return root


def _args(dataset, checkpoint, out, *extra):
    return ["batch", str(dataset / "videos"), "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", str(checkpoint),
            "--out", str(out), "--masks-root", str(dataset / "masks"), "--group-by", GROUPS, "--quiet", *extra]


def _driver(dataset, checkpoint, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "gradeclip", *_args(dataset, checkpoint, out, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _default_sigint():
    """Ctrl-C as in a terminal, also when the tests run in a background job (which ignores SIGINT, inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _tag_of(driver, limit_s=120):
    """The run's tag (its Ray temp folder), read from the watchdog's command line (rayproc.py DRIVER_PID TAG)."""
    end = time.time() + limit_s
    while time.time() < end and driver.poll() is None:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if len(cmd) == 4 and cmd[1].endswith("rayproc.py") and cmd[2] == str(driver.pid):
                return cmd[3]
        time.sleep(0.1)
    raise AssertionError(f"no watchdog of driver {driver.pid} seen (exit {driver.poll()})")


def _tagged(tag):
    """The live processes of the run: /proc/PID/environ holds its tag (read raw: Ray's process titles blank that
    area from its start, and psutil's environ() then sees nothing), or a file is open under its temp folder."""
    found, entry = [], f"{MARK}={tag}".encode()
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                tagged = entry in f.read().split(b"\0")
            if tagged or any(f.path.startswith(tag + "/") for f in proc.open_files()):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _wait_for(tag, driver, what, limit_s=180):
    """Wait until a process of the run whose command line contains ``what`` is alive; returns the run's processes."""
    end = time.time() + limit_s
    while time.time() < end and driver.poll() is None:
        procs = _tagged(tag)
        if any(what in " ".join(_cmdline(p)) for p in procs):
            return procs
        time.sleep(0.2)
    raise AssertionError(f"no {what!r} process of the run seen (driver exit {driver.poll()})")


def _cmdline(proc):
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _gone(tag, limit_s=GONE_WITHIN_S):
    """Pids and command lines of the run's processes still alive, and its temp folder if it still exists, after
    waiting up to ``limit_s``."""
    end = time.time() + limit_s
    while True:
        left = [(p.pid, " ".join(_cmdline(p))[:80]) for p in _tagged(tag)] + ([tag] if Path(tag).exists() else [])
        if not left or time.time() > end:
            return left
        time.sleep(0.5)


@pytest.fixture(scope="module")
def local_run(dataset, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    status = main(_args(dataset, checkpoint, out, "--engine", "local"))
    return out, status


@pytest.fixture(scope="module")
def ray_run(dataset, checkpoint, tmp_path_factory):
    """A `batch --engine ray` driver on a private local Ray, watched while it runs: every listening socket of
    its tagged processes is recorded."""
    out = tmp_path_factory.mktemp("ray")
    driver = _driver(dataset, checkpoint, out, "--engine", "ray", "--num-workers", "2")
    tag = _tag_of(driver)
    listening = set()
    while driver.poll() is None:
        for proc in _tagged(tag):
            try:
                cmd = proc.cmdline()
                who = " ".join([os.path.basename(cmd[0]), *cmd[1:]])[:80] if cmd else "?"
                listening |= {(who, c.laddr.ip) for c in proc.net_connections("inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        time.sleep(0.2)
    stdout, stderr = driver.communicate()
    return {"out": out, "status": driver.returncode, "tag": tag, "listening": listening, "stdout": stdout,
            "stderr": stderr}


def test_auto_picks_local_without_address_on_small_machines():
    """`auto` is local on 2 cores without GPUs and no --address; Ray with an address, with many cores or several
    GPUs; `local` with an address is refused. Catches an inverted threshold, an address that does not imply Ray,
    GPUs ignored, and `local --address` silently dropping the address."""
    choose = local_engine.choose_engine
    assert choose("auto", None, cores=2, gpus=0) == "local"
    assert choose("auto", None, cores=2, gpus=1) == "local"  # one GPU: one replica, no gain from Ray
    assert choose("auto", "127.0.0.1:6379", cores=2, gpus=0) == "ray"
    assert choose("auto", None, cores=local_engine.RAY_MIN_CORES, gpus=0) == "ray"
    assert choose("auto", None, cores=local_engine.RAY_MIN_CORES - 1, gpus=0) == "local"
    assert choose("auto", None, cores=2, gpus=2) == "ray"
    assert choose("ray", None, cores=2, gpus=0) == "ray"
    with pytest.raises(ValueError, match="--address"):
        choose("local", "127.0.0.1:6379")


def test_auto_on_two_cores_runs_locally_without_ray(dataset, checkpoint, tmp_path):
    """The CLI with the default engine on a machine seen as 2 cores and no GPU: the videos are done in the driver
    and Ray is never imported. Catches `auto` defaulting to Ray, and the local path importing Ray anyway."""
    script = ("import sys; import gradeclip.batch.local as L; L.cpu_cores = lambda: 2; L.gpu_count = lambda: 0; "
              "from gradeclip.cli import main; status = main(sys.argv[1:]); "
              "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(status)")
    out = tmp_path / "auto"
    run = subprocess.run([sys.executable, "-c", script, *_args(dataset, checkpoint, out)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "(local engine)" in run.stdout and run.stdout.strip().endswith("NO_RAY"), run.stdout
    assert len(list((out / "videos").glob("*/record.json"))) == len(NAMES)


def test_private_ray_binds_loopback_and_leaves_nothing(ray_run):
    """A normal `--engine ray` run: every socket its Ray processes listened on is a loopback address (GCS,
    raylet, agents, workers), the terminal holds no Ray message, the run exits 0, and within a bounded wait no
    process of the run remains and its temp folder is gone. Catches Ray's default bind to the node's network
    address (0.0.0.0 or the machine's IP), C++ logs in the terminal, and agents left alive after the run."""
    assert ray_run["status"] == 0, ray_run["stderr"]
    assert ray_run["listening"], "no listening socket of the run's Ray seen"
    outside = {(who, ip) for who, ip in ray_run["listening"]
               if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback}
    assert not outside, outside
    assert any(who.startswith("gcs_server") for who, _ in ray_run["listening"])  # the GCS itself was seen
    assert any(who.startswith("raylet") for who, _ in ray_run["listening"])
    assert ray_run["stderr"].strip() == "", ray_run["stderr"]
    assert "(ray engine)" in ray_run["stdout"]
    assert not _gone(ray_run["tag"])
    assert not Path(ray_run["tag"]).exists()


def test_local_and_ray_give_identical_outputs(local_run, ray_run):
    """The same inputs through `--engine local` and `--engine ray`: summary.csv, summary_groups.csv,
    summary.json and every video's record.json byte-identical. Catches an engine that passes other settings to
    `process_video` (input mode, truncation, masks), loses the manifest columns, or records other statuses."""
    out_local, status = local_run
    out_ray = ray_run["out"]
    assert status == 0
    for name in ("summary.csv", "summary_groups.csv", "summary.json"):
        assert (out_local / name).read_bytes() == (out_ray / name).read_bytes(), name
    records = sorted(p.relative_to(out_local) for p in out_local.glob("videos/*/record.json"))
    assert len(records) == len(NAMES)
    assert records == sorted(p.relative_to(out_ray) for p in out_ray.glob("videos/*/record.json"))
    for rel in records:
        assert (out_local / rel).read_bytes() == (out_ray / rel).read_bytes(), rel
    with_metrics = [r for r in records if "metrics" in json.loads((out_local / r).read_text())]
    assert len(with_metrics) == 1  # the masks reached the records of both engines


def _interrupted(dataset, checkpoint, tmp_path, sig):
    """A driver on a private Ray signalled with ``sig`` once its actors' worker processes exist."""
    driver = _driver(dataset, checkpoint, tmp_path / "run", "--engine", "ray", "--num-workers", "2")
    tag = _tag_of(driver)
    procs = _wait_for(tag, driver, "ray::")
    assert any("raylet" in " ".join(_cmdline(p)) for p in procs)
    driver.send_signal(sig)
    _, stderr = driver.communicate(timeout=120)
    return driver.returncode, stderr, tag


def test_no_ray_process_after_ctrl_c(dataset, checkpoint, tmp_path):
    """SIGINT to a driver on its private Ray: one line on stderr, exit 130, and within a bounded wait no process
    of the run (agents included) and no temp folder. Catches a Ctrl-C that skips the shutdown (agents alive for
    minutes) and a traceback from Ray's own interrupt handling."""
    status, stderr, tag = _interrupted(dataset, checkpoint, tmp_path, signal.SIGINT)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 130 and len(lines) == 1 and lines[0].startswith("gradeclip: interrupted: "), stderr
    assert not _gone(tag)
    assert not Path(tag).exists()


def test_no_ray_process_after_driver_killed(dataset, checkpoint, tmp_path):
    """SIGKILL of the driver (no chance to clean up): the watchdog ends every process of the run within a
    bounded wait and removes its temp folder. Catches Ray's dashboard and runtime-env agents outliving the driver
    (they did for 1.5-3 minutes) and a watchdog that dies with the driver."""
    status, _, tag = _interrupted(dataset, checkpoint, tmp_path, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not _gone(tag)
    assert not Path(tag).exists()


def test_ray_start_failure_is_one_line(dataset, checkpoint, tmp_path, monkeypatch, capsys):
    """A local Ray that cannot start within the start-up timeout (a stubbed `ray start --head` that takes 0.2 s
    and fails, with a 0.1 s timeout): exit 1, one line naming both ways out (--engine local, --address) and the
    log file, one try only, and no watchdog or temp folder left. Catches a traceback, retries past the timeout,
    and a failed start that leaves the watchdog running."""
    from gradeclip.batch import engine, rayproc

    calls = []

    def slow_failure(num_cpus, tag, log_path, timeout_s):
        calls.append(tag)
        time.sleep(0.2)
        raise RuntimeError("`ray start --head` did not finish within 0 s")

    import ray

    monkeypatch.setattr(rayproc, "start_head", slow_failure)
    monkeypatch.setattr(engine, "START_TIMEOUT_S", 0.1)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # another test's session Ray would be joined instead
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    status = main(_args(dataset, checkpoint, tmp_path / "out", "--engine", "ray"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1 and len(lines) == 1, err
    assert "--engine local" in lines[0] and "--address" in lines[0] and "did not finish" in lines[0]
    assert str(tmp_path / "out" / "ray.log") in lines[0] and (tmp_path / "out" / "ray.log").is_file()
    assert len(calls) == 1 and calls[0].startswith("/tmp/gcray-")
    assert not Path(calls[0]).exists()
    time.sleep(0.5)
    assert {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE} <= before  # the watchdog was stopped


def test_local_with_address_is_refused(dataset, checkpoint, tmp_path, capsys):
    """`--engine local --address A`: one line, exit 1, nothing written. Catches the address silently ignored."""
    status = main(_args(dataset, checkpoint, tmp_path / "out", "--engine", "local", "--address", "127.0.0.1:1"))
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and "--address" in err, err
    assert not (tmp_path / "out").exists()
