"""The ``vmcp`` command: check a configuration, serve it, or run a self-contained demo.

A configuration problem always ends in exit status 2 with every problem on stderr, one per
line, and never a traceback: the person reading it is editing a YAML file, not debugging
vmcp.
"""

from __future__ import annotations

import shlex
import signal
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn, Protocol

import anyio
import typer

from vmcp.config import (
    BackendConfig,
    CompositeToolConfig,
    ServerConfig,
    SessionConfig,
    VmcpConfig,
    load_config,
    redact_url,
    stdio_warnings,
    unmatched_env_warnings,
    with_overrides,
)
from vmcp.demo import (
    DEMO_BACKENDS,
    DEMO_READY_TIMEOUT_SECONDS,
    DemoBackend,
    DemoError,
    free_ports,
    print_demo_banner,
    start_backend,
    stop,
    wait_until_answering,
)
from vmcp.errors import ConfigError

__all__ = ["app", "main"]

EXIT_CONFIG_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# The MCP Inspector's default origins, so the demo can be explored from it as is.
_DEMO_ORIGINS = ("http://localhost:6274", "http://127.0.0.1:6274")

app = typer.Typer(
    name="vmcp",
    help="A virtual MCP server: one Streamable-HTTP endpoint over many backend MCP servers.",
    add_completion=False,
    no_args_is_help=True,
    # Locals of a crashing frame may hold backend credentials from the configuration.
    pretty_exceptions_show_locals=False,
)


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"  # debug, and the HTTP client libraries' debug lines too


LogLevelOption = Annotated[
    LogLevel, typer.Option(case_sensitive=False, help="Logging threshold.")]
LogFormatOption = Annotated[
    str, typer.Option(help="json, console, or auto (console on a terminal, else json).")]


def main() -> None:
    """Console-script entry point."""
    app()


def _print_version(value: bool) -> None:
    if value:
        from vmcp import __version__

        typer.echo(f"vmcp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version,
        is_eager=True)] = False,
) -> None:
    """A virtual MCP server: one Streamable-HTTP endpoint over many backend MCP servers."""


# --------------------------------------------------------------------------- config-reference


@app.command("config-reference")
def config_reference(
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to FILE instead of standard output.",
        metavar="FILE")] = None,
) -> None:
    """Print the configuration reference (every key, its type, default and meaning)."""
    from vmcp.config.reference import render_reference

    text = render_reference()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- check-config


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="The YAML configuration file.", metavar="FILE")],
    probe: Annotated[bool, typer.Option(
        "--probe", help="Also connect to every backend and list what it offers.")] = False,
) -> None:
    """Validate FILE (with VMCP_* environment overrides) and summarise it.

    Everything ``serve`` checks before it starts is checked here too (the environment
    variables that ``token_env``, ``value_env`` and ``client_secret_env`` name, the
    ``jwks_file``s, the Cedar policies: syntax and the entity model's schema, with
    file:line), so an OK here means ``serve`` accepts the file."""
    config = _load_or_exit(file)
    problems = _startup_problems(config)
    if problems:
        _exit_with_problems(ConfigError("\n".join(problems)))
    typer.echo(f"{file}: configuration OK")
    for line in _summary(config):
        typer.echo(f"  {line}")
    for warning in _warnings(file, config):
        typer.echo(f"warning: {warning}", err=True)
    if probe:
        _probe_or_exit(config)


def _startup_problems(config: VmcpConfig) -> list[str]:
    """What only start-up can check: secrets from the environment, key files."""
    from vmcp.auth.incoming import build_authenticator
    from vmcp.auth.outgoing import build_outgoing_auth
    from vmcp.authz import build_authorizer

    problems: list[str] = []
    for build in (build_authenticator, build_outgoing_auth, build_authorizer):
        try:
            build(config)
        except ConfigError as exc:
            problems += str(exc).splitlines()
    return problems


def _warnings(file: Path, config: VmcpConfig) -> list[str]:
    """Valid, but probably not what was meant."""
    warnings = unmatched_env_warnings() + stdio_warnings(config)
    if not _has_content(file):
        warnings.append(f"{file} is empty: every key takes its default")
    if not config.backends:
        warnings.append("no backends configured: every session will be empty")
    return warnings


def _has_content(file: Path) -> bool:
    import yaml

    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) is not None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # it loaded a moment ago; whatever changed is not "empty"


