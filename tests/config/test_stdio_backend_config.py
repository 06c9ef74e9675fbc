"""``transport: stdio`` in the backends section: what is accepted, and the command made of it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vmcp.backend import target_of
from vmcp.backend.stdio import stdio_command
from vmcp.config import BackendConfig


def backend(**fields: Any) -> BackendConfig:
    return BackendConfig.model_validate({"name": "files", **fields})


def test_a_stdio_backend_needs_a_command_and_takes_no_url() -> None:
    with pytest.raises(ValidationError, match="needs a command"):
        backend(transport="stdio")
    with pytest.raises(ValidationError, match="has a command, not a url"):
        backend(transport="stdio", command="npx", url="http://127.0.0.1:1/mcp")
    with pytest.raises(ValidationError, match="no headers or auth"):
        backend(transport="stdio", command="npx", headers={"X-Key": "1"})


def test_an_http_backend_still_needs_a_url_and_takes_no_command() -> None:
    with pytest.raises(ValidationError, match="Field required"):
        backend()
    with pytest.raises(ValidationError, match="for transport: stdio only"):
        backend(url="http://127.0.0.1:1/mcp", command="npx")


def test_environment_names_are_checked() -> None:
    with pytest.raises(ValidationError, match="not environment variable names: 1BAD"):
        backend(transport="stdio", command="npx", env={"1BAD": "x"})
    with pytest.raises(ValidationError, match="not an environment variable name"):
        backend(transport="stdio", command="npx", env={"KEY": {"value_env": "no-dash"}})


def test_the_command_takes_literal_values_and_the_gateways_variables() -> None:
    config = backend(transport="stdio", command="uvx", args=["server", "--fast"],
                     env={"MODE": "fast", "KEY": {"value_env": "GATEWAY_KEY"},
                          "GONE": {"value_env": "UNSET_ONE"}},
                     cwd="/srv", connect_timeout_seconds=3)

    command = stdio_command(config, {"GATEWAY_KEY": "secret"})

    assert command.argv() == ["uvx", "server", "--fast"]
    assert dict(command.env) == {"MODE": "fast", "KEY": "secret"}
    assert command.missing_env == ("UNSET_ONE",)
    assert command.cwd == "/srv"
    assert command.initialize_seconds == 3
    target = target_of(config)
    assert target.transport == "stdio"
    assert target.stdio is not None
    assert target.stdio.command == "uvx"
