"""Whether the gateway records spans follows the tracer provider, however it was installed:
in code (``configure``, an embedding application) or by the OpenTelemetry variable that
names one. Each case runs in a fresh interpreter: the API's provider is set once per
process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from vmcp import tracing
print(tracing.recording())
if {install}:
    trace.set_tracer_provider(TracerProvider())
    print(tracing.recording())
"""


def run(install: bool, environment: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | environment
    completed = subprocess.run([sys.executable, "-c", CHECK.format(install=install)],
                               capture_output=True, text=True, env=env, timeout=60, check=True)
    return completed.stdout.split()


@pytest.mark.parametrize(("install", "environment", "expected"), [
    (False, {}, ["False"]),
    (True, {}, ["False", "True"]),
    # The variable names an SDK provider: the API installs it on the first lookup.
    (False, {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}, ["True"]),
], ids=["none", "installed-in-code", "named-by-the-environment"])
def test_spans_are_recorded_exactly_when_a_tracer_provider_is_installed(
        install: bool, environment: dict[str, str], expected: list[str]) -> None:
    assert run(install, environment) == expected
