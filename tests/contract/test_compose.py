"""docker-compose.yml, the Dockerfile and deploy/ checked statically against the code.

There is no Docker engine here, so these tests read the files and compare them with what the
code says: the CLI's commands and options, the settings' environment variables, the search
attributes the engine upserts, the database roles the init script creates.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.platform.codec import converter_for
from dunning.platform.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Values for the variables compose requires (`${VAR:?...}`), as an operator's .env would give.
SAMPLE_ENV = {
    "POSTGRES_PASSWORD": "pg-superuser-pw",
    "TEMPORAL_DB_PASSWORD": "temporal-pw",
    "APP_DB_PASSWORD": "app-pw",
    "DUNNING_CODEC_KEYS": "k2:" + "ab" * 32 + ",k1:" + "cd" * 32,
    "DUNNING_SECRET_KEYS": "s1:" + "ef" * 32,
    "DUNNING_CODEC_AUTH_TOKEN": "codec-token-from-env",
}
APP_ROLES = {("db", "upgrade"), ("worker",), ("webhooks",), ("codec-server",)}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PWD|TOKEN|SECRET|_KEYS?$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services built from this repository (the engine's image)."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` with `env` (else defaults)."""
    env = SAMPLE_ENV if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            raise AssertionError(f"compose requires {name}: {arg}")
        return ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {"condition": "service_started"}) for name, spec in deps.items()}


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port) for short-syntax port mappings."""
    result: dict[int, tuple[str, int]] = {}
    for spec in service.get("ports") or []:
        parts = interpolate(str(spec)).split(":")
        if len(parts) == 3:
            ip, host, container = parts
        elif len(parts) == 2:
            ip, (host, container) = "0.0.0.0", parts
        else:
            continue
        result[int(container.split("/")[0])] = (ip, int(host))
    return result


def setting_env_names() -> set[str]:
    return {env_name(field) for field in Settings.model_fields}


# Typer may bring its own copy of click (typer 0.29 vendors it as typer._click), so commands and
# groups are recognised by shape, not by click's classes: a group has `.commands`.


def is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def cli_root() -> Any:
    from dunning.cli import app

    root = typer.main.get_command(app)
    assert is_group(root)
    return root


def cli_leaf_commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], Any]
]:
    for name, cmd in group.commands.items():
        if is_group(cmd):
            yield from cli_leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def resolve_cli(args: list[str]) -> tuple[tuple[str, ...], Any, list[str]]:
    """Walk `dunning ARGS` down the CLI's groups; return the command path, the command and the
    remaining arguments."""
    cmd = cli_root()
    path: list[str] = []
    rest = list(args)
    while is_group(cmd):
        assert rest and not rest[0].startswith("-"), f"`dunning {' '.join(args)}` names no command"
        name = rest.pop(0)
        sub = cmd.commands.get(name)
        assert sub is not None, (
            f"`dunning {' '.join([*path, name])}` is not a command; "
            f"`dunning {' '.join(path)}` has: {', '.join(sorted(cmd.commands))}"
        )
        path.append(name)
        cmd = sub
    return tuple(path), cmd, rest


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1]:]


# --- structure ----------------------------------------------------------------------------------


def test_topology(services: dict[str, dict[str, Any]], app_services: dict[str, Any]) -> None:
    for name in ("postgresql", "temporal", "temporal-ui"):
        assert name in services, f"missing service {name}"
    pg = services["postgresql"]
    assert str(pg["image"]).startswith("postgres:16")
    assert "healthcheck" in pg
    assert any(str(v).split(":")[1] == "/var/lib/postgresql/data" for v in pg["volumes"])
    assert str(services["temporal"]["image"]).startswith("temporalio/")
    assert str(services["temporal-ui"]["image"]).startswith("temporalio/ui:")
    roles = {resolve_cli(command_of(svc))[0] for svc in app_services.values()}
    assert roles >= APP_ROLES, f"app roles missing: {APP_ROLES - roles}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes") or []:
            source = str(spec).split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_depends_on_refers_to_services(services: dict[str, dict[str, Any]]) -> None:
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in valid, f"{name} -> {dep}: bad condition {condition}"
            target = services[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy: no check"
            if condition == "service_completed_successfully":
                restart = str(target.get("restart", "no"))
                assert restart == "no" or restart.startswith("on-failure"), (
                    f"{name} waits for {dep} to complete, but {dep} restarts ({restart})"
                )

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, f"dependency cycle: {' -> '.join((*trail, node))}"
        for dep in depends_on(services[node]):
            visit(dep, (*trail, node))

    for name in services:
        visit(name, ())


def test_bind_mounts_and_scripts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        mounts: list[tuple[Path, str]] = []
        for spec in svc.get("volumes") or []:
            source, target = str(spec).split(":")[:2]
            if source.startswith("."):
                host = (ROOT / source).resolve()
                assert host.exists(), f"{name} mounts missing {source}"
                mounts.append((host, target))
        for token in command_of(svc) + [str(e) for e in (svc.get("entrypoint") or [])]:
            for host, target in mounts:
                if token.startswith(target.rstrip("/") + "/"):
                    path = host / token[len(target.rstrip("/")) + 1:]
                    assert path.is_file(), f"{name} runs {token}, which is not in {host}"
    shell = shutil.which("sh")
    assert shell
    for script in sorted((ROOT / "deploy").rglob("*.sh")):
        check = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"


# --- the app services and the CLI ---------------------------------------------------------------


def test_app_commands_are_real_dunning_commands(app_services: dict[str, dict[str, Any]]) -> None:
    known = dict(cli_leaf_commands(cli_root()))
    assert known, "the CLI has no commands"
    for name, svc in app_services.items():
        entrypoint = svc.get("entrypoint")
        assert entrypoint in (None, "dunning", ["dunning"]), f"{name} overrides the entrypoint"
        args = [interpolate(a) for a in command_of(svc)]
        path, cmd, rest = resolve_cli(args)
        assert path in known, f"{name}: `dunning {' '.join(path)}` is not a command"
        options = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for token in rest:
            if token.startswith("-"):
                flag = token.split("=", 1)[0]
                assert flag in options, (
                    f"{name}: `dunning {' '.join(path)}` has no option {flag} "
                    f"(it has {', '.join(sorted(options))})"
                )
        # And click accepts the whole argument list.
        ctx = cmd.make_context(" ".join(path), list(rest), resilient_parsing=False)
        ctx.close()


def test_env_vars_are_settings(compose: dict[str, Any]) -> None:
    known = setting_env_names()
    used: set[str] = set()
    for svc in compose["services"].values():
        used |= {k for k in env_of(svc) if k.startswith(("DUNNING_", "PLIVO_"))}
    used |= {
        m.group(1)
        for m in _VAR.finditer(COMPOSE_FILE.read_text())
        if m.group(1).startswith(("DUNNING_", "PLIVO_"))
    }
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            used |= {m for m in re.findall(r"\b((?:DUNNING|PLIVO)_[A-Z0-9_]+)=", rest)}
    unknown = used - known
    assert not unknown, f"not settings (dunning.platform.settings.Settings): {sorted(unknown)}"


def test_app_services_get_the_contract_settings(
    services: dict[str, dict[str, Any]], app_services: dict[str, dict[str, Any]]
) -> None:
    required = {
        "DUNNING_DATABASE_URL", "DUNNING_TEMPORAL_ADDRESS", "DUNNING_TEMPORAL_NAMESPACE",
        "DUNNING_TASK_QUEUE", "DUNNING_SMS_BACKEND", "PLIVO_AUTH_ID", "PLIVO_AUTH_TOKEN",
        "DUNNING_EMAIL_BACKEND", "DUNNING_SMTP_HOST", "DUNNING_SMTP_PORT", "DUNNING_SMTP_USERNAME",
        "DUNNING_SMTP_PASSWORD", "DUNNING_SMTP_STARTTLS", "DUNNING_EMAIL_FROM",
        "DUNNING_HTTP_HOST", "DUNNING_HTTP_PORT", "DUNNING_PUBLIC_URL", "DUNNING_CODEC_KEYS",
    }
    for name, svc in app_services.items():
        env = {k: interpolate(v) for k, v in env_of(svc).items()}
        missing = required - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        db_url = urlsplit(env["DUNNING_DATABASE_URL"])
        assert db_url.scheme == "postgresql+psycopg"
        assert db_url.hostname in services and db_url.port == 5432
        host, _, port = env["DUNNING_TEMPORAL_ADDRESS"].rpartition(":")
        assert host in services and port == "7233"
        assert env["DUNNING_HTTP_HOST"] == "0.0.0.0"
        # The environment is valid for the engine: settings load and the codec keys parse.
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        assert settings.database_url == env["DUNNING_DATABASE_URL"]
        converter_for(settings)
        # ... with Plivo and SMTP switched on as an operator would.
        live = {
            **env, "DUNNING_SMS_BACKEND": "plivo", "PLIVO_AUTH_ID": "MA" + "X" * 18,
            "PLIVO_AUTH_TOKEN": "token", "DUNNING_EMAIL_BACKEND": "smtp",
        }
        Settings(_env_file=None, **live)  # type: ignore[arg-type]


def test_secrets_are_not_hard_coded(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert not re.search(r"[0-9a-fA-F]{64}", text), "a key is written into docker-compose.yml"
    for name, svc in compose["services"].items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key):
                match = _VAR.fullmatch(value)
                assert match, f"{name}: {key} must come from the environment, not the file"
                op, default = match.group(2) or "", match.group(3) or ""
                assert not (op.endswith("-") and default), f"{name}: {key} has a default"
            if key.endswith("DATABASE_URL"):
                password = urlsplit(interpolate(value, {**SAMPLE_ENV})).password
                assert password, f"{name}: {key} has no password"
                assert "${" in value.split("@")[0], f"{name}: {key} hard-codes its password"
    # Without the required secrets compose must refuse to start rather than run with blanks.
    for secret in ("DUNNING_CODEC_KEYS", "DUNNING_SECRET_KEYS", "POSTGRES_PASSWORD",
                   "APP_DB_PASSWORD", "DUNNING_CODEC_AUTH_TOKEN"):
        with pytest.raises(AssertionError, match=secret):
            interpolate(text, {k: v for k, v in SAMPLE_ENV.items() if k != secret})


def test_ports(services: dict[str, dict[str, Any]], app_services: dict[str, Any]) -> None:
    webhooks = next(s for s in app_services.values() if resolve_cli(command_of(s))[0] == (
        "webhooks",))
    http_port = int(interpolate(env_of(webhooks)["DUNNING_HTTP_PORT"]))
    assert http_port == 8000 and http_port in published(webhooks)
    # Only the webhooks face the outside; the rest is for operators on this host.
    for name, svc in services.items():
        for container_port, (ip, _) in published(svc).items():
            if svc is not webhooks:
                assert ip == "127.0.0.1", f"{name} publishes {container_port} beyond loopback"


def test_worker_scales(app_services: dict[str, dict[str, Any]]) -> None:
    [worker] = [s for s in app_services.values() if resolve_cli(command_of(s))[0] == ("worker",)]
    assert "container_name" not in worker and not worker.get("ports")
    replicas = (worker.get("deploy") or {}).get("replicas", 1)
    assert int(interpolate(str(replicas))) >= 1


def test_ui_uses_the_codec_server(
    services: dict[str, dict[str, Any]], app_services: dict[str, dict[str, Any]]
) -> None:
    [(codec_name, codec)] = [
        (n, s) for n, s in app_services.items() if resolve_cli(command_of(s))[0] == (
            "codec-server",)
    ]
    _, cmd, rest = resolve_cli([interpolate(a) for a in command_of(codec)])
    params = cmd.make_context("codec-server", rest).params
    port, host = params["port"], params["host"]
    assert host == "0.0.0.0"
    # Beyond loopback it must authenticate: its environment lets it start.
    from dunning.platform.codec_access import CodecGate
    from dunning.platform.codec_server import InsecureCodecServer, check_bind

    codec_env = {k: interpolate(v) for k, v in env_of(codec).items()}
    codec_settings = Settings(_env_file=None, **codec_env)  # type: ignore[arg-type]
    assert codec_settings.codec_auth_token.get_secret_value() == "codec-token-from-env"
    check_bind(host, CodecGate.from_settings(codec_settings))
    without = {**codec_env, "DUNNING_CODEC_AUTH_TOKEN": ""}
    with pytest.raises(InsecureCodecServer, match="refusing"):
        check_bind(host, CodecGate.from_settings(
            Settings(_env_file=None, **without)))  # type: ignore[arg-type]
    ui = services["temporal-ui"]
    endpoint = urlsplit(interpolate(env_of(ui)["TEMPORAL_CODEC_ENDPOINT"]))
    # The browser calls the codec server at its published address.
    assert endpoint.hostname in ("localhost", "127.0.0.1")
    assert published(codec)[port][1] == endpoint.port, f"{codec_name} is not at {endpoint}"
    ui_host_port = published(ui)[8080][1]
    origins = set(params["cors_origin"])
    assert {f"http://localhost:{ui_host_port}", f"http://127.0.0.1:{ui_host_port}"} <= origins
    assert depends_on(ui).keys() <= set(services)


# --- Temporal -----------------------------------------------------------------------------------


def test_search_attributes_match_the_domain(services: dict[str, dict[str, Any]]) -> None:
    registering = {n: s for n, s in services.items() if "SEARCH_ATTRIBUTES" in env_of(s)}
    assert len(registering) == 1, "exactly one service should register the search attributes"
    [(name, svc)] = registering.items()
    declared: dict[str, str] = {}
    for spec in env_of(svc)["SEARCH_ATTRIBUTES"].split():
        attr, _, kind = spec.partition("=")
        assert attr not in declared, f"{attr} registered twice"
        declared[attr] = kind.upper()
    expected = {key.name: key.indexed_value_type.name for key in SEARCH_ATTRIBUTES}
    assert declared == expected
    # It registers them in the namespace the engine uses, against the Temporal service.
    env = env_of(svc)
    app_env = env_of(next(s for s in services.values() if "build" in s))
    assert interpolate(env["NAMESPACE"]) == interpolate(app_env["DUNNING_TEMPORAL_NAMESPACE"])
    assert interpolate(env["TEMPORAL_ADDRESS"]).split(":")[0] in services
    assert depends_on(svc)["temporal"]["condition"] == "service_healthy"
    script = ROOT / "deploy" / "temporal" / "setup-namespace.sh"
    text = script.read_text()
    assert "search-attribute create" in text and "$SEARCH_ATTRIBUTES" in text
    assert "namespace create" in text
    assert any(script.name in c for c in command_of(svc)), f"{name} does not run {script.name}"
    # The worker waits for the registration (upserting an unknown attribute fails the task).
    worker = next(s for s in services.values() if command_of(s)[:1] == ["worker"])
    assert depends_on(worker)[name]["condition"] == "service_completed_successfully"


def test_temporal_uses_postgres_with_its_own_role(services: dict[str, dict[str, Any]]) -> None:
    temporal = env_of(services["temporal"])
    assert temporal["DB"].startswith("postgres")
    assert temporal["POSTGRES_SEEDS"] in services
    init = (ROOT / "deploy" / "postgres" / "10-create-databases.sh").read_text()
    assert f"CREATE ROLE {temporal['POSTGRES_USER']} LOGIN CREATEDB" in init
    app = next(s for s in services.values() if "build" in s)
    url = urlsplit(interpolate(env_of(app)["DUNNING_DATABASE_URL"]))
    db_name = url.path.lstrip("/")
    assert f"CREATE ROLE {url.username} LOGIN" in init
    assert f"CREATE DATABASE {db_name} OWNER {url.username}" in init
    # Every service that uses a role's password takes it from the same variable.
    pg_env = env_of(services["postgresql"])
    assert "TEMPORAL_DB_PASSWORD" in temporal["POSTGRES_PWD"]
    assert "TEMPORAL_DB_PASSWORD" in pg_env["TEMPORAL_DB_PASSWORD"]
    assert "APP_DB_PASSWORD" in pg_env["APP_DB_PASSWORD"]
    assert "APP_DB_PASSWORD" in env_of(app)["DUNNING_DATABASE_URL"]
    schema = next(s for s in services.values() if "SQL_PASSWORD" in env_of(s))
    assert "TEMPORAL_DB_PASSWORD" in env_of(schema)["SQL_PASSWORD"]
    assert depends_on(services["temporal"]), "the server must wait for its schema"


def test_dynamic_config_is_valid_yaml(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["temporal"])
    relative = env["DYNAMIC_CONFIG_FILE_PATH"].removeprefix("config/dynamicconfig/")
    config = yaml.safe_load((ROOT / "deploy" / "temporal" / "dynamicconfig" / relative).read_text())
    assert isinstance(config, dict)
    for key, values in config.items():
        assert isinstance(values, list) and all("value" in v for v in values), key


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_and_runs_dunning() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    assert any(
        keyword == "RUN" and re.search(r"pip install (?:-\S+ )*\.(?:\s|$|&)", rest)
        for keyword, rest in instructions
    ), "the image does not `pip install .`"
    final = final_stage(instructions)
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    cmd = [rest for keyword, rest in final if keyword == "CMD"]
    program = json.loads(entrypoint[-1])[0] if entrypoint else json.loads(cmd[-1])[0]
    assert program == "dunning"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    for pattern in (".env", ".venv/", ".git/", ".dunning/"):
        assert pattern in ignored, f".dockerignore should exclude {pattern}"
