"""`dunning console`, `dunning users add`, `dunning api-keys create`: the operator console, its
users and the HTTP API's keys."""

from __future__ import annotations

import getpass
import sys

import typer

from dunning.cli.common import JsonOpt, console, database, fail, print_json, settings

users_app = typer.Typer(help="Console users (email and password, per account).",
                        no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the HTTP API (/api/v1), per account.",
                       no_args_is_help=True)


def _read_password() -> str:
    """From a prompt (twice) on a terminal; otherwise the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            fail("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline()
    if not line:
        fail("no password on stdin (give it as the first line)")
    return line.rstrip("\r\n")


@users_app.command("add")
def users_add(
    email: str = typer.Argument(..., metavar="EMAIL", help="The user's email (sign-in name)."),
    account: str = typer.Option(..., "--account", help="The account the user works on."),
    role: str = typer.Option(..., "--role", help="admin, operator (both may change things) "
                             "or viewer (read only)."),
    as_json: bool = JsonOpt,
) -> None:
    """Add a console user (or reset an existing user's password and role).

    The password comes from a prompt, or from the first line of stdin when it is not a terminal.
    """
    from dunning.console.access import ROLES, add_user, check_password

    if role not in ROLES:
        fail(f"--role: {role!r} is not one of {', '.join(ROLES)}")
    password = _read_password()
    check_password(password)
    with database().session() as s:
        user = add_user(s, email, account, role, password)
        data = {"email": user.email, "account_id": user.account_id, "role": user.role}
    if as_json:
        print_json(data)
    else:
        console.print(f"user {data['email']} ({role}) can now sign in to account {account}")


@keys_app.command("create")
def keys_create(
    account: str = typer.Option(..., "--account", help="The account the key acts for."),
    name: str | None = typer.Option(None, "--name", help="A label, e.g. the calling system."),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API key. It is printed once and stored only as a hash: keep it safe."""
    from dunning.api.keys import create_key

    with database().session() as s:
        key = create_key(s, account, name)
    if as_json:
        print_json({"key_id": key.key_id, "account_id": key.account_id, "api_key": key.secret})
    else:
        console.print(f"API key {key.key_id} for account {account} (shown once):")
        console.print(key.secret, highlight=False, markup=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(
    account: str = typer.Option(..., "--account", help="The account."),
    as_json: bool = JsonOpt,
) -> None:
    """The account's API keys (ids and dates; the keys themselves are not kept)."""
    from dunning.api.keys import list_keys

    with database().session() as s:
        keys = list_keys(s, account)
    if as_json:
        print_json({"account_id": account, "keys": keys})
        return
    for k in keys:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        console.print(f"{k['key_id']}  {k['name'] or ''}  created {k['created_at']}  "
                      f"last used {k['last_used_at'] or 'never'}  {state}", markup=False)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., metavar="KEY_ID", help="The key's id (dk_<id>_...)."),
    account: str = typer.Option(..., "--account", help="The account."),
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a key: its next request gets 401."""
    from dunning.api.keys import revoke_key

    with database().session() as s:
        revoke_key(s, account, key_id)
    if as_json:
        print_json({"account_id": account, "key_id": key_id, "revoked": True})
    else:
        console.print(f"API key {key_id} revoked", markup=False)


def console_server() -> None:
    """The operator console and HTTP API on DUNNING_CONSOLE_HOST:DUNNING_CONSOLE_PORT."""
    from dunning.console.server import run_console
    from dunning.platform import logs

    logs.configure()
    cfg = settings()
    _check_listen(cfg.console_host, cfg.console_port)
    database()
    run_console(cfg)


def _check_listen(host: str, port: int) -> None:
    """A clear one-line error (exit 1) when the address cannot be listened on."""
    problem = listen_problem(host, port)
    if problem:
        fail(problem)


def listen_problem(host: str, port: int) -> str | None:
    """Why the console cannot listen on host:port, or None when it can."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"DUNNING_CONSOLE_HOST={host}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return (f"cannot listen on {host}:{port} (DUNNING_CONSOLE_HOST, "
                    f"DUNNING_CONSOLE_PORT): {exc.strerror or exc}")
    return None


def register(app: typer.Typer) -> None:
    app.command("console")(console_server)
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="api-keys")
