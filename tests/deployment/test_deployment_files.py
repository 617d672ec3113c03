"""Static checks of the container pieces (Docker does not run on the development machines)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    # join continuation lines
    return [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    lines = dockerfile_lines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert any("COPY --from=build" in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in lines)
    assert any(line.startswith("CMD") and "fhir-server" in line for line in lines)


def test_dockerfile_copies_everything_the_package_needs() -> None:
    lines = dockerfile_lines()
    copied = {
        line.split()[1].strip("./")
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
    }
    # every package pyproject.toml installs (compartments was once missing: the image could not
    # have started)
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    packages = [p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")]
    for needed in (*packages, "pyproject.toml"):
        assert any(needed == c or c.startswith(f"{needed}/") for c in copied), needed
        assert (ROOT / needed).exists()


def test_compose_has_api_postgres_and_a_migrations_job() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "postgres", "migrations"} <= set(services)
    assert services["migrations"]["command"] == ["fhir-server", "migrate"]
    api = services["api"]
    assert api["depends_on"]["migrations"]["condition"] == "service_completed_successfully"
    assert services["migrations"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["environment"]["POSTGRES_URL"].startswith("postgresql://")
    assert api["environment"]["FHIR_MIGRATE_ON_START"] == "false"
    # no secret is written into the file: the password comes from the environment
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"POSTGRES_PASSWORD: \$\{POSTGRES_PASSWORD", text)
    assert "change-me" not in text


def test_the_api_keeps_its_data_in_a_volume_it_owns() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    data = api["environment"]["FHIR_DATA_DIR"]
    assert any(volume.endswith(f":{data}") for volume in api["volumes"])
    assert any("chown" in line and data in line for line in dockerfile_lines())
    makefile = (ROOT / "Makefile").read_text()
    assert "\nup:" in makefile and "docker compose up" in makefile
    assert "\ndown:" in makefile and "docker compose down" in makefile


def test_env_example_and_gitignore_keep_secrets_out() -> None:
    assert "POSTGRES_PASSWORD=" in (ROOT / ".env.example").read_text()
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_prometheus_loads_the_shipped_alerting_rules() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["tools"]
    source, target = prometheus["volumes"][0].split(":")[:2]
    assert (ROOT / source / "alerts.yml").exists() and target == "/etc/prometheus"
    scrape = yaml.safe_load((ROOT / source / "prometheus.yml").read_text())["scrape_configs"]
    api_port = compose["services"]["api"]["environment"]["PORT"]
    assert scrape[0]["static_configs"][0]["targets"] == [f"api:{api_port}"]
