"""The example Prometheus files of docs/monitoring.md: valid, firing when they should,
naming only series the plugin exposes.

Checked with Debian's promtool (scripts/system-deps.sh); where it is missing, the same
checks fall back to parsing the YAML (``parse_rules``), which runs here every time too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from modoboa_pro.virtualhosts import constants, metrics
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost

pytestmark = pytest.mark.monitoring

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "docs/prometheus/modoboa-alerts.yml"
CONFIG = REPO / "docs/prometheus/prometheus.yml"
UNIT_TESTS = REPO / "tests/prometheus/modoboa-alerts-test.yml"
PROMTOOL = shutil.which("promtool")
ALERTS = {
    "ModoboaCertificateCloseToExpiry",
    "ModoboaVirtualHostFailing",
    "ModoboaRenewalScanNotRunning",
    "ModoboaMetricsFileStale",
}
_DURATION = re.compile(r"\d+[smhdwy]")


def parse_rules(path: Path) -> list[dict]:
    """The rules of a rule file, checked as far as parsing goes (no promtool)."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict) and isinstance(document.get("groups"), list), path
    rules = []
    for group in document["groups"]:
        assert group.get("name") and isinstance(group.get("rules"), list), group
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule.get("alert") and str(rule.get("expr", "")).strip(), rule
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            assert "for" not in rule or _DURATION.fullmatch(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            rules.append(rule)
    return rules


def check_rules(path: Path, promtool: str | None) -> None:
    if promtool is None:
        assert {rule["alert"] for rule in parse_rules(path)} == ALERTS
        return
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_the_alert_rules_file_is_valid():
    check_rules(RULES, PROMTOOL)


def test_the_parsing_fallback_runs_and_catches_a_broken_file(tmp_path):
    check_rules(RULES, None)  # what a machine without promtool checks
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("for: 1h", "for: an hour"))
    with pytest.raises(AssertionError):
        check_rules(broken, None)
    if PROMTOOL:  # promtool refuses it too
        with pytest.raises(AssertionError):
            check_rules(broken, PROMTOOL)


def test_the_alerts_fire_when_they_should(tmp_path):
    """``promtool test rules``: each alert on its series at its time, none before."""
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    if PROMTOOL is None:
        tests = yaml.safe_load(UNIT_TESTS.read_text())
        assert {t["alertname"] for t in tests["tests"][0]["alert_rule_test"]} == ALERTS - {
            "ModoboaMetricsFileStale"
        }
        return
    result = subprocess.run(
        [PROMTOOL, "test", "rules", UNIT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_scrape_config_is_valid(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/api/v2/virtualhosts/metrics/"
    assert job["authorization"]["type"] == "Token"  # DRF's "Authorization: Token <key>"
    assert config["rule_files"] == [RULES.name]
    if PROMTOOL is None:
        return
    token = tmp_path / "modoboa.token"
    token.write_text("0123456789abcdef\n")
    (tmp_path / "prometheus.yml").write_text(
        CONFIG.read_text().replace("/etc/prometheus/modoboa.token", str(token))
    )
    shutil.copy(RULES, tmp_path / RULES.name)
    result = subprocess.run(
        [PROMTOOL, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_name_only_series_the_plugin_exposes(modoboa, redis_server):
    now = timezone.now()
    RenewalScan.objects.create(finished_at=now)
    VirtualHost.objects.create(
        hostname="lost.example.test",
        status=constants.STATUS_FAILED,
        attempts=2,
        failing_since=now,
        cert_serial="ab",
        cert_not_before=now,
        cert_not_after=now + timezone.timedelta(days=90),
    )
    exposed = {
        sample.name
        for family in text_string_to_metric_families(metrics.text().decode())
        for sample in family.samples
    }
    named = {
        name
        for rule in parse_rules(RULES)
        for name in re.findall(r"\bmodoboa_[a-z_]+", rule["expr"])
    }
    assert named and named <= exposed, named - exposed