def _probe_or_exit(config: VmcpConfig) -> None:
    from vmcp.probe import ProbeResult, composite_problems, format_table, probe_backends

    typer.echo(f"probing {len(config.backends)} backends...")

    def progress(result: ProbeResult) -> None:
        typer.echo(f"  {result.backend}: {'ok' if result.ok else 'FAILED'}")

    store_problem = _probe_store(config) if config.session.store != "memory" else None
    if config.session.store != "memory":
        typer.echo(f"  store {redact_url(config.session.store)}: "
                   f"{'ok' if store_problem is None else 'FAILED: ' + store_problem}")
    results = anyio.run(probe_backends, config, progress)
    for line in format_table(results):
        typer.echo(line)
    workflow_problems = composite_problems(config, results)
    for problem in workflow_problems:
        typer.echo(f"  {problem}", err=True)
    if store_problem is not None or not all(r.ok for r in results) or workflow_problems:
        raise typer.Exit(EXIT_FAILURE)


def _probe_store(config: VmcpConfig) -> str | None:
    """Why the session store cannot be used right now, or None if it answers a PING."""
    from vmcp.errors import StoreError
    from vmcp.store import open_store

    session = config.session

    async def ping() -> None:
        store = open_store(session.store, key_prefix=session.key_prefix,
                           ttl_seconds=session.ttl_seconds,
                           timeout_seconds=session.store_timeout_seconds)
        async with store:
            await store.ping()

    try:
        anyio.run(ping)
    except StoreError as exc:
        return str(exc) or type(exc).__name__
    return None


def _load_or_exit(path: Path) -> VmcpConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        _exit_with_problems(exc)


def _exit_with_problems(exc: ConfigError) -> NoReturn:
    problems = str(exc).splitlines()
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    typer.echo(f"vmcp: invalid configuration ({count}):", err=True)
    for problem in problems:
        typer.echo(f"  {problem}", err=True)
    raise typer.Exit(EXIT_CONFIG_ERROR)


def _auth_summary(config: VmcpConfig) -> str:
    incoming = config.auth.incoming
    if incoming.type == "oidc":
        issuers = [incoming.issuer, *(extra.issuer for extra in incoming.extra_issuers)]
        return f"oidc, issuers {', '.join(str(i) for i in issuers)}"
    if incoming.type == "static":
        return f"static, {len(incoming.tokens)} tokens"
    return "anonymous (development only)"


def _authz_summary(config: VmcpConfig) -> str:
    authz = config.auth.authz
    if authz is None:
        return "none (every caller may use everything)"
    from vmcp.authz import load_bundle

    try:
        bundle = load_bundle(authz)
    except ConfigError:
        return "cedar (invalid)"
    return f"cedar, {bundle.count} policies from {authz.policies_file}, sha256 {bundle.sha256[:12]}"


def _summary(config: VmcpConfig) -> list[str]:
    server, session = config.server, config.session
    lines = [
        f"listen:      http://{server.host}:{server.port}{server.path}",
        f"session:     {session.store_kind} store ({redact_url(session.store)}), "
        f"ttl {session.ttl_seconds:g}s",
        f"aggregation: conflict {config.aggregation.conflict}, "
        f"prefix_format {config.aggregation.prefix_format!r}",
        f"auth:        {_auth_summary(config)}",
        f"authz:       {_authz_summary(config)}",
        f"backends:    {len(config.backends)}",
    ]
    width = max((len(b.name) for b in config.backends), default=0)
    lines += [
        f"  {b.name:<{width}}  {b.transport:<15}  "
        f"{redact_url(b.url) if b.url else shlex.join([b.command or '', *b.args])}"
        for b in config.backends
    ]
    lines += [f"composite:   {t.name} ({len(t.steps)} steps, timeout {t.timeout_seconds:g}s)"
              for t in config.composite_tools]
    return lines


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    config_file: Annotated[
        Path, typer.Option("--config", "-c", help="The YAML configuration file.", metavar="FILE")
    ],
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Override server.port.")
    ] = None,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = "auto",
    workers: Annotated[int, typer.Option(
        min=1, help="Replica processes on the same port (a shared store when more than "
                    "one); SIGHUP restarts them one at a time.")] = 1,
) -> None:
    """Serve the gateway described by the configuration file until interrupted."""
    config = _load_or_exit(config_file)
    listen = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    if listen:
        try:
            config = with_overrides(config, {"server": listen}, source="command line")
        except ConfigError as exc:
            _exit_with_problems(exc)
    if log_format not in ("json", "console", "auto"):
        typer.echo("vmcp: --log-format must be json, console or auto", err=True)
        raise typer.Exit(EXIT_CONFIG_ERROR)
    _run_gateway(_load_server(), config, log_level, log_format, config_file, workers)


