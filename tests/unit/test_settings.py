"""Every setting is a field of Settings; a bad value stops the process with one line naming the
variable (here: the five that used to be read outside Settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dunning.credits.gateways import Gateways, StripeGateway
from dunning.errors import SettingsError
from dunning.platform.settings import Settings, load_settings

DUNNING = str(Path(sys.executable).parent / "dunning")


def run_dunning(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
    clean.update({"DUNNING_DATA_DIR": str(tmp_path), **env})
    return subprocess.run([DUNNING, *args], capture_output=True, text=True, env=clean,
                          cwd=tmp_path, timeout=60)


def test_a_bad_log_format_stops_the_webhooks_with_one_line(tmp_path: Path) -> None:
    done = run_dunning(tmp_path, "webhooks", DUNNING_LOG_FORMAT="xml")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "DUNNING_LOG_FORMAT" in lines[0] and "xml" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_bad_log_level_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    done = run_dunning(tmp_path, "worker", DUNNING_LOG_LEVEL="loud")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "DUNNING_LOG_LEVEL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("variable", "value"), [
    ("DUNNING_LOG_FORMAT", "xml"),
    ("DUNNING_LOG_LEVEL", "chatty"),
    ("DUNNING_METRICS_SAMPLE_SECONDS", "0"),
    ("DUNNING_METRICS_SAMPLE_SECONDS", "often"),
    ("DUNNING_STRIPE_API_URL", "stripe.local"),
])
def test_bad_values_name_their_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"^invalid setting {variable}: "):
        load_settings()


def test_the_five_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUNNING_LOG_FORMAT", "TEXT")
    monkeypatch.setenv("DUNNING_LOG_LEVEL", "debug")
    monkeypatch.setenv("DUNNING_METRICS_SAMPLE_SECONDS", "0.5")
    monkeypatch.setenv("DUNNING_STRIPE_API_URL", "http://127.0.0.1:9/")
    monkeypatch.delenv("DUNNING_STRIPE_API_KEY", raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_sdk_name")  # the SDK's own name works too
    cfg = load_settings()
    assert (cfg.log_format, cfg.log_level, cfg.metrics_sample_seconds) == ("text", "DEBUG", 0.5)
    assert cfg.stripe_api_url == "http://127.0.0.1:9"
    assert cfg.stripe_api_key.get_secret_value() == "sk_test_sdk_name"
    assert "sk_test_sdk_name" not in repr(cfg)  # a secret: never in a repr or a log line
    gateway = Gateways.from_settings(cfg).get("stripe")
    assert isinstance(gateway, StripeGateway)
    assert (gateway.api_key, gateway.api_base) == ("sk_test_sdk_name", "http://127.0.0.1:9")


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DUNNING_LOG_FORMAT", "DUNNING_LOG_LEVEL", "DUNNING_METRICS_SAMPLE_SECONDS",
                 "DUNNING_STRIPE_API_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = Settings()
    assert (cfg.log_format, cfg.log_level, cfg.metrics_sample_seconds) == ("auto", "INFO", 15.0)
    assert cfg.stripe_api_url == "https://api.stripe.com"
