"""docs/configuration.md is what the configuration models say, and says it of every key."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from vmcp import __version__, cli
from vmcp.config import VmcpConfig, unmatched_env_warnings
from vmcp.config.reference import keys, render_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/configuration.md is out of date: run "
        "`vmcp config-reference --output docs/configuration.md`")


def test_every_key_has_a_meaning_a_type_and_a_default() -> None:
    leaves = [key for section, field in VmcpConfig.model_fields.items()
              for key in keys(section, field)]
    assert len(leaves) > 60
    undocumented = [key.path for key in leaves if not key.meaning]
    assert undocumented == []
    assert all(key.type and key.default for key in leaves)
    port = next(key for key in leaves if key.path == "server.port")
    assert (port.type, port.default, port.environment) == (
        "integer", "`4483`", "`VMCP_SERVER__PORT`")
    assert any(key.path == "aggregation.tools.<name>.overrides.<name>.name" for key in leaves)
    assert any(key.path == "backends[].auth.value_env" and key.environment == ""
               for key in leaves)


def test_config_reference_command_writes_the_page(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    result = CliRunner().invoke(cli.app, ["config-reference", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == render_reference()


def test_version_option() -> None:
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vmcp {__version__}"


def test_an_override_with_one_underscore_is_warned_about() -> None:
    warnings = unmatched_env_warnings({"VMCP_SERVER_PORT": "8080", "VMCP_SERVER__HOST": "x",
                                       "VMCP_UNRELATED": "1", "VMCP_BACKENDS": "[]",
                                       "HOME": "/root"})
    assert warnings == ["VMCP_SERVER_PORT is ignored: overrides are named "
                        "VMCP_<SECTION>__<KEY>, e.g. VMCP_SERVER__PORT for server.port"]
