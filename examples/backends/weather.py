"""A weather backend with made-up but repeatable forecasts.

Forecasts are derived from a hash of the city and day, so tests can assert on
exact values without a network. Besides plain tools it carries the traffic a
gateway has to relay back to the client: progress notifications
(``slow_count``) and a sampling request (``ask_llm``). Its ``search`` tool
deliberately shares its name with the notes backend's.

Run it with ``python -m examples.backends.weather --port 9002``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer, Resolve, Sample, UserMessage
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CreateMessageResult, SamplingMessage, TextContent
from pydantic import BaseModel, Field

from examples.backends import run_backend

DEFAULT_PORT = 9002
MAX_FORECAST_DAYS = 14
MAX_COUNT = 100
# Long enough that a client sees the notifications arrive one by one, short
# enough that a test calling slow_count(5) stays well under a second.
STEP_SECONDS = 0.05

CITIES: tuple[str, ...] = (
    "Amsterdam",
    "Berlin",
    "Buenos Aires",
    "Cairo",
    "Lisbon",
    "Nairobi",
    "Oslo",
    "Paris",
    "Seoul",
    "Sydney",
    "Tokyo",
    "Toronto",
)
CONDITIONS: tuple[str, ...] = (
    "sunny",
    "partly cloudy",
    "cloudy",
    "rain",
    "showers",
    "windy",
    "snow",
    "fog",
)


class DayForecast(BaseModel):
    day: int = Field(description="0 is today")
    condition: str
    high_c: int
    low_c: int
    precipitation_pct: int


class Forecast(BaseModel):
    city: str
    days: list[DayForecast]


def _known_city(city: str) -> str:
    for known in CITIES:
        if known.casefold() == city.strip().casefold():
            return known
    raise ToolError(f"unknown city {city!r}; try one of: {', '.join(CITIES)}")


def forecast_for(city: str, days: int) -> Forecast:
    """The same city and day always give the same weather."""
    name = _known_city(city)
    if not 1 <= days <= MAX_FORECAST_DAYS:
        raise ToolError(f"days must be between 1 and {MAX_FORECAST_DAYS}")
    out: list[DayForecast] = []
    for day in range(days):
        seed = hashlib.sha256(f"{name.casefold()}:{day}".encode()).digest()
        low = seed[1] % 25 - 5
        out.append(
            DayForecast(
                day=day,
                condition=CONDITIONS[seed[0] % len(CONDITIONS)],
                high_c=low + 3 + seed[2] % 10,
                low_c=low,
                precipitation_pct=seed[3] % 101,
            )
        )
    return Forecast(city=name, days=out)


def _sampling_request(question: str) -> Sample:
    # A resolver rather than a direct session call: the SDK then sends
    # sampling/createMessage mid-call to handshake-era clients and asks for it
    # through an input-required result on 2026-07-28 sessions, so the tool
    # works whichever protocol revision the caller negotiated.
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=200,
        system_prompt="You answer questions about the weather briefly.",
    )


def create_server() -> MCPServer:
    server: MCPServer = MCPServer(
        "weather",
        title="Weather",
        instructions="Deterministic fake forecasts for a fixed list of cities (see weather://cities).",
        version="0.1.0",
        log_level="WARNING",
    )

    @server.tool()
    def forecast(city: str, days: int = 3) -> Forecast:
        """Forecast for ``city`` over the next ``days`` days (1-14)."""
        return forecast_for(city, days)

    @server.tool()
    def search(query: str) -> list[str]:
        """Cities whose name contains ``query``."""
        needle = query.strip().casefold()
        return [city for city in CITIES if needle in city.casefold()]

    @server.tool()
    async def slow_count(n: int, ctx: Context) -> str:
        """Count to ``n`` slowly, reporting progress after every step."""
        if not 1 <= n <= MAX_COUNT:
            raise ToolError(f"n must be between 1 and {MAX_COUNT}")
        for step in range(1, n + 1):
            await anyio.sleep(STEP_SECONDS)
            await ctx.report_progress(step, n, f"counted {step} of {n}")
        return f"counted to {n}"

    @server.tool()
    async def ask_llm(
        question: str, answer: Annotated[CreateMessageResult, Resolve(_sampling_request)]
    ) -> str:
        """Ask the client's model ``question`` (a sampling request) and return its answer."""
        if not isinstance(answer.content, TextContent):
            raise ToolError(f"the model answered with {answer.content.type} content, not text")
        return answer.content.text

    @server.resource("weather://cities", name="cities", mime_type="text/plain")
    def cities() -> str:
        """Every city the forecast tool knows, one per line."""
        return "\n".join(CITIES)

    @server.prompt()
    def weather_report(city: str) -> list[UserMessage]:
        """Ask the model for a short weather report for ``city``."""
        try:
            outlook = forecast_for(city, 3)
        except ToolError as exc:
            # A protocol error names the bad argument to the caller; any other
            # exception from a prompt is logged by the SDK as a server crash.
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        lines = "\n".join(
            f"- day {d.day}: {d.condition}, {d.low_c}..{d.high_c} °C, {d.precipitation_pct}% rain"
            for d in outlook.days
        )
        return [
            UserMessage(f"Write a friendly three-day weather report for {outlook.city}:\n{lines}")
        ]

    return server


def main(argv: Sequence[str] | None = None) -> None:
    run_backend(
        create_server,
        description="Deterministic fake weather MCP backend.",
        default_port=DEFAULT_PORT,
        argv=argv,
    )


if __name__ == "__main__":
    main()
