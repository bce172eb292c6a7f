"""The operator commands, run as an operator runs them: ``flask --app app project ...``."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from app.core.settings import Settings
from app.core.store import Store

ROOT = Path(__file__).resolve().parents[2]


def flask(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": settings.redis_url,
           "SENDBEAT_KEY_PREFIX": settings.key_prefix}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "project", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_project_lifecycle(settings: Settings, store: Store) -> None:
    created = flask(settings, "create", "acme")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]  # the key, alone on the last line
    assert key.startswith("sb_") and " " not in key
    assert store.project_for_key(key) is not None

    listed = flask(settings, "list")
    assert "acme" in listed.stdout and key[:12] in listed.stdout
    assert key not in listed.stdout  # keys are shown once, at creation

    rotated = flask(settings, "rotate-key", "acme")
    new_key = rotated.stdout.strip().splitlines()[-1]
    assert store.project_for_key(key) is None
    assert store.project_for_key(new_key) is not None

    revoked = flask(settings, "revoke-key", new_key[:12])
    assert revoked.returncode == 0
    assert store.project_for_key(new_key) is None


def test_errors_are_clear_and_exit_non_zero(settings: Settings) -> None:
    flask(settings, "create", "acme")

    again = flask(settings, "create", "acme")
    unknown = flask(settings, "rotate-key", "nobody")

    assert again.returncode != 0 and "already exists" in again.stderr
    assert unknown.returncode != 0 and "No project named 'nobody'" in unknown.stderr


def test_webhook_secret_is_made_once_shown_alone_and_rotated(
    settings: Settings, store: Store
) -> None:
    flask(settings, "create", "acme")

    first = flask(settings, "webhook-secret", "acme")
    again = flask(settings, "webhook-secret", "acme")
    rotated = flask(settings, "webhook-secret", "acme", "--rotate")
    unknown = flask(settings, "webhook-secret", "nobody")

    secret = first.stdout.strip().splitlines()[-1]
    assert first.returncode == 0 and secret.startswith("whsec_") and " " not in secret
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert again.stdout.strip().splitlines()[-1] == secret  # the same until rotated
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != secret
    project = store.project_by_name("acme")
    assert project is not None and store.webhook_secret(project.id) == new
    assert unknown.returncode != 0 and "No project named 'nobody'" in unknown.stderr


def test_the_default_alert_url_is_set_shown_and_cleared(settings: Settings, store: Store) -> None:
    flask(settings, "create", "acme")
    project = store.project_by_name("acme")
    assert project is not None

    none = flask(settings, "alert-url", "acme")
    set_ = flask(settings, "alert-url", "acme", "https://alerts.example.com/in")
    assert store.alert_url(project.id) == "https://alerts.example.com/in"
    bad = flask(settings, "alert-url", "acme", "alerts.example.com")
    cleared = flask(settings, "alert-url", "acme", "--clear")

    assert none.stdout.strip() == "Default alert URL of acme (failed, missed): none"
    assert set_.stdout.strip().endswith("https://alerts.example.com/in")
    assert bad.returncode != 0 and "give an http or https URL" in bad.stderr
    assert cleared.stdout.strip().endswith("none") and store.alert_url(project.id) is None
