"""A backend that serves the fixtures the official MCP conformance suite asks for.

The suite (``@modelcontextprotocol/conformance``, server mode) expects a server
with fixed names: ``test_simple_text``, ``test_tool_with_progress``,
``test://static-text``, ``test_simple_prompt`` and so on. Run directly, this
backend passes every check of ``--suite all`` at ``--spec-version 2025-11-25``
and at ``2026-07-28`` (the SDK serves the stateless revision on the same
endpoint, whatever ``--stateless`` says); put behind the gateway, the same runs
measure what the gateway changes on the way.

``test_trigger_tool_change`` and ``test_trigger_prompt_change`` change the tool and
prompt lists and announce it on ``subscriptions/listen`` streams (2026-07-28), which is
what the suite's subscription checks watch for.

The ``test_input_required_result_*`` tools and prompt, ``test_streaming_elicitation``,
``test_missing_capability``, ``test_logging_tool`` and ``test_x_mcp_header`` exist for
the 2026-07-28 scenarios: they answer with ``input_required`` results (the
revision's replacement for server-to-client requests), refuse a client that did
not declare a capability, and declare an ``x-mcp-header`` parameter.

It is written against the SDK's low-level ``Server`` rather than ``MCPServer``
because several fixtures are about the exact wire shape (a raw JSON Schema
2020-12 input schema, elicitation schemas ``MCPServer`` would not generate,
``logging/setLevel``, resource subscriptions), which the low-level API states
directly.

Run it with ``python -m examples.backends.conformance --port 9003``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import struct
import wave
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    BlobResourceContents,
    CallToolRequestParams,
    CallToolResult,
    ClientCapabilities,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    ContentBlock,
    CreateMessageRequest,
    CreateMessageRequestParams,
    ElicitationCapability,
    ElicitRequest,
    ElicitRequestFormParams,
    EmbeddedResource,
    EmptyResult,
    GetPromptRequestParams,
    GetPromptResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListRootsRequest,
    ListToolsResult,
    LoggingLevel,
    PaginatedRequestParams,
    Prompt,
    PromptArgument,
    PromptMessage,
    PromptReference,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    RootsCapability,
    SamplingCapability,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TextContent,
    TextResourceContents,
    Tool,
    UnsubscribeRequestParams,
)

from examples.backends import run_backend

DEFAULT_PORT = 9003
SERVER_NAME = "vmcp-conformance-fixture"

# Pauses the suite's descriptions ask for between notifications, so a client
# sees them arrive separately rather than in one burst with the result.
NOTIFICATION_GAP_SECONDS = 0.05
# How long test_reconnection keeps working after dropping its SSE stream,
# which gives the client time to reconnect with Last-Event-ID.
RECONNECT_GRACE_SECONDS = 0.2
# Tells clients to reconnect quickly after the server drops an SSE stream.
SSE_RETRY_MS = 100
EVENT_HISTORY = 2048
# Sessions end without telling the handlers, so per-session settings are kept
# for the most recent sessions only.
TRACKED_SESSIONS = 1024

LOG_LEVELS: tuple[LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

Ctx = ServerRequestContext[Any, Any]


def _png_pixel(red: int, green: int, blue: int) -> bytes:
    """A 1x1 RGB PNG, built here so the fixture carries no opaque blobs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, red, green, blue]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _wav_silence(milliseconds: int = 10, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * (rate * milliseconds // 1000))
    return buffer.getvalue()


PNG_BYTES = _png_pixel(220, 30, 30)
PNG_B64 = base64.b64encode(PNG_BYTES).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()

STATIC_TEXT = "This is the content of the static text resource."
WATCHED_URI = "test://watched-resource"
URI_ARGUMENT: dict[str, Any] = {
    "type": "object",
    "properties": {"uri": {"type": "string"}},
    "required": ["uri"],
}
TEMPLATE_URI = "test://template/{id}/data"
TEMPLATE_PREFIX, TEMPLATE_SUFFIX = "test://template/", "/data"

# The tool the json-schema-2020-12 scenario inspects: every keyword here must
# reach the client unchanged, so the schema is written out rather than derived.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Your name", "default": "John Doe"},
        "age": {"type": "integer", "description": "Your age", "default": 30},
        "score": {"type": "number", "description": "A score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "Account status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verified account", "default": True},
    },
}

SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}

CONTACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}

