"""The ``vmcp`` command line: configuration errors, serve's overrides and the demo's lifecycle."""

from __future__ import annotations

import http.client
import os
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmcp import cli
from vmcp.config import VmcpConfig, load_config
from vmcp.errors import ConfigError

GOOD = """\
session:
  store: redis://:s3cret@127.0.0.1:6379/0
backends:
  - name: notes
    url: http://127.0.0.1:9001/mcp
  - name: weather
    url: http://127.0.0.1:9002/mcp
    transport: sse
"""

BAD = """\
server:
  port: 99999
  colour: blue
session:
  ttl_seconds: -5
backends:
  - name: Notes
    url: ftp://example.com
  - name: weather
aggregation:
  priority_order: [ghost]
"""


@pytest.fixture(autouse=True)
def _no_vmcp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("VMCP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vmcp.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


ServeCalls = list[VmcpConfig]


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ServeCalls]:
    """Install a stand-in ``vmcp.server.serving`` whose ``serve`` records its config (and, in
    the module's ``levels``, the log level it was given)."""

    def install(action: Callable[[VmcpConfig], None] | None = None) -> ServeCalls:
        calls: ServeCalls = []
        module = types.ModuleType("vmcp.server.serving")
        module.levels = levels = []  # type: ignore[attr-defined]

        def serve(config: VmcpConfig, *, log_level: str = "info",
                  log_format: str = "auto", config_path: Path | None = None,
                  workers: int = 1) -> None:
            calls.append(config)
            levels.append(log_level)
            if action is not None:
                action(config)

        module.serve = serve  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "vmcp.server.serving", module)
        return calls

    return install


# --------------------------------------------------------------------------- check-config


def test_check_config_summarises_a_good_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["check-config", str(write(tmp_path, GOOD))])

    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.stdout
    assert "redis store" in result.stdout
    assert "notes" in result.stdout
    assert "weather" in result.stdout
    assert "backends:    2" in result.stdout
    assert "s3cret" not in result.stdout


def test_check_config_lists_every_problem_and_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    expected = str(caught.value).splitlines()

    result = runner.invoke(cli.app, ["check-config", str(path)])

    assert result.exit_code == 2
    assert len(expected) == 7
    for problem in expected:
        assert problem in result.stderr
    for loc in (
        "server.port",
        "server.colour",
        "session.ttl_seconds",
        "backends[0].name",
        "backends[0].url",
        "backends[1].url",
        "aggregation.priority_order[0]",
    ):
        assert f"  {loc}: " in result.stderr
    assert "7 problems" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_check_config_checks_the_policies_with_file_and_line(runner: CliRunner,
                                                            tmp_path: Path) -> None:
    policies = tmp_path / "policies.cedar"
    policies.write_text('permit(principal, action, resource in Backend::"notes");\n'
                        'permit(principal, action == Action::"call_tools", resource);\n')
    config = write(tmp_path, f"""
        backends: [{{name: notes, url: "http://127.0.0.1:9001/mcp"}}]
        auth: {{authz: {{policies_file: "{policies}"}}}}
        """)

    refused = runner.invoke(cli.app, ["check-config", str(config)])

    assert refused.exit_code == 2
    assert f'{policies}:2: unrecognized action `Action::"call_tools"`' in refused.stderr
    policies.write_text('permit(principal, action, resource in Backend::"notes");\n')
    accepted = runner.invoke(cli.app, ["check-config", str(config)])
    assert accepted.exit_code == 0, accepted.output
    assert f"authz:       cedar, 1 policies from {policies}" in accepted.stdout


def test_check_config_reports_yaml_syntax_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["check-config", str(write(tmp_path, "a: [\n"))])

    assert result.exit_code == 2
    assert "YAML syntax error" in result.stderr
    assert "line 2" in result.stderr
    assert "Traceback" not in result.output


def test_check_config_reports_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["check-config", str(tmp_path / "absent.yaml")])

    assert result.exit_code == 2
    assert "cannot read the configuration file" in result.stderr
    assert "Traceback" not in result.output


def test_check_config_applies_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)

    result = runner.invoke(
        cli.app, ["check-config", str(path)], env={"VMCP_SESSION__TTL_SECONDS": "never"}
    )

    assert result.exit_code == 2
    assert "session.ttl_seconds: " in result.stderr
    assert "(from VMCP_SESSION__TTL_SECONDS)" in result.stderr


# --------------------------------------------------------------------------- serve


