"""Running the engine: `dunning dev-server|worker|webhooks|codec-server|up|demo|db upgrade`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import typer

from dunning.cli.common import JsonOpt, console, database, err_console, fail, print_json, settings
from dunning.platform.files import private_file
from dunning.platform.temporal import dev_server_command

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(as_json: bool = JsonOpt) -> None:
    """Apply database migrations (idempotent)."""
    db = database()
    if as_json:
        print_json({"database": db.engine.url.render_as_string(hide_password=True),
                    "status": "up to date"})
    else:
        console.print(f"database schema up to date ({db.dialect})")


def _logging() -> None:
    """Structured logs on stdout (dunning.logs: DUNNING_LOG_FORMAT, DUNNING_LOG_LEVEL)."""
    from dunning.platform import logs

    cfg = settings()  # a bad setting stops the command here, with one line naming it
    logs.configure(cfg.log_level, cfg.log_format)


def dev_server(
    port: int = typer.Option(7233, "--port", help="Frontend gRPC port."),
    ui_port: int = typer.Option(8233, "--ui-port", help="Web UI port."),
    headless: bool = typer.Option(False, "--headless", help="No web UI."),
    codec_endpoint: str | None = typer.Option(
        None, "--ui-codec-endpoint", help="Codec server the UI uses to show payloads."
    ),
) -> None:
    """The embedded Temporal dev server, persisted under DUNNING_DATA_DIR, with the search
    attributes registered."""
    cmd = dev_server_command(settings(), port=port, ui_port=ui_port, headless=headless,
                             codec_endpoint=codec_endpoint)
    err_console.print(f"Temporal dev server on 127.0.0.1:{port}"
                      + ("" if headless else f", UI http://127.0.0.1:{ui_port}"))
    proc = subprocess.Popen(cmd)
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def worker() -> None:
    """The Temporal worker (workflows and activities). Start more to scale out."""
    from worker import run_worker

    _logging()
    cfg = settings()
    database()  # migrate first, with a clear error if the database is unreachable
    try:
        asyncio.run(run_worker(cfg))
    except RuntimeError as exc:
        fail(f"worker stopped: {str(exc).splitlines()[0]} "
             f"(DUNNING_TEMPORAL_ADDRESS={cfg.temporal_address})")


def webhooks() -> None:
    """The HTTP server for provider and billing webhooks."""
    from dunning.webhooks.server import run_webhooks

    _logging()
    database()
    run_webhooks(settings())


def codec_server(
    host: str | None = typer.Option(
        None, "--host", help="Interface to listen on (default DUNNING_CODEC_HOST, 127.0.0.1). "
        "Anything but loopback needs DUNNING_CODEC_AUTH_TOKEN or DUNNING_CODEC_JWKS_URL."),
    port: int | None = typer.Option(
        None, "--port", help="Port to listen on (default DUNNING_CODEC_PORT, 8081)."),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin",
        help="Origin of a Temporal UI allowed to call the endpoints (repeatable; default: "
             "http://localhost:8233 and http://127.0.0.1:8233, the dev server's UI).",
    ),
) -> None:
    """Temporal's /encode and /decode endpoints, so the UI and CLI can read payloads.
    Callers authenticate with DUNNING_CODEC_AUTH_TOKEN or a JWT (DUNNING_CODEC_JWKS_URL)."""
    from dunning.platform.codec_server import DEFAULT_CORS_ORIGINS, run_codec_server

    _logging()
    cfg = settings()
    try:
        run_codec_server(cfg, host or cfg.codec_host, port or cfg.codec_port,
                         cors_origins=cors_origin or list(DEFAULT_CORS_ORIGINS))
    except ValueError as exc:
        fail(str(exc))


def _port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0




def start_dev_server_if_needed(
    ui: bool = True, codec_endpoint: str | None = None
) -> subprocess.Popen[bytes] | None:
    """Start the embedded dev server when DUNNING_TEMPORAL_ADDRESS is local and nothing
    listens there; returns the process (None when a server is already there)."""
    cfg = settings()
    host, _, port_s = cfg.temporal_address.rpartition(":")
    port = int(port_s)
    if _port_open(host or "127.0.0.1", port):
        return None
    if host not in ("localhost", "127.0.0.1", ""):
        fail(f"no Temporal server at DUNNING_TEMPORAL_ADDRESS={cfg.temporal_address}")
    cmd = dev_server_command(cfg, port=port, ui_port=port + 1000, headless=not ui,
                             codec_endpoint=codec_endpoint)
    log = open(private_file(cfg.data_dir / "temporal-dev-server.log"), "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            fail(f"the Temporal dev server did not start; see {log.name}")
        time.sleep(0.2)
    return proc


def up() -> None:
    """Dev server (when none is running), migrations, worker and webhook server, until Ctrl-C."""
    _logging()
    cfg = settings()
    from dunning.platform.doctor import examine

    for problem in examine(cfg).problems:  # the same checks as `dunning doctor`
        err_console.print(f"warning: {problem.check}: {problem.message}", highlight=False,
                          markup=False, soft_wrap=True)
    database()
    codec_port = cfg.codec_port
    codec = not _port_open("127.0.0.1", codec_port)
    proc = start_dev_server_if_needed(
        codec_endpoint=f"http://127.0.0.1:{codec_port}" if codec else None
    )
    if proc is not None:
        port = int(cfg.temporal_address.rpartition(":")[2])
        console.print(f"Temporal dev server started; UI: http://127.0.0.1:{port + 1000}"
                      + (f" (payloads decoded by the codec server on :{codec_port})"
                         if codec else ""))
        if codec and cfg.codec_auth_configured:
            console.print("note: the codec server requires authentication (DUNNING_CODEC_*); "
                          "the dev server's UI sends no token, so it shows payloads encrypted. "
                          f'Use `temporal workflow show --codec-endpoint '
                          f'http://127.0.0.1:{codec_port} --codec-auth "Bearer $TOKEN"`.')
    from dunning.cli.console import listen_problem

    busy = listen_problem(cfg.console_host, cfg.console_port)
    if busy:  # the engine runs on; only the console is left out
        err_console.print(f"warning: no console: {busy}")
    console.print(f"worker on task queue '{cfg.task_queue}', webhooks on "
                  f"http://{cfg.http_host}:{cfg.http_port}"
                  + ("" if busy else f", console on http://{cfg.console_host}:"
                                     f"{cfg.console_port}") + "; Ctrl-C stops")
    try:
        asyncio.run(_run_all(cfg, codec and proc is not None, with_console=not busy))
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)


async def _run_all(cfg: Any, with_codec: bool, *, with_console: bool = True) -> None:
    from dunning.console.server import serve_console
    from dunning.webhooks.server import serve_webhooks
    from worker import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [run_worker(cfg, stop), serve_webhooks(cfg, stop)]
    if with_console:
        tasks.append(serve_console(cfg, stop))
    if with_codec:
        from dunning.platform.codec_access import CodecGate
        from dunning.platform.codec_server import build_codec_server

        ui = int(cfg.temporal_address.rpartition(":")[2]) + 1000
        gate = CodecGate.from_settings(cfg)  # DUNNING_CODEC_AUTH_TOKEN / JWKS as configured
        if cfg.temporal_namespace not in gate.namespaces:  # the dev server's own namespace
            gate.namespaces = (*gate.namespaces, cfg.temporal_namespace)
        server = build_codec_server(
            cfg, "127.0.0.1", cfg.codec_port, gate=gate,
            cors_origins=[f"http://127.0.0.1:{ui}", f"http://localhost:{ui}"],
            log_level="warning",
        )

        async def codec() -> None:
            serving = asyncio.create_task(server.serve())
            await stop.wait()
            server.should_exit = True
            await serving

        tasks.append(codec())
    await asyncio.gather(*tasks)


def demo(
    keep: bool = typer.Option(False, "--keep", help="Leave the stack running to explore."),
    as_json: bool = JsonOpt,
    smoke: bool = typer.Option(
        False, "--smoke", help="A short run (about 20 s) that exits 1 unless emails and SMS "
        "went out, a case was recovered and the webhooks answered as they should."
    ),
) -> None:
    """A self-contained showcase on free ports that exits by itself."""
    from dunning.cli.demo import run_demo

    problems = run_demo(keep=keep, as_json=as_json, smoke=smoke)
    if problems:
        fail("demo smoke run: " + "; ".join(problems))


def register(app: typer.Typer) -> None:
    app.command("dev-server")(dev_server)
    app.command()(worker)
    app.command()(webhooks)
    app.command("codec-server")(codec_server)
    app.command()(up)
    app.command()(demo)
    app.add_typer(db_app, name="db")
