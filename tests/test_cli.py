"""The commands ops run: make web / make migrate refuse or succeed as documented."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT, query


def run_make(target: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "PUSH_TOKENS", "MAKEFLAGS", "MFLAGS")}
    base.update(env)
    return subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_make_web_without_tokens_refuses_with_one_line(settings, tmp_path):
    result = run_make("web", PUSH_TOKENS="", DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url,
                      PUSHLINE_VAR=str(tmp_path))
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("pushline:")]
    assert len(lines) == 1 and "PUSH_TOKENS" in lines[0]


@pytest.mark.slow
def test_make_migrate_is_idempotent(settings, db):
    first = run_make("migrate", DATABASE_URL=settings.database_url)
    second = run_make("migrate", DATABASE_URL=settings.database_url)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "none pending" in second.stdout
    assert query(db, "SELECT count(*) FROM _yoyo_migration")[0][0] >= 3


@pytest.mark.slow
def test_make_help_lists_the_commands():
    out = run_make("help").stdout
    for target in ("run", "test", "web", "worker", "migrate", "bench", "lint"):
        assert f"make {target} " in out


def test_settings_are_read_from_a_dot_env_file_and_the_environment_wins(tmp_path, monkeypatch):
    from pushline.config import Settings

    (tmp_path / ".env").write_text("PUSH_TOKENS=fromfile-0123456789abcdef\nPUSH_TIMEZONE=Europe/Paris\nPORT=8123\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.delenv("PUSH_TOKENS", raising=False)
    monkeypatch.delenv("PUSH_TIMEZONE", raising=False)
    settings = Settings.from_env()
    assert [t.secret for t in settings.tokens] == ["fromfile-0123456789abcdef"]
    assert settings.timezone == "Europe/Paris" and settings.port == 9000


def test_flower_refuses_to_start_without_a_password(settings):
    import subprocess
    import sys

    from tests.conftest import ROOT, settings_env

    env = settings_env(settings)
    env.pop("FLOWER_BASIC_AUTH", None)
    for value in (None, "", "admin", "admin:", ":secret"):
        if value is not None:
            env["FLOWER_BASIC_AUTH"] = value
        out = subprocess.run([sys.executable, "-m", "pushline.cli", "flower"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "FLOWER_BASIC_AUTH=user:password" in out.stderr, (value, out.stderr)


@pytest.mark.slow
def test_flower_asks_for_the_password(settings, tmp_path):
    import base64
    import sys

    from tests import http_client as http
    from tests.conftest import Proc, free_port, settings_env, wait_for

    port = free_port()
    env = settings_env(settings, FLOWER_BASIC_AUTH="ops:s3cret")
    flower = Proc([sys.executable, "-m", "pushline.cli", "flower", "--port", str(port)], env, tmp_path / "flower.log")
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        wait_for(lambda: http.get(url).status in (401, 200) or flower.popen.poll() is not None, timeout=60,
                 what="flower to answer")
        assert http.get(url).status == 401
        good = base64.b64encode(b"ops:s3cret").decode()
        assert http.get(url, headers={"Authorization": f"Basic {good}"}).status == 200
        wrong = base64.b64encode(b"ops:guess").decode()
        assert http.get(url, headers={"Authorization": f"Basic {wrong}"}).status == 401
    finally:
        flower.stop()
