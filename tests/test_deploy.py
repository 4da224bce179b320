"""docker-compose.yml: the services, healthchecks and settings the deployment relies on;
`docker compose config` accepts it where the docker CLI with compose is installed."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_whole_stack():
    services = compose()["services"]
    assert {"redis", "minio", "createbuckets", "api", "worker"} <= set(services)
    for name in ("redis", "minio", "api", "worker"):
        assert "healthcheck" in services[name], name
    api, worker = services["api"], services["worker"]
    assert api["command"][:1] == ["serve"] and "8000:8000" in api["ports"]
    assert worker["command"][:1] == ["worker"]
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for service in (api, worker):
        env = service["environment"]
        assert env["FM_REDIS_URL"] == "redis://redis:6379/0"
        assert env["FM_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert {"FM_CACHE_URI", "FM_API_KEYS", "FM_CALLBACK_SECRET"} <= set(env)
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (ROOT / api["build"]["dockerfile"]).exists()
    assert (ROOT / worker["build"]["dockerfile"]).exists()


def test_dockerfiles_run_the_service():
    api = (ROOT / "docker/api.Dockerfile").read_text()
    worker = (ROOT / "docker/worker.Dockerfile").read_text()
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in api
    assert "HEALTHCHECK" in api
    assert 'CMD ["worker", "--queues", "fisher,merge"]' in worker


def _compose_command() -> list[str] | None:
    """`docker compose` (v2), else the standalone `docker-compose`, else None."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


COMPOSE = _compose_command()


@pytest.mark.skipif(COMPOSE is None, reason="neither docker compose nor docker-compose is here")
def test_docker_compose_config_accepts_it():
    assert COMPOSE is not None
    done = subprocess.run([*COMPOSE, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