COMPLETION_WORDS: tuple[str, ...] = ("paris", "park", "party", "test", "testing", "tester")

NAME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}
CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
COLOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"color": {"type": "string"}},
    "required": ["color"],
}
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"type": "string"}},
    "required": ["context"],
}
# The http-custom-header-server-validation scenario looks for a tool with a parameter
# the client mirrors into an ``Mcp-Param-Region`` header.
X_MCP_HEADER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {
            "type": "string",
            "description": "Mirrored into the Mcp-Param-Region header",
            "x-mcp-header": "Region",
        }
    },
}
REQUEST_STATE_NONCE = "request-state-nonce"


class BoundedEventStore(EventStore):
    """Keeps the latest SSE events in memory so a dropped stream can be resumed.

    Bounded because the fixture may run for a long time behind a gateway; a
    client resuming from an event that has aged out just gets nothing replayed.
    """

    def __init__(self, capacity: int = EVENT_HISTORY) -> None:
        self._events: deque[tuple[int, StreamId, JSONRPCMessage | None]] = deque(maxlen=capacity)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = next(self._ids)
        self._events.append((event_id, stream_id, message))
        return str(event_id)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        if not last_event_id.isdecimal():
            return None
        after = int(last_event_id)
        stream = next((sid for eid, sid, _ in self._events if eid == after), None)
        if stream is None:
            return None
        for event_id, stream_id, message in list(self._events):
            if stream_id == stream and event_id > after and message is not None:
                await send_callback(EventMessage(message, str(event_id)))
        return stream


class _CountingListen(ListenHandler):
    """Serves listen streams and counts, per resource URI, the open streams subscribed to
    it (what a test reads to see that a gateway unsubscribed when its last listener went)."""

    def __init__(self, bus: InMemorySubscriptionBus) -> None:
        super().__init__(bus)
        self._open: list[frozenset[str]] = []

    def subscribers(self, uri: str) -> int:
        return sum(uri in uris for uris in self._open)

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        uris = frozenset(params.notifications.resource_subscriptions or ())
        self._open.append(uris)
        try:
            return await super().__call__(ctx, params)
        finally:
            self._open.remove(uris)


def _text(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)])


def _tool_error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], is_error=True)


_V = TypeVar("_V")


def _remember(table: dict[str, _V], key: str, value: _V) -> None:
    """Insert as newest; sessions end without notice, so nothing else ever evicts old entries."""
    table.pop(key, None)
    table[key] = value
    while len(table) > TRACKED_SESSIONS:
        del table[next(iter(table))]


ToolHandler = Callable[[Ctx, Mapping[str, Any]], Awaitable[CallToolResult]]
# A tool that may answer ``input_required`` and reads the answers of an earlier round.
RoundsHandler = Callable[
    [Ctx, CallToolRequestParams], Awaitable[CallToolResult | InputRequiredResult]
]


@dataclass(frozen=True)
class _ToolEntry:
    tool: Tool
    handler: ToolHandler | None = None
    rounds: RoundsHandler | None = None


def _elicit_request(message: str, schema: dict[str, Any]) -> ElicitRequest:
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sampling_request(text: str, max_tokens: int) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=TextContent(text=text))],
            max_tokens=max_tokens,
        )
    )


def _answers(params: CallToolRequestParams | GetPromptRequestParams) -> dict[str, dict[str, Any]]:
    """The client's answers of an ``input_required`` round, as wire dicts by key."""
    return {
        key: answer.model_dump(by_alias=True, mode="json", exclude_none=True)
        for key, answer in (params.input_responses or {}).items()
    }


def _accepted_field(answer: dict[str, Any] | None, name: str) -> Any:
    """A field of an accepted elicitation answer, or None."""
    content = (answer or {}).get("content")
    return content.get(name) if isinstance(content, dict) else None


