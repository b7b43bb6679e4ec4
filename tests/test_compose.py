"""docker-compose.yml is valid and runs the same commands as the Makefile."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_passes():
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_services_start_what_the_makefile_starts():
    compose = (ROOT / "docker-compose.yml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for sub in ("migrate", "web", "worker"):
        assert f'"pushline.cli", "{sub}"' in compose
        assert f"-m pushline.cli {sub}" in makefile
    for service in ("postgres:", "redis:", "migrate:", "web:", "worker:", "flower:"):
        assert f"\n  {service}" in compose
    assert '"--appendonly", "yes"' in compose and '"noeviction"' in compose
