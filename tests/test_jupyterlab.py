"""`make lab` starts JupyterLab on the notebooks with the course's named kernel: run the
Makefile's own commands headless on 127.0.0.1, ask the server what it lists, start the kernel
through it and check that it uses make lessons' cache, and stop it."""

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the checkout the package is imported from: make lessons' cache when RLHF_LESSONS_CACHE is unset
CACHE = Path(__import__("rlhf_lessons").__file__).resolve().parents[1] / ".cache"
pytestmark = pytest.mark.slow


def _make_dry_run(target: str) -> list[str]:
    """The commands ``make <target>`` runs, without its prerequisites (.venv and the models)."""
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "-o",
            ".venv/.installed",
            "-o",
            "models",
            target,
            "LAB_ARGS=@ARGS@",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _kernel_cache_dir(base: str, token: str, runtime: Path) -> str:
    """Start the rlhf-lessons kernel through the server and print its cache_dir()."""
    from jupyter_client import BlockingKernelClient

    request = urllib.request.Request(
        f"{base}/api/kernels?token={token}",
        data=json.dumps({"name": "rlhf-lessons", "path": "01_reinforce_cartpole.ipynb"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        kernel_id = json.loads(response.read())["id"]
    client = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.kernel_info()  # ready once it answers (its heartbeat may lag on a busy machine)
        while client.get_shell_msg(timeout=120)["msg_type"] != "kernel_info_reply":
            pass
        code = "from rlhf_lessons.course.cache import cache_dir; print(cache_dir())"
        printed = []
        client.execute_interactive(
            code, timeout=120, output_hook=lambda m: printed.append(m["content"].get("text", ""))
        )
        return "".join(printed).strip()
    finally:
        client.stop_channels()


def test_make_lab_serves_the_notebooks_with_the_named_kernel(tmp_path):
    # the kernel as the Makefile installs it (into a scratch prefix instead of .venv)
    stamp = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", ".venv/.installed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    install = next(line for line in stamp.splitlines() if "ipykernel install" in line)
    argv = shlex.split(install.split(">")[0])[1:]  # drop .venv/bin/python and the redirect
    argv = [a if a != "--sys-prefix" else f"--prefix={tmp_path}" for a in argv]
    subprocess.run([sys.executable, *argv], check=True, capture_output=True)

    [lab] = _make_dry_run("lab")
    assert re.match(r"^\.venv/bin/python -m jupyterlab ", lab), lab
    port, token = _free_port(), secrets.token_hex(16)
    args = [
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
    ]
    command = shlex.split(lab.replace("@ARGS@", " ".join(args)))
    command[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "RLHF_LESSONS_CACHE"}
    env["JUPYTER_PATH"] = str(tmp_path / "share" / "jupyter")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                listing = _get(f"{base}/api/contents?token={token}")
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, f"JupyterLab did not start: {server.stderr.read()[-2000:]}"
        names = {item["name"] for item in listing["content"]}
        expected = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
        assert expected and expected <= names, f"the server lists {sorted(names)}"
        specs = _get(f"{base}/api/kernelspecs?token={token}")["kernelspecs"]
        assert specs["rlhf-lessons"]["spec"]["display_name"] == "Python (rlhf-lessons)"
        assert specs["rlhf-lessons"]["spec"]["argv"][0] == sys.executable
        lab_page = urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10).read()
        assert b"JupyterLab" in lab_page
        # a notebook run there uses make lessons' cache: start the named kernel, ask it
        assert _kernel_cache_dir(base, token, tmp_path / "runtime") == str(CACHE)
    finally:
        server.send_signal(signal.SIGINT)  # jupyter asks to confirm on the first ^C; send two
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