@dataclass
class ConformanceFixture:
    """The fixture's state: what each client session asked for (log level, subscriptions)."""

    _tools: dict[str, _ToolEntry] = field(default_factory=dict)
    _log_levels: dict[str, LoggingLevel] = field(default_factory=dict)
    _subscriptions: dict[str, set[str]] = field(default_factory=dict)
    _subscribed_sessions: dict[str, Any] = field(default_factory=dict)
    _changes: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    _dynamic_prompt: bool = False
    _listen: _CountingListen = field(init=False)

    def __post_init__(self) -> None:
        self._listen = _CountingListen(self._changes)
        self._add_tool("test_simple_text", "Returns a simple text response", self._simple_text)
        self._add_tool("test_image_content", "Returns a 1x1 PNG image", self._image_content)
        self._add_tool("test_audio_content", "Returns a short silent WAV clip", self._audio_content)
        self._add_tool(
            "test_embedded_resource", "Returns an embedded text resource", self._embedded_resource
        )
        self._add_tool(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            self._multiple_content,
        )
        self._add_tool(
            "test_tool_with_logging",
            "Sends three info log messages while running",
            self._with_logging,
        )
        self._add_tool(
            "test_tool_with_progress", "Reports progress 0, 50 and 100 of 100", self._with_progress
        )
        self._add_tool(
            "test_error_handling", "Always fails with an error result", self._error_handling
        )
        self._add_tool(
            "test_sampling",
            "Asks the client's model to answer a prompt (sampling)",
            self._sampling,
            {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "The prompt to send to the LLM"}
                },
                "required": ["prompt"],
            },
        )
        self._add_tool(
            "test_elicitation",
            "Asks the user for a username and email (elicitation)",
            self._elicitation,
            {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "The message to show the user"}
                },
                "required": ["message"],
            },
        )
        self._add_tool(
            "test_elicitation_sep1034_defaults",
            "Elicits fields of every primitive type, each with a default (SEP-1034)",
            self._elicitation_defaults,
        )
        self._add_tool(
            "test_elicitation_sep1330_enums",
            "Elicits every enum schema variant (SEP-1330)",
            self._elicitation_enums,
        )
        self._add_tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            self._json_schema_tool,
            JSON_SCHEMA_2020_12,
        )
        self._add_tool(
            "test_reconnection",
            "Drops its SSE stream mid-call and answers after the client resumes (SEP-1699)",
            self._reconnection,
        )
        self._add_tool(
            "test_logging_tool",
            "Sends three info log messages while running (2026-07-28: only when asked for)",
            self._with_logging,
        )
        self._add_tool(
            "test_missing_capability",
            "Refuses a client that did not declare the sampling capability (-32021)",
            self._missing_capability,
        )
        self._add_tool(
            "test_x_mcp_header",
            "Echoes a parameter the client also sends as the Mcp-Param-Region header",
            self._x_mcp_header,
            X_MCP_HEADER_SCHEMA,
        )
        self._add_rounds_tool(
            "test_streaming_elicitation",
            "Asks for a name through an input_required result, never a stream request",
            self._streaming_elicitation,
        )
        self._add_rounds_tool(
            "test_input_required_result_elicitation",
            "Asks for a name (one elicitation input request)",
            self._ir_elicitation,
        )
        self._add_rounds_tool(
            "test_input_required_result_sampling",
            "Asks the client's model a question (one sampling input request)",
            self._ir_sampling,
        )
        self._add_rounds_tool(
            "test_input_required_result_list_roots",
            "Asks for the client's roots (one roots/list input request)",
            self._ir_list_roots,
        )
        self._add_rounds_tool(
            "test_input_required_result_request_state",
            "Asks for a confirmation and checks the echoed requestState",
            self._ir_request_state,
        )
        self._add_rounds_tool(
            "test_input_required_result_multiple_inputs",
            "Asks for an elicitation, a sampling and the roots in one round",
            self._ir_multiple_inputs,
        )
        self._add_rounds_tool(
            "test_input_required_result_multi_round",
            "Asks two questions in two rounds, carrying the first answer in requestState",
            self._ir_multi_round,
        )
        self._add_rounds_tool(
            "test_input_required_result_tampered_state",
            "Answers with a sealed requestState; a tampered echo is refused",
            self._ir_tampered_state,
        )
        self._add_rounds_tool(
            "test_input_required_result_capabilities",
            "Asks only for the inputs the client declared it can give",
            self._ir_capabilities,
        )
        self._add_tool(
            "test_trigger_tool_change",
            "Adds or removes test_dynamic_tool and announces the change",
            self._trigger_tool_change,
        )
        self._add_tool(
            "test_trigger_prompt_change",
            "Adds or removes test_dynamic_prompt and announces the change",
            self._trigger_prompt_change,
        )
        self._add_tool(
            "test_trigger_resource_update",
            "Announces that the resource at `uri` changed, to the listen streams and "
            "sessions subscribed to it; answers how many are subscribed to it",
            self._trigger_resource_update,
            URI_ARGUMENT,
        )
        self._add_tool(
            "test_resource_listeners",
            "How many open listen streams and sessions are subscribed to the resource at `uri`",
            self._resource_listeners,
            URI_ARGUMENT,
        )

    def _add_tool(
        self,
        name: str,
        description: str,
        handler: ToolHandler,
        input_schema: dict[str, Any] | None = None,
    ) -> None:
        tool = Tool(name=name, description=description, input_schema=input_schema or NO_ARGUMENTS)
        self._tools[name] = _ToolEntry(tool, handler=handler)

    def _add_rounds_tool(self, name: str, description: str, handler: RoundsHandler) -> None:
        tool = Tool(name=name, description=description, input_schema=NO_ARGUMENTS)
        self._tools[name] = _ToolEntry(tool, rounds=handler)

    # -- session bookkeeping -------------------------------------------------

    @staticmethod
    def _session_key(ctx: Ctx) -> str:
        """Settings are per client session; requests without a session id share the "" entry."""
        headers = getattr(ctx.request, "headers", None)
        return str(headers.get("mcp-session-id", "")) if headers is not None else ""

    async def _log(self, ctx: Ctx, level: LoggingLevel, message: str) -> None:
        threshold = self._log_levels.get(self._session_key(ctx), "debug")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
        await ctx.session.send_log_message(
            level, message, logger=SERVER_NAME, related_request_id=ctx.request_id
        )

    # -- tools ---------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=[entry.tool for entry in self._tools.values()])

    async def call_tool(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        entry = self._tools.get(params.name)
        if entry is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        if entry.rounds is not None:
            return await entry.rounds(ctx, params)
        assert entry.handler is not None
        return await entry.handler(ctx, params.arguments or {})

    async def _trigger_tool_change(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        if self._tools.pop("test_dynamic_tool", None) is None:
            self._add_tool("test_dynamic_tool", "Appears and disappears", self._simple_text)
        await self._changes.publish(ToolsListChanged())
        return CallToolResult(content=[TextContent(text="tool list changed")])

    async def _trigger_prompt_change(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        self._dynamic_prompt = not self._dynamic_prompt
        await self._changes.publish(PromptsListChanged())
        return CallToolResult(content=[TextContent(text="prompt list changed")])

    async def _trigger_resource_update(
        self, ctx: Ctx, args: Mapping[str, Any]
    ) -> CallToolResult:
        uri = str(args.get("uri"))
        await self._changes.publish(ResourceUpdated(uri=uri))
        for key in self._sessions_subscribed(uri):
            # Outside the subscribing request: on that session's GET stream.
            await self._subscribed_sessions[key].send_resource_updated(uri)
        return await self._resource_listeners(ctx, args)

    async def _resource_listeners(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        uri = str(args.get("uri"))
        return _text(str(self._listen.subscribers(uri) + len(self._sessions_subscribed(uri))))

    def _sessions_subscribed(self, uri: str) -> list[str]:
        return [key for key, uris in self._subscriptions.items()
                if uri in uris and key in self._subscribed_sessions]

    async def _simple_text(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return _text("This is a simple text response for testing.")

    async def _image_content(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(content=[ImageContent(data=PNG_B64, mime_type="image/png")])

    async def _audio_content(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(content=[AudioContent(data=WAV_B64, mime_type="audio/wav")])

    async def _embedded_resource(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        resource = TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])

    async def _multiple_content(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        resource = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        content: list[ContentBlock] = [
            TextContent(text="Multiple content types test:"),
            ImageContent(data=PNG_B64, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=resource),
        ]
        return CallToolResult(content=content)

    async def _with_logging(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        await self._log(ctx, "info", "Tool execution started")
        await anyio.sleep(NOTIFICATION_GAP_SECONDS)
        await self._log(ctx, "info", "Tool processing data")
        await anyio.sleep(NOTIFICATION_GAP_SECONDS)
        await self._log(ctx, "info", "Tool execution completed")
        return _text("Tool with logging executed successfully")

    async def _with_progress(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(NOTIFICATION_GAP_SECONDS)
            await ctx.session.report_progress(progress, 100, f"Completed step {progress} of 100")
        return _text("Tool with progress executed successfully")

    async def _error_handling(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return _tool_error("This tool intentionally returns an error for testing")

    async def _sampling(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        prompt = args.get("prompt")
        if not isinstance(prompt, str):
            return _tool_error("argument 'prompt' must be a string")
        if not ctx.session.check_client_capability(
            ClientCapabilities(sampling=SamplingCapability())
        ):
            return _tool_error("the client does not support sampling")
        result = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(text=prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
        answer = (
            result.content.text
            if isinstance(result.content, TextContent)
            else f"<{result.content.type}>"
        )
        return _text(f"LLM response: {answer}")

    async def _elicit(
        self, ctx: Ctx, message: str, schema: dict[str, Any], label: str
    ) -> CallToolResult:
        if not ctx.session.check_client_capability(
            ClientCapabilities(elicitation=ElicitationCapability())
        ):
            return _tool_error("the client does not support elicitation")
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        return _text(f"{label}: action={result.action}, content={json.dumps(result.content or {})}")

    async def _elicitation(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        message = args.get("message")
        if not isinstance(message, str):
            return _tool_error("argument 'message' must be a string")
        return await self._elicit(ctx, message, CONTACT_SCHEMA, "User response")

    async def _elicitation_defaults(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        message = "Please review these details; every field has a default"
        return await self._elicit(ctx, message, SEP1034_SCHEMA, "Elicitation completed")

    async def _elicitation_enums(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        message = "Please choose from each kind of list"
        return await self._elicit(ctx, message, SEP1330_SCHEMA, "Elicitation completed")

    async def _json_schema_tool(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return _text(f"Received: {json.dumps(dict(args), sort_keys=True)}")

    async def _reconnection(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        await self._log(ctx, "info", "Closing the stream; reconnect to receive the result")
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
        await anyio.sleep(RECONNECT_GRACE_SECONDS)
        return _text("Reconnection test completed successfully")

    async def _missing_capability(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        if not ctx.session.check_client_capability(
            ClientCapabilities(sampling=SamplingCapability())
        ):
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool requires the client's sampling capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return _text("The client declared sampling.")

    async def _x_mcp_header(self, ctx: Ctx, args: Mapping[str, Any]) -> CallToolResult:
        return _text(f"region={args.get('region', '<none>')}")

    # -- input_required rounds (2026-07-28) ------------------------------------

    async def _streaming_elicitation(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        name = _accepted_field(_answers(params).get("answer"), "name")
        if name is not None:
            return _text(f"Hello, {name}!")
        return InputRequiredResult(
            input_requests={"answer": _elicit_request("What is your name?", NAME_SCHEMA)}
        )

    async def _ir_elicitation(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        answers = _answers(params)
        if "user_name" in answers:
            return _text(f"Hello, {_accepted_field(answers['user_name'], 'name') or '?'}!")
        return InputRequiredResult(
            input_requests={"user_name": _elicit_request("What is your name?", NAME_SCHEMA)}
        )

    async def _ir_sampling(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        answer = _answers(params).get("capital_question")
        if answer is not None:
            content = answer.get("content")
            text = content.get("text") if isinstance(content, dict) else None
            return _text(f"Model said: {text or '?'}")
        question = _sampling_request("What is the capital of France?", 100)
        return InputRequiredResult(input_requests={"capital_question": question})

    async def _ir_list_roots(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        answer = _answers(params).get("client_roots")
        if answer is not None:
            roots = answer.get("roots")
            return _text(f"Client exposed {len(roots) if isinstance(roots, list) else 0} root(s).")
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    async def _ir_request_state(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        if "confirm" in _answers(params) and params.request_state == REQUEST_STATE_NONCE:
            return _text("state-ok: confirmation received")
        return InputRequiredResult(
            input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
            request_state=REQUEST_STATE_NONCE,
        )

    async def _ir_multiple_inputs(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        if {"user_name", "greeting", "client_roots"} <= _answers(params).keys():
            return _text("All inputs received.")
        return InputRequiredResult(
            input_requests={
                "user_name": _elicit_request("What is your name?", NAME_SCHEMA),
                "greeting": _sampling_request("Generate a greeting", 50),
                "client_roots": ListRootsRequest(),
            },
            request_state="multiple-inputs",
        )

    async def _ir_multi_round(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        try:
            state = json.loads(params.request_state) if params.request_state else {"round": 0}
        except ValueError:
            state = {"round": 0}
        answers = _answers(params)
        if state.get("round") == 1 and "step1" in answers:
            name = _accepted_field(answers["step1"], "name")
            return InputRequiredResult(
                input_requests={
                    "step2": _elicit_request("Step 2: What is your favorite color?", COLOR_SCHEMA)
                },
                request_state=json.dumps({"round": 2, "name": name}),
            )
        if state.get("round") == 2 and "step2" in answers:
            color = _accepted_field(answers["step2"], "color")
            return _text(f"{state.get('name')} likes {color}.")
        # The first round, or an answer missing or out of order: start again.
        return InputRequiredResult(
            input_requests={"step1": _elicit_request("Step 1: What is your name?", NAME_SCHEMA)},
            request_state=json.dumps({"round": 1}),
        )

    async def _ir_tampered_state(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        # Tampering is caught before this handler runs: the state is sealed on the way out
        # and verified on the way in (``RequestStateBoundary`` in ``build_server``).
        if params.request_state is None:
            return InputRequiredResult(
                input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
                request_state="round-1",
            )
        return _text(f"state-ok: {params.request_state}")

    async def _ir_capabilities(
        self, ctx: Ctx, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        requests: dict[str, InputRequest] = {}
        if ctx.session.check_client_capability(ClientCapabilities(sampling=SamplingCapability())):
            requests["sample"] = _sampling_request("Say hello", 50)
        if ctx.session.check_client_capability(
            ClientCapabilities(elicitation=ElicitationCapability())
        ):
            requests["ask"] = _elicit_request("What is your name?", NAME_SCHEMA)
        if ctx.session.check_client_capability(ClientCapabilities(roots=RootsCapability())):
            requests["roots"] = ListRootsRequest()
        return InputRequiredResult(input_requests=requests, request_state="capability-gated")

    # -- resources -----------------------------------------------------------

    async def list_resources(
        self, ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(
            resources=[
                Resource(
                    uri="test://static-text",
                    name="static-text",
                    description="A static text resource",
                    mime_type="text/plain",
                ),
                Resource(
                    uri="test://static-binary",
                    name="static-binary",
                    description="A static binary resource (a PNG image)",
                    mime_type="image/png",
                ),
                Resource(
                    uri=WATCHED_URI,
                    name="watched-resource",
                    description="A resource clients may subscribe to",
                    mime_type="text/plain",
                ),
            ]
        )

    async def list_resource_templates(
        self, ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(
            resource_templates=[
                ResourceTemplate(
                    uri_template=TEMPLATE_URI,
                    name="template-data",
                    description="JSON data for the id in the URI",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(
        self, ctx: Ctx, params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        uri = params.uri
        if uri == "test://static-text":
            contents: TextResourceContents | BlobResourceContents = TextResourceContents(
                uri=uri, mime_type="text/plain", text=STATIC_TEXT
            )
        elif uri == "test://static-binary":
            contents = BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_B64)
        elif uri == WATCHED_URI:
            contents = TextResourceContents(
                uri=uri, mime_type="text/plain", text="Watched resource content"
            )
        elif (
            uri.startswith(TEMPLATE_PREFIX)
            and uri.endswith(TEMPLATE_SUFFIX)
            and "/" not in (item := uri[len(TEMPLATE_PREFIX) : -len(TEMPLATE_SUFFIX)])
            and item
        ):
            data = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
            contents = TextResourceContents(
                uri=uri, mime_type="application/json", text=json.dumps(data)
            )
        else:
            raise MCPError(code=INVALID_PARAMS, message="Resource not found", data={"uri": uri})
        return ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Ctx, params: SubscribeRequestParams) -> EmptyResult:
        key = self._session_key(ctx)
        _remember(self._subscriptions, key, self._subscriptions.get(key, set()) | {params.uri})
        _remember(self._subscribed_sessions, key, ctx.session)
        return EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: UnsubscribeRequestParams) -> EmptyResult:
        self._subscriptions.get(self._session_key(ctx), set()).discard(params.uri)
        return EmptyResult()

    # -- prompts, completion, logging -----------------------------------------

    async def list_prompts(
        self, ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        return ListPromptsResult(
            prompts=[
                Prompt(name="test_simple_prompt", description="A prompt without arguments"),
                Prompt(
                    name="test_prompt_with_arguments",
                    description="A prompt that substitutes two arguments",
                    arguments=[
                        PromptArgument(
                            name="arg1", description="First test argument", required=True
                        ),
                        PromptArgument(
                            name="arg2", description="Second test argument", required=True
                        ),
                    ],
                ),
                Prompt(
                    name="test_prompt_with_embedded_resource",
                    description="A prompt that embeds a resource",
                    arguments=[
                        PromptArgument(
                            name="resourceUri",
                            description="URI of the resource to embed",
                            required=True,
                        )
                    ],
                ),
                Prompt(name="test_prompt_with_image", description="A prompt that carries an image"),
                Prompt(
                    name="test_input_required_result_prompt",
                    description="Asks for context through an input_required result first",
                ),
            ]
            + (
                [Prompt(name="test_dynamic_prompt", description="Appears and disappears")]
                if self._dynamic_prompt
                else []
            )
        )

    async def get_prompt(
        self, ctx: Ctx, params: GetPromptRequestParams
    ) -> GetPromptResult | InputRequiredResult:
        args = params.arguments or {}

        def required(name: str) -> str:
            value = args.get(name)
            if value is None:
                raise MCPError(code=INVALID_PARAMS, message=f"Missing required argument: {name}")
            return value

        messages: list[PromptMessage]
        if params.name == "test_simple_prompt":
            messages = [
                PromptMessage(
                    role="user", content=TextContent(text="This is a simple prompt for testing.")
                )
            ]
        elif params.name == "test_prompt_with_arguments":
            text = f"Prompt with arguments: arg1='{required('arg1')}', arg2='{required('arg2')}'"
            messages = [PromptMessage(role="user", content=TextContent(text=text))]
        elif params.name == "test_prompt_with_embedded_resource":
            resource = TextResourceContents(
                uri=required("resourceUri"),
                mime_type="text/plain",
                text="Embedded resource content for testing.",
            )
            messages = [
                PromptMessage(
                    role="user", content=EmbeddedResource(type="resource", resource=resource)
                ),
                PromptMessage(
                    role="user",
                    content=TextContent(text="Please process the embedded resource above."),
                ),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [
                PromptMessage(
                    role="user", content=ImageContent(data=PNG_B64, mime_type="image/png")
                ),
                PromptMessage(
                    role="user", content=TextContent(text="Please analyze the image above.")
                ),
            ]
        elif params.name == "test_input_required_result_prompt":
            context = _accepted_field(_answers(params).get("user_context"), "context")
            if context is None:
                question = _elicit_request("What context should the prompt use?", CONTEXT_SCHEMA)
                return InputRequiredResult(input_requests={"user_context": question})
            messages = [
                PromptMessage(
                    role="user", content=TextContent(text=f"Use the following context: {context}")
                )
            ]
        else:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        return GetPromptResult(messages=messages)

    async def complete(self, ctx: Ctx, params: CompleteRequestParams) -> CompleteResult:
        values: list[str] = []
        if (
            isinstance(params.ref, PromptReference)
            and params.ref.name == "test_prompt_with_arguments"
        ):
            prefix = params.argument.value.casefold()
            values = [word for word in COMPLETION_WORDS if word.startswith(prefix)]
        return CompleteResult(
            completion=Completion(values=values, total=len(values), has_more=False)
        )

    async def set_logging_level(self, ctx: Ctx, params: SetLevelRequestParams) -> EmptyResult:
        _remember(self._log_levels, self._session_key(ctx), params.level)
        return EmptyResult()

    def build_server(self) -> Server[Any]:
        server: Server[Any] = Server(
            SERVER_NAME,
            version="0.1.0",
            instructions="Fixtures for the MCP conformance suite.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
            on_subscriptions_listen=self._listen,
        )
        # Seals every requestState the tools mint and refuses an echo that was altered (the
        # input-required-result-tampered-state scenario). The key lives in this process only.
        server.middleware.append(
            RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience=SERVER_NAME)
        )
        return server


def create_server() -> Server[Any]:
    return ConformanceFixture().build_server()


def main(argv: Sequence[str] | None = None) -> None:
    run_backend(
        create_server,
        description="MCP conformance-suite fixture backend.",
        default_port=DEFAULT_PORT,
        argv=argv,
        event_store=BoundedEventStore(),
        retry_interval_ms=SSE_RETRY_MS,
        # The suite sends an Mcp-Name padded with spaces, which the server must accept.
        http_parser="h11",
    )


if __name__ == "__main__":
    main()
