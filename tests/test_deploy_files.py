"""The deployment files agree with the Procfile, the one source of process commands.

Fast and offline: no Docker, no cluster, no network. Every YAML and JSON file must
parse; the Docker image, compose, Kubernetes and systemd start processes only through
deploy/entrypoint.sh, which is run here for real to show it execs the Procfile lines.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import runpy
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
TYPES = ("web", "worker", "beat")
STOP_GRACE_SECONDS = 30


def procfile() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+?)\s*$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]:
        objects += yaml_docs(K8S / name)
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def run_entrypoint(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --- the Procfile and every parseable file ----------------------------------------


def test_procfile_has_the_three_process_types() -> None:
    assert tuple(procfile()) == TYPES


@pytest.mark.parametrize(
    "path",
    sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    assert yaml_docs(path), f"{path} has no document"


def test_app_json_parses() -> None:
    assert isinstance(json.loads((ROOT / "app.json").read_text()), dict)


# --- deploy/entrypoint.sh ---------------------------------------------------------


def test_entrypoint_is_executable_and_valid_bash() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_entrypoint_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(ENTRYPOINT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("process", TYPES)
def test_entrypoint_print_is_the_procfile_line(process: str) -> None:
    result = run_entrypoint("--print", process)
    assert result.returncode == 0, result.stderr
    assert result.stdout == procfile()[process] + "\n"


def test_entrypoint_print_appends_extra_arguments() -> None:
    result = run_entrypoint("--print", "worker", "--concurrency", "2")
    assert result.stdout == procfile()["worker"] + " --concurrency 2\n"


@pytest.mark.parametrize("process", TYPES)
def test_entrypoint_execs_the_procfile_command(process: str, tmp_path: Path) -> None:
    """With stand-ins for gunicorn and celery on PATH, the argv they get is the
    Procfile line split as a shell splits it, run from the repository root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("gunicorn", "celery"):
        stand_in = bin_dir / program
        stand_in.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "print(json.dumps({'argv': [os.path.basename(sys.argv[0])] + sys.argv[1:],"
            " 'cwd': os.getcwd()}))\n"
        )
        stand_in.chmod(0o755)
    state = tmp_path / "process"
    result = run_entrypoint(
        process,
        "--extra",
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SENDBEAT_STATE_FILE": str(state),
        },
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    expected = {
        "web": ["gunicorn", "--config", "deploy/gunicorn.conf.py", "app:create_app()"],
        "worker": [
            "celery",
            "--app",
            "workers.main",
            "worker",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
        "beat": ["celery", "--app", "workers.main", "beat", "--loglevel", "INFO"],
    }[process]
    assert seen["argv"] == [*expected, "--extra"]
    assert seen["argv"][:-1] == shlex.split(procfile()[process])
    assert Path(seen["cwd"]).resolve() == ROOT
    assert state.read_text() == process + "\n"


def test_entrypoint_runs_other_commands_as_given() -> None:
    result = run_entrypoint(sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['a b']\n"


def test_entrypoint_runs_flask_cli_of_the_app() -> None:
    flask = Path(sys.executable).parent / "flask"
    if not flask.exists():
        pytest.skip("flask is not installed beside this Python")
    result = run_entrypoint(str(flask), "--app", "app", "project", "--help")
    assert result.returncode == 0, result.stderr
    assert "create" in result.stdout


def test_entrypoint_healthcheck_passes_for_worker_and_beat(tmp_path: Path) -> None:
    state = tmp_path / "process"
    state.write_text("beat\n")
    assert run_entrypoint("healthcheck", env={"SENDBEAT_STATE_FILE": str(state)}).returncode == 0


def test_entrypoint_healthcheck_fails_for_a_web_that_does_not_answer(tmp_path: Path) -> None:
    state = tmp_path / "process"
    state.write_text("web\n")
    env = {"SENDBEAT_STATE_FILE": str(state), "PORT": "1"}
    assert run_entrypoint("healthcheck", env=env).returncode != 0


# --- deploy/Dockerfile ------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(FROM line, [(instruction, arguments), ...]) per stage, continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append((arguments, []))
        elif stages:
            stages[-1][1].append((instruction, arguments.strip()))
    return stages


def test_dockerfile_is_multi_stage_on_python_3_11_slim() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    froms = [stage[0] for stage in dockerfile_stages()]
    assert froms[0] == "${PYTHON_IMAGE} AS builder"
    assert "${PYTHON_IMAGE} AS runtime" in froms
    assert froms[-1] == "runtime", "the default target must be the runtime image"


def test_dockerfile_runtime_is_non_root_and_runs_the_entrypoint() -> None:
    stages = {
        (head.split(" AS ")[1] if " AS " in head else "final"): dict(body)
        for head, body in dockerfile_stages()
    }
    runtime = stages["runtime"]
    assert "USER" not in stages["final"] and "ENTRYPOINT" not in stages["final"]
    user = runtime["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert runtime["ENTRYPOINT"] == '["/srv/sendbeat/deploy/entrypoint.sh"]'
    assert runtime["CMD"] == '["web"]'
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert runtime["EXPOSE"] == "5000"
    assert "PORT=5000" in runtime["ENV"]
    assert "entrypoint.sh" in runtime["HEALTHCHECK"] and "healthcheck" in runtime["HEALTHCHECK"]
    # Every stage that changes USER ends as the unprivileged user.
    for name, stage in dockerfile_stages():
        users = [args for instruction, args in stage if instruction == "USER"]
        if users:
            assert users[-1].split(":")[0] not in {"root", "0"}, name


def test_dockerfile_copies_the_procfile_and_the_entrypoint() -> None:
    copies = [args for _, stage in dockerfile_stages() for i, args in stage if i == "COPY"]
    assert "Procfile ./Procfile" in copies
    assert "deploy/gunicorn.conf.py deploy/entrypoint.sh ./deploy/" in copies


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "**" in ignore
    for _, stage in dockerfile_stages():
        for instruction, args in stage:
            if instruction == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert source in allowed, f"{source} is ignored by Dockerfile.dockerignore"
                    assert (ROOT / source).exists(), source


# --- deploy/compose.yaml ----------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_processes_are_the_procfile_types() -> None:
    services = compose()["services"]
    for process in TYPES:
        assert services[process]["command"] == [process]
        assert services[process]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[process]["stop_grace_period"] == f"{STOP_GRACE_SECONDS}s"
        assert services[process]["stop_signal"] == "SIGTERM"
        env = services[process]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert "mailpit:1025" in env["MAIL_URL"]


def test_compose_runs_two_beats_and_checks_web_health() -> None:
    services = compose()["services"]
    assert services["beat"]["deploy"]["replicas"] == 2
    assert services["web"]["healthcheck"]["test"][-1] == "healthcheck"
    assert "inspect ping" in services["worker"]["healthcheck"]["test"][-1]


def test_compose_redis_persists_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_flower_and_mail_catcher() -> None:
    services = compose()["services"]
    assert services["flower"]["build"]["target"] == "flower"
    assert services["flower"]["command"][:4] == ["celery", "--app", "workers.main", "flower"]
    assert "mailpit" in services["mailpit"]["image"]


# --- deploy/k8s -------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


@pytest.mark.parametrize("process", TYPES)
def test_k8s_deployments_run_the_procfile_types(process: str) -> None:
    deployment = k8s_object("Deployment", f"sendbeat-{process}")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == STOP_GRACE_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"] == [process]
    assert "command" not in container, "the image's entrypoint must run the Procfile line"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"sendbeat-config", "sendbeat-secrets"}


def test_k8s_web_probes_and_service() -> None:
    pod = k8s_object("Deployment", "sendbeat-web")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 5000
    service = k8s_object("Service", "sendbeat-web")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_k8s_runs_two_beats() -> None:
    assert k8s_object("Deployment", "sendbeat-beat")["spec"]["replicas"] == 2


def test_k8s_keda_scales_workers_on_the_default_queue() -> None:
    scaled = k8s_object("ScaledObject", "sendbeat-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sendbeat-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    queue = Settings().queue
    assert trigger["metadata"]["listName"] == queue == "sendbeat"
    config = k8s_object("ConfigMap", "sendbeat-config")
    assert config["data"]["SENDBEAT_QUEUE"] == queue
    # KEDA's CRD types trigger metadata as a map of strings.
    assert all(isinstance(value, str) for value in trigger["metadata"].values())
    auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == "sendbeat-secrets"


def test_k8s_redis_persists_and_never_evicts() -> None:
    redis = k8s_object("StatefulSet", "sendbeat-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    command = " ".join(container["args"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert redis["spec"]["volumeClaimTemplates"]


def test_k8s_config_values_are_strings() -> None:
    assert all(
        isinstance(v, str) for v in k8s_object("ConfigMap", "sendbeat-config")["data"].values()
    )
    secret = k8s_object("Secret", "sendbeat-secrets")["stringData"]
    assert all(isinstance(v, str) for v in secret.values())
    assert {"REDIS_URL", "MAIL_URL"} <= set(secret)


# --- deploy/systemd ---------------------------------------------------------------


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser


@pytest.mark.parametrize(
    ("name", "process"),
    [
        ("sendbeat-web.service", "web"),
        ("sendbeat-worker@.service", "worker"),
        ("sendbeat-beat.service", "beat"),
    ],
)
def test_systemd_units_run_the_procfile_types(name: str, process: str) -> None:
    service = unit(name)["Service"]
    assert service["ExecStart"] == f"/opt/sendbeat/deploy/entrypoint.sh {process}"
    assert service["TimeoutStopSec"] == str(STOP_GRACE_SECONDS)
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "sendbeat"
    assert service["EnvironmentFile"] == "/etc/sendbeat/env"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert unit(name)["Install"]["WantedBy"] == "sendbeat.target"


def test_systemd_worker_instances_get_their_own_node_names() -> None:
    text = (SYSTEMD / "sendbeat-worker@.service").read_text()
    assert "Environment=CELERY_WORKER_HOSTNAME=worker%i@%%h" in text.splitlines()


# --- app.json (Heroku) ------------------------------------------------------------


def app_json() -> dict[str, Any]:
    return json.loads((ROOT / "app.json").read_text())


def test_app_json_formation_is_the_procfile() -> None:
    formation = app_json()["formation"]
    assert tuple(formation) == TYPES
    assert {k: v["quantity"] for k, v in formation.items()} == {"web": 1, "worker": 1, "beat": 2}


def test_app_json_addon_buildpack_and_mail_url() -> None:
    manifest = app_json()
    assert manifest["addons"] == [{"plan": "heroku-redis"}]
    assert manifest["buildpacks"] == [{"url": "heroku/python"}]
    mail = manifest["env"]["MAIL_URL"]
    assert mail["required"] is True and mail["description"]
    assert "value" not in mail


def test_app_json_variables_are_documented_with_their_defaults() -> None:
    """Optional variables carry sendbeat's own defaults, so a Heroku Button deploy
    behaves as an unconfigured install, except for JSON logs, which suit a platform's
    log pipeline; variables documented later may be missing."""
    env = app_json()["env"]
    documented = set(
        re.findall(r"`(SENDBEAT_[A-Z_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    ours = {name for name in env if name.startswith("SENDBEAT_")}
    assert ours <= documented
    assert len(ours) >= 15
    for name in ours:
        assert env[name]["required"] is False and env[name]["description"], name
    values = {name: spec["value"] for name, spec in env.items() if "value" in spec}
    values["MAIL_URL"] = "console://"
    assert Settings.from_env(values) == Settings(mail_url="console://", log_format="json")


# --- stop timing, one number everywhere -------------------------------------------


def test_gunicorn_graceful_timeout_fits_in_every_stop_grace() -> None:
    config = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    web = k8s_object("Deployment", "sendbeat-web")["spec"]["template"]["spec"]
    pre_stop = int(web["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert config["graceful_timeout"] + pre_stop < STOP_GRACE_SECONDS