class _Serve(Protocol):
    def __call__(self, config: VmcpConfig, *, log_level: str = ..., log_format: str = ...,
                 config_path: Path | None = ..., workers: int = ...) -> None: ...


def _load_server() -> _Serve:
    """``vmcp.server.serving.serve``, imported only when needed so that ``check-config`` and
    configuration errors never pay for (or fail on) the server's imports."""
    try:
        from vmcp.server.serving import serve as run
    except ImportError as exc:
        typer.echo(f"vmcp: cannot load the server: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    return run


def _run_gateway(run: _Serve, config: VmcpConfig, log_level: LogLevel,
                 log_format: str = "auto", config_path: Path | None = None,
                 workers: int = 1) -> None:
    try:
        run(config, log_level=log_level.value, log_format=log_format,
            config_path=config_path, workers=workers)
    except ConfigError as exc:  # what only start-up can check, e.g. a token_env variable
        _exit_with_problems(exc)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


# --------------------------------------------------------------------------- demo


def _repo_root() -> Path:
    """The source checkout holding ``examples/`` (``src/vmcp/cli.py`` is two levels down)."""
    return Path(__file__).resolve().parents[2]


@app.command()
def bridge(
    command: Annotated[list[str], typer.Argument(
        help="The stdio MCP server's command and its arguments, after `--`.",
        metavar="-- COMMAND [ARGS]...")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    initialize_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds the stdio server has to answer initialize.")] = 30.0,
    env: Annotated[list[str] | None, typer.Option(
        "--env", metavar="KEY=VALUE",
        help="Set an environment variable for the stdio server (repeatable).")] = None,
    cwd: Annotated[Path | None, typer.Option(
        file_okay=False, exists=True, help="The stdio server's working directory.")] = None,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = "auto",
) -> None:
    """Serve one stdio MCP server (a command) over Streamable HTTP, restarting it if it
    stops: run it beside the gateway and configure it there as an ordinary backend."""
    if log_format not in ("json", "console", "auto"):
        typer.echo("vmcp: --log-format must be json, console or auto", err=True)
        raise typer.Exit(EXIT_CONFIG_ERROR)
    variables: dict[str, str] = {}
    for item in env or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"vmcp: --env needs KEY=VALUE, got {item!r}", err=True)
            raise typer.Exit(EXIT_CONFIG_ERROR)
        variables[key] = value
    from vmcp.bridge.serve import serve_bridge

    serve_bridge(command, host=host, port=port, log_level=log_level.value,
                 log_format=log_format, initialize_seconds=initialize_timeout,
                 env=variables or None, cwd=str(cwd) if cwd is not None else None)


@app.command()
def demo(
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port for the gateway on 127.0.0.1.")
    ] = 4483,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Logging threshold.")
    ] = LogLevel.info,
) -> None:
    """Start the notes and weather example backends and a gateway in front of them."""
    root = _repo_root()
    if not (root / "examples" / "backends").is_dir():
        typer.echo(
            f"vmcp demo needs a source checkout: {root / 'examples' / 'backends'} not found",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)
    run = _load_server()
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_signal)
    backends: list[DemoBackend] = []
    try:
        for name, backend_port in zip(DEMO_BACKENDS, free_ports(len(DEMO_BACKENDS)), strict=True):
            backends.append(start_backend(root, name, backend_port))
        for backend in backends:
            wait_until_answering(backend, DEMO_READY_TIMEOUT_SECONDS)
        config = VmcpConfig(
            server=ServerConfig(port=port, allowed_origins=_DEMO_ORIGINS),
            session=SessionConfig(store="memory"),
            backends=tuple(BackendConfig(name=b.name, url=b.url) for b in backends),
            composite_tools=_demo_composite_tools(root),
        )
        print_demo_banner(config, backends)
        _run_gateway(run, config, log_level)
    except DemoError as exc:
        typer.echo(f"vmcp demo: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        for backend in backends:
            stop(backend.process)
        signal.signal(signal.SIGTERM, previous_sigterm)


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    # SIGTERM's default action would end the process without running ``finally`` blocks
    # and leave the backends running; as an exception it unwinds like Ctrl-C does.
    raise SystemExit(128 + signum)


def _demo_composite_tools(root: Path) -> tuple[CompositeToolConfig, ...]:
    """The composite tools of examples/vmcp.yaml (if the checkout has it), which the demo
    serves too."""
    import yaml

    example = root / "examples" / "vmcp.yaml"
    if not example.is_file():
        return ()
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    return tuple(CompositeToolConfig.model_validate(tool)
                 for tool in data.get("composite_tools") or ())


