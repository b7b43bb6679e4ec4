"""docker-compose.yml is valid, has the structure the README promises, and runs
the same commands as the Makefile.

The file is parsed (PyYAML, a dependency of schemathesis; YAML merge keys
resolved), so each check is about a service's own keys, never about text that
happens to appear somewhere in the file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT

PUSHLINE = ["python", "-m", "pushline.cli"]
HEALTHY = "service_healthy"
MIGRATED = "service_completed_successfully"


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command(service: dict) -> list[str]:
    """A service's command as a list (compose takes a string too)."""
    value = service.get("command")
    return value.split() if isinstance(value, str) else list(value or [])


def flags(service: dict) -> dict[str, str]:
    """`--name value` pairs of a command, e.g. redis-server's settings."""
    argv = command(service)
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def conditions(service: dict) -> dict[str, str]:
    """depends_on as {service: condition}; the short list form has no condition."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck(service: dict) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck"
    return test.split() if isinstance(test, str) else list(test)


def container_ports(service: dict) -> set[int]:
    """The container side of each `ports` entry (short "host:container" or long form)."""
    out = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.add(int(entry["target"]))
        else:
            out.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return out


def seconds(duration: str) -> float:
    """A compose duration such as "1m10s" or "70s"."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_config_passes():
    command_ = compose_command()
    if command_ is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*command_, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_has_the_seven_services_and_the_two_volumes(compose, services):
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "flower"} <= set(services)
    assert {"pgdata", "redisdata"} <= set(compose.get("volumes") or {})
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "redisdata:/data" in services["redis"]["volumes"]


def test_compose_services_start_what_the_makefile_starts(services):
    makefile = (ROOT / "Makefile").read_text()
    for sub in ("migrate", "web", "worker"):
        assert command(services[sub]) == [*PUSHLINE, sub]
        recipe = re.search(rf"^{sub}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe, f"no `{sub}` target in the Makefile"
        assert f"-m pushline.cli {sub}" in recipe.group(1)
    assert command(services["flower"])[:4] == [*PUSHLINE, "flower"]


def test_redis_keeps_what_it_took_aof_on_and_no_eviction(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert command(redis)[0] == "redis-server"
    settings = flags(redis)
    assert settings["--appendonly"] == "yes"
    assert settings["--maxmemory-policy"] == "noeviction"
    assert settings.get("--appendfsync", "everysec") in ("everysec", "always")
    assert healthcheck(redis)[-2:] == ["redis-cli", "ping"]


def test_postgres_is_healthchecked_with_the_credentials_the_app_uses(services):
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(healthcheck(postgres))
    env = postgres["environment"]
    for name in ("migrate", "roles", "web", "worker", "beat", "flower"):
        app_env = services[name]["environment"]
        url = urlsplit(app_env["DATABASE_URL"])
        assert (url.hostname, url.port or 5432, url.path.lstrip("/")) == ("postgres", 5432, env["POSTGRES_DB"]), name
        if name in ("migrate", "roles"):  # the owner; the tiers use their login roles (below)
            assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]), name
        assert urlsplit(app_env["REDIS_URL"]).hostname == "redis", name
        assert "PUSH_TOKENS" in app_env and "PUSH_TIMEZONE" in app_env, name


def test_migrate_runs_once_after_postgres_is_healthy(services):
    migrate = services["migrate"]
    assert str(migrate.get("restart", "no")) == "no"
    assert conditions(migrate) == {"postgres": HEALTHY}
    assert not migrate.get("ports")


@pytest.mark.parametrize("name", ["web", "worker"])
def test_web_and_workers_wait_for_healthy_stores_the_migration_and_their_roles(services, name):
    assert conditions(services[name]) == {"postgres": HEALTHY, "redis": HEALTHY, "migrate": MIGRATED,
                                          "roles": MIGRATED}


def test_web_listens_on_its_port_and_is_healthchecked_there(services):
    web = services["web"]
    port = int(web["environment"]["PORT"])
    assert container_ports(web) == {port}
    assert web["ports"] == [f"${{PORT:-8000}}:{port}"]  # $PORT on the host, default 8000 (README)
    probe = " ".join(healthcheck(web))
    assert f"127.0.0.1:{port}/healthz" in probe


def test_the_worker_service_can_be_scaled(services):
    worker = services["worker"]
    # `--scale worker=4` fails on a fixed container name or a fixed host port,
    # and four workers with one node name would be one worker to Celery.
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "--name" not in command(worker) and "-n" not in command(worker)
    # SIGTERM finishes and acknowledges the batch in hand: the drain thread is
    # given 60 s to stop (workers/celery_app.py), so compose must wait longer.
    assert seconds(worker["stop_grace_period"]) > 60


def test_flower_asks_for_a_password_and_is_not_published(services):
    flower = services["flower"]
    assert command(flower)[:4] == [*PUSHLINE, "flower"] and flags(flower).get("--port") == "5555"
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert container_ports(flower) == set() and flower["expose"] == ["5555"]  # its API can shut workers down
    assert conditions(flower) == {"redis": HEALTHY}


def test_the_figures_are_on_the_internal_port_which_is_not_published(services):
    web = services["web"]
    internal = int(web["environment"]["INTERNAL_PORT"])
    assert internal != int(web["environment"]["PORT"])
    assert internal not in container_ports(web) and str(internal) in web["expose"]


def test_a_worker_that_exits_is_started_again_and_reports_its_health(services):
    worker = services["worker"]
    # A worker that cannot go on exits (CONTRACT 6): its supervisor, here compose, restarts it.
    assert worker.get("restart") in ("always", "unless-stopped", "on-failure") or str(
        worker.get("restart", "")).startswith("on-failure:")
    assert healthcheck(worker)[1:] == [*PUSHLINE, "health"]


def test_exactly_one_beat_runs_the_housekeeping(services):
    beat = services["beat"]
    assert command(beat)[:4] == [*PUSHLINE, "beat"]
    # Two beats would send every duty twice: nothing may scale it or run a second one.
    assert [name for name, s in services.items() if "beat" in command(s)] == ["beat"]
    assert "deploy" not in beat or beat["deploy"].get("replicas", 1) == 1
    assert beat.get("restart") in ("always", "unless-stopped")
    assert beat["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert beat["depends_on"]["redis"]["condition"] == "service_healthy"
    # Its schedule file lives where the container can write.
    schedule = command(beat)[command(beat).index("--schedule") + 1]
    assert schedule.startswith("/tmp/")
    recipe = re.search(r"^beat:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "-m pushline.cli beat" in recipe.group(1)


def test_only_migrate_and_roles_connect_as_the_owner(services):
    owner = "postgresql://pushline:pushline@postgres:5432/pushline"
    assert services["migrate"]["environment"]["DATABASE_URL"] == owner
    assert services["roles"]["environment"]["DATABASE_URL"] == owner
    assert command(services["roles"]) == [*PUSHLINE, "roles"]
    assert conditions(services["roles"]) == {"migrate": MIGRATED}
    logins = {name: urlsplit(services[name]["environment"]["DATABASE_URL"]).username
              for name in ("web", "worker", "beat", "flower")}
    assert logins == {"web": "pushline_web_login", "worker": "pushline_worker_login",
                      "beat": "pushline_worker_login", "flower": "pushline_worker_login"}
    roles_env = services["roles"]["environment"]
    for name, variable in (("web", "PUSHLINE_WEB_DB_PASSWORD"), ("worker", "PUSHLINE_WORKER_DB_PASSWORD")):
        # The same password the roles step set, from the same variable and default.
        assert urlsplit(services[name]["environment"]["DATABASE_URL"]).password == roles_env[variable]