def test_check_config_refuses_what_serve_refuses(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        backends:
          - name: notes
            url: http://127.0.0.1:9001/mcp
            auth: {type: header, name: X-Api-Key, value_env: VMCP_TEST_UNSET_KEY}
        auth:
          incoming:
            type: static
            tokens: [{token_env: VMCP_TEST_UNSET_TOKEN, issuer: local, subject: ci}]
        """)

    result = runner.invoke(cli.app, ["check-config", str(path)])

    assert result.exit_code == cli.EXIT_CONFIG_ERROR
    assert "configuration OK" not in result.stdout
    assert "backends[0].auth.value_env: environment variable VMCP_TEST_UNSET_KEY" in (
        result.stderr)
    assert "auth.incoming.tokens[0].token_env" in result.stderr


def test_check_config_warns_about_an_empty_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["check-config", str(write(tmp_path, "# nothing yet\n"))])

    assert result.exit_code == 0, result.output
    assert "is empty: every key takes its default" in result.stderr
    assert "no backends configured" in result.stderr


def test_check_config_probe_fails_on_an_unreachable_store(
        runner: CliRunner, tmp_path: Path) -> None:
    from tests.support.redis_server import free_port

    path = write(tmp_path, f"session: {{store: 'redis://127.0.0.1:{free_port()}/0', "
                           "store_timeout_seconds: 1}\n")

    result = runner.invoke(cli.app, ["check-config", str(path), "--probe"])

    assert result.exit_code == cli.EXIT_FAILURE, result.output
    assert "store redis://127.0.0.1:" in result.stdout
    assert "FAILED" in result.stdout


def test_serve_refuses_a_bad_config_before_loading_the_server(
    runner: CliRunner, tmp_path: Path, fake_server: Callable[..., ServeCalls]
) -> None:
    calls = fake_server()

    result = runner.invoke(cli.app, ["serve", "--config", str(write(tmp_path, BAD))])

    assert result.exit_code == 2
    assert "backends[0].url: " in result.stderr
    assert "Traceback" not in result.output
    assert calls == []


def test_serve_passes_the_config_with_host_and_port_overrides(
    runner: CliRunner, tmp_path: Path, fake_server: Callable[..., ServeCalls]
) -> None:
    calls = fake_server()

    result = runner.invoke(
        cli.app,
        [
            "serve",
            "--config",
            str(write(tmp_path, GOOD)),
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--log-level",
            "DEBUG",
        ],
    )

    assert result.exit_code == 0, result.output
    assert sys.modules["vmcp.server.serving"].levels == ["debug"]  # type: ignore[attr-defined]
    [config] = calls
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 5000
    assert [b.name for b in config.backends] == ["notes", "weather"]


def test_serve_without_overrides_keeps_the_file(
    runner: CliRunner, tmp_path: Path, fake_server: Callable[..., ServeCalls]
) -> None:
    calls = fake_server()

    result = runner.invoke(cli.app, ["serve", "-c", str(write(tmp_path, GOOD))])

    assert result.exit_code == 0, result.output
    assert calls[0].server.port == 4483
    assert sys.modules["vmcp.server.serving"].levels == ["info"]  # type: ignore[attr-defined]


def test_serve_reports_a_bad_host_override(
    runner: CliRunner, tmp_path: Path, fake_server: Callable[..., ServeCalls]
) -> None:
    calls = fake_server()

    result = runner.invoke(
        cli.app, ["serve", "--config", str(write(tmp_path, GOOD)), "--host", "not a host"]
    )

    assert result.exit_code == 2
    assert "server.host: " in result.stderr
    assert "(from command line)" in result.stderr
    assert calls == []


def test_serve_rejects_an_out_of_range_port(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli.app, ["serve", "--config", str(write(tmp_path, GOOD)), "--port", "70000"]
    )

    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_serve_says_so_when_the_server_cannot_be_imported(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vmcp.server.serving", None)

    result = runner.invoke(cli.app, ["serve", "--config", str(write(tmp_path, GOOD))])

    assert result.exit_code == 1
    assert "cannot load the server" in result.stderr


def test_serve_exits_130_on_ctrl_c(
    runner: CliRunner, tmp_path: Path, fake_server: Callable[..., ServeCalls]
) -> None:
    def interrupt(config: VmcpConfig) -> None:
        raise KeyboardInterrupt

    fake_server(interrupt)

    result = runner.invoke(cli.app, ["serve", "--config", str(write(tmp_path, GOOD))])

    assert result.exit_code == 130
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- demo

FAKE_BACKEND = """\
import argparse
import http.server

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
args = parser.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(405)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
"""


def fake_checkout(root: Path, backends: dict[str, str]) -> Path:
    package = root / "examples" / "backends"
    package.mkdir(parents=True)
    for name, source in backends.items():
        (package / f"{name}.py").write_text(source, encoding="utf-8")
    return root


def answers(url: str) -> bool:
    port = int(url.split(":")[2].split("/")[0])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/mcp")
        connection.getresponse().close()
    except OSError:
        return False
    finally:
        connection.close()
    return True


def test_demo_starts_the_backends_serves_and_stops_them(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: Callable[..., ServeCalls],
) -> None:
    root = fake_checkout(tmp_path, {"notes": FAKE_BACKEND, "weather": FAKE_BACKEND})
    monkeypatch.setattr(cli, "_repo_root", lambda: root)
    seen_answering: list[bool] = []
    calls = fake_server(
        lambda config: seen_answering.extend(answers(b.url) for b in config.backends)
    )

    result = runner.invoke(cli.app, ["demo", "--port", "4999"])

    assert result.exit_code == 0, result.output
    [config] = calls
    assert [b.name for b in config.backends] == ["notes", "weather"]
    assert config.session.store_kind == "memory"
    assert config.server.port == 4999
    assert seen_answering == [True, True]
    assert "http://127.0.0.1:4999/mcp" in result.stdout
    assert "curl" in result.stdout
    assert '"method":"initialize"' in result.stdout
    assert not any(answers(b.url) for b in config.backends)  # stopped on the way out


def test_demo_stops_the_backends_when_interrupted(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: Callable[..., ServeCalls],
) -> None:
    root = fake_checkout(tmp_path, {"notes": FAKE_BACKEND, "weather": FAKE_BACKEND})
    monkeypatch.setattr(cli, "_repo_root", lambda: root)

    def interrupt(config: VmcpConfig) -> None:
        raise KeyboardInterrupt

    calls = fake_server(interrupt)

    result = runner.invoke(cli.app, ["demo"])

    assert result.exit_code == 130
    assert not any(answers(b.url) for b in calls[0].backends)


def test_demo_reports_a_backend_that_dies_at_start_up(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: Callable[..., ServeCalls],
) -> None:
    crashing = "raise SystemExit(3)\n"
    root = fake_checkout(tmp_path, {"notes": FAKE_BACKEND, "weather": crashing})
    monkeypatch.setattr(cli, "_repo_root", lambda: root)
    calls = fake_server()

    result = runner.invoke(cli.app, ["demo"])

    assert result.exit_code == 1
    assert "backend 'weather' exited with status 3 at start-up" in result.stderr
    assert "Traceback" not in result.output
    assert calls == []


def test_demo_needs_the_examples(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: Callable[..., ServeCalls],
) -> None:
    monkeypatch.setattr(cli, "_repo_root", lambda: tmp_path)
    calls = fake_server()

    result = runner.invoke(cli.app, ["demo"])

    assert result.exit_code == 1
    assert "needs a source checkout" in result.stderr
    assert calls == []


def test_repo_root_holds_the_examples() -> None:
    assert (cli._repo_root() / "examples" / "backends").is_dir()


def test_demo_serves_the_example_composite_tools() -> None:
    tools = cli._demo_composite_tools(cli._repo_root())
    assert [tool.name for tool in tools] == ["city_brief"]


def test_check_config_lists_the_example_composite_tool(runner: CliRunner) -> None:
    example = cli._repo_root() / "examples" / "vmcp.yaml"
    result = runner.invoke(cli.app, ["check-config", str(example)])
    assert result.exit_code == 0, result.output
    assert "composite:   city_brief (3 steps, timeout 30s)" in result.stdout


STDIO_BACKEND = """\
    backends:
      - name: files
        transport: stdio
        command: npx
        args: [-y, some-mcp-server]
        env: {API_KEY: {value_env: VMCP_TEST_UNSET_KEY}, MODE: fast}
    """


def test_check_config_warns_that_a_stdio_backend_cannot_follow_sessions_across_replicas(
        runner: CliRunner, tmp_path: Path) -> None:
    shared = write(tmp_path, STDIO_BACKEND + "session: {store: 'redis://127.0.0.1:6379/0'}\n")

    result = runner.invoke(cli.app, ["check-config", str(shared)])

    assert result.exit_code == 0, result.output
    assert "stdio backends (files) with a shared store" in result.stderr
    assert "npx -y some-mcp-server" in result.stdout
    assert "VMCP_TEST_UNSET_KEY is not set" in result.stderr


def test_a_stdio_backend_with_the_memory_store_is_not_warned_about(
        runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCP_TEST_UNSET_KEY", "x")
    result = runner.invoke(cli.app, ["check-config", str(write(tmp_path, STDIO_BACKEND))])

    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, result.stderr


def test_bridge_refuses_an_env_option_without_a_value(runner: CliRunner) -> None:
    result = runner.invoke(cli.app, ["bridge", "--env", "NOVALUE", "--", "true"])

    assert result.exit_code == cli.EXIT_CONFIG_ERROR, result.output
    assert "--env needs KEY=VALUE, got 'NOVALUE'" in result.stderr
