"""docker-compose.yml and the Dockerfile stay consistent with what the tests run: each
backprop service runs a `backprop` subcommand that the end-to-end tests start for real."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.cli import main as cli
from tests.conftest import IN_CI
from tests.e2e import stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_validates():
    tool = shutil.which("docker-compose")
    if tool is None:
        if IN_CI:
            pytest.fail("docker-compose (Debian package) is needed to validate docker-compose.yml")
        pytest.skip("docker-compose not installed")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_services_run_the_commands_the_tests_run():
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    expected = {"migrate": ["backprop", "migrate"], "api": ["backprop", "serve"], "worker": ["backprop", "worker"]}
    for name, command in expected.items():
        assert services[name]["command"] == command
        assert command[1] in cli.commands
    source = Path(stack.__file__).read_text()
    for sub in ("migrate", "serve", "worker"):
        assert f'"{sub}"' in source, f"the e2e stack does not start `backprop {sub}`"


def test_services_point_at_postgres_and_redis():
    env = compose()["x-backprop-env"]
    assert env["BACKPROP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["BACKPROP_BROKER_URL"].startswith("redis://")
    api_deps = compose()["services"]["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"


def test_dockerfile_ships_what_migrate_needs():
    text = (ROOT / "Dockerfile").read_text()
    for needed in ("alembic.ini", "migrations", "core", "app", "worker", "pip install -e ."):
        assert needed in text


def test_the_image_alone_serves_from_a_volume_its_user_owns():
    """Run without compose, the image used ./var under a root-owned WORKDIR (the unprivileged
    user could not create it) and served on the container's own 127.0.0.1."""
    text = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"(BACKPROP_\w+)=(\S+)", text))
    assert env["BACKPROP_HOST"] == "0.0.0.0" and env["BACKPROP_DATA_DIR"] == "/data"
    assert "chown backprop /data" in text and "VOLUME /data" in text
    assert text.index("chown backprop /data") < text.index("USER backprop")


def test_every_long_running_service_restarts():
    """postgres and redis had no restart policy while api and worker came back by themselves."""
    services = compose()["services"]
    for name in ("postgres", "redis", "api", "worker"):
        assert services[name].get("restart") == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"  # a one-shot: done once it succeeded


def test_compose_keeps_data_where_the_image_declares_its_volume():
    """compose set BACKPROP_DATA_DIR=/tmp/backprop while the image declares VOLUME /data: every
    container got an anonymous volume it never used. Now the data directory is the image's, and
    on a tmpfs (a mount there keeps Docker from making the anonymous volume)."""
    volume = re.search(r"^VOLUME\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert compose()["x-backprop-env"]["BACKPROP_DATA_DIR"] == volume
    for name in ("migrate", "api", "worker"):
        service = compose()["services"][name]
        env = service["environment"]
        assert env.get("BACKPROP_DATA_DIR", volume) == volume
        mounts = service.get("tmpfs", []) + [v.split(":")[1] for v in service.get("volumes", []) if ":" in v]
        assert volume in mounts, f"{name} has nothing mounted on {volume}: Docker makes an anonymous volume"
