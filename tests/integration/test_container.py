"""The container kit (Dockerfile, deploy/kubernetes.yaml), as far as a machine without a
container engine allows: the image's command (ENTRYPOINT + CMD, parsed from the Dockerfile)
runs as written in the project's venv, with only its port and output directory replaced
(the image's are 5000 and the /outputs volume); the manifest is read with PyYAML and checked
against the Dockerfile and against that running server: its probes' paths answer there, and
its preStop hook, run against the server's pid, drains it to exit 0.

One server start for the module; its tests run in order (the last one stops it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from para_attn_server.testing import CLI, Server, server_env
from tests import REPO

DOCKERFILE = REPO / "Dockerfile"
MANIFEST = REPO / "deploy" / "kubernetes.yaml"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continued lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            found.append((keyword.upper(), rest.strip()))
            pending = ""
    return found


def last(name: str) -> str:
    values = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == name]
    assert values, f"the Dockerfile has no {name}"
    return values[-1]


def exec_form(name: str) -> list[str]:
    """ENTRYPOINT or CMD, which must be JSON (exec form: the server is PID 1 and gets SIGTERM
    itself; the shell form would run it under /bin/sh, which does not pass the signal on)."""
    value = json.loads(last(name))
    assert isinstance(value, list), value
    assert all(isinstance(item, str) for item in value), value
    return value


def flag(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} once in {command}"
    return command[command.index(name) + 1]


def replaced(command: list[str], **values: str) -> list[str]:
    """``command`` with the values of the flags named (``output_dir=`` for --output-dir) replaced."""
    result = list(command)
    for name, value in values.items():
        result[result.index("--" + name.replace("_", "-")) + 1] = value
    return result


@pytest.fixture(scope="module")
def image_command() -> list[str]:
    return exec_form("ENTRYPOINT") + exec_form("CMD")


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    kinds = [doc["kind"] for doc in documents]
    assert kinds.count("Deployment") == 1, kinds
    found: dict[str, Any] = next(doc for doc in documents if doc["kind"] == "Deployment")
    return found


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    found: dict[str, Any] = containers[0]
    return found


@pytest.fixture(scope="module")
def served(image_command: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The image's command, as written, with the venv's bin first on PATH (as /opt/venv/bin is
    in the image), on a free port and a temporary output directory; ready, as the startupProbe
    finds it: asking /health/ready until it answers 200."""
    workdir = tmp_path_factory.mktemp("container")
    command = replaced(image_command, port="0", output_dir=str(workdir / "outputs"))
    env = server_env(PATH=f"{CLI.parent}{os.pathsep}{os.environ['PATH']}")
    server = Server([], workdir, wait_ready=False, command=command, env=env)
    try:
        deadline = time.monotonic() + 180
        while (answer := probe(server, "/health/ready")).status_code != 200:
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, f"not ready after 180 s: {answer.text}\n{server.log.tail()}"
            time.sleep(0.5)
        yield server
    finally:
        server.close()


def probe(server: Server, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=10)


def test_the_image_serves_on_every_interface_into_its_volume(image_command: list[str]) -> None:
    assert image_command[0] == "para-attn-server"
    assert flag(image_command, "--host") == "0.0.0.0"
    assert flag(image_command, "--port") in last("EXPOSE").split()
    volume = last("VOLUME")
    assert flag(image_command, "--output-dir") in (json.loads(volume) if volume.startswith("[") else volume.split())
    assert flag(image_command, "--model") == "tiny"
    # The CPU torch by default, the one the Makefile installs; the TORCH build argument changes it.
    default_torch = re.search(r"^TORCH \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert default_torch is not None
    arguments = dict(rest.partition("=")[::2] for keyword, rest in instructions(DOCKERFILE) if keyword == "ARG")
    assert arguments["TORCH"] == default_torch[1]


def test_the_image_command_runs_a_job_into_its_output_directory(served: Server) -> None:
    job = served.run(prompt="a cat in a hat", num_inference_steps=2, output_path="cats/cat.png")
    assert job["state"] == "succeeded", job
    assert (served.output_dir / "cats" / "cat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_manifest_runs_the_image_command(container: dict[str, Any], image_command: list[str]) -> None:
    assert container["command"] + container["args"] == image_command
    port = int(flag(image_command, "--port"))
    assert [p["containerPort"] for p in container["ports"]] == [port]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert flag(image_command, "--output-dir") in mounts


def test_the_manifest_probes_ask_routes_of_the_server(container: dict[str, Any], served: Server) -> None:
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for kind in PROBES:
        get = container[kind]["httpGet"]
        assert named.get(get["port"], get["port"]) == named["http"], (kind, get)
        paths[kind] = get["path"]
        answer = probe(served, get["path"])
        assert answer.status_code == 200, (kind, get["path"], answer.status_code, answer.text)
    # Readiness is the server's "can take jobs"; liveness only that it answers (no restart of
    # the pod while a worker group restarts by itself).
    assert paths == {
        "startupProbe": "/health/ready",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }


def test_the_manifest_waits_longer_than_the_drain(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = float(flag(container["args"], "--drain-timeout"))
    assert grace >= drain + 15, f"terminationGracePeriodSeconds {grace} leaves the ranks no time after the drain"
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/sh", "-c"], hook
    assert re.search(r"\bkill -TERM 1\b", hook[2]), hook  # PID 1: the server (exec form)


def test_the_prestop_hook_drains_the_server_and_holds_until_it_exited_0(
    container: dict[str, Any], served: Server
) -> None:
    # The hook as written, with PID 1 (the server, in the container) being this server's pid.
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    script = re.sub(r"\b(kill -[A-Z0-9]+) 1\b", rf"\1 {served.process.pid}", hook[2])
    assert script != hook[2]
    with subprocess.Popen([*hook[:2], script]) as running:
        served.log.wait_for("draining", timeout=30)
        # The server is this process's child and not reaped yet (alive or a zombie): a hook that
        # waits for it is still waiting; the kubelet's SIGTERM must not come before it exits.
        assert running.poll() is None, "the preStop hook returned while the server was draining"
        assert served.process.wait(90) == 0, served.log.tail()
        assert running.wait(30) == 0
