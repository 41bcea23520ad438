"""The alert rules with promtool: they are valid, and deploy/prometheus/tests holds series
that fire every alert (and healthy ones that must not)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "parley.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "parley_test.yml"
PROMTOOL = shutil.which("promtool")
# What the issue asks alerts for, each by at least one rule.
REQUIRED = {"ParleyHighErrorRate", "ParleySlowCalls", "ParleyProviderFailures", "ParleyBudgetNearLimit",
            "ParleyRunsFailing", "ParleyLLMQueueWait"}

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (`make install`: Debian's prometheus)")


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_the_rules_cover_what_operators_must_hear_about():
    assert REQUIRED <= alert_names()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_series_that_fire_it():
    fired = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    assert fired == alert_names()


@needs_promtool
def test_promtool_accepts_the_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@needs_promtool
def test_promtool_fires_each_alert_on_its_series():
    result = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120,
                            cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_rule_that_would_not_fire(tmp_path):
    """The rule tests can fail: with the error-rate threshold raised past the test's series, they do."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "parley.yml").write_text(RULES.read_text().replace(") > 0.05\n", ") > 0.5\n", 1))
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "parley_test.yml")
    result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "tests" / "parley_test.yml")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path / "tests")
    assert result.returncode != 0 and "ParleyHighErrorRate" in result.stdout + result.stderr
