"""Parsing client messages and building JSON-RPC replies.

Incoming messages are checked with the SDK's own wire types (``mcp_types``): the envelope
first, then, for requests and notifications MCP defines, their parameters. Outgoing
results from backends are relayed as the JSON the backend sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import pydantic
from mcp_types import ClientNotification, ClientRequest
from mcp_types.jsonrpc import jsonrpc_message_adapter

from vmcp.errors import (
    INVALID_PARAMS_CODE,
    INVALID_REQUEST_CODE,
    PARSE_ERROR_CODE,
    MessageError,
)

RequestId = int | str
Kind = Literal["request", "notification", "response"]



def _by_method(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    """Map each method name of an SDK message union to its model.

    Validating against the one model of the method gives errors that name the bad
    field, where the whole union would report a mismatch with every other method.
    """
    models: dict[str, type[pydantic.BaseModel]] = {}
    for model in get_args(union):
        (method,) = get_args(model.model_fields["method"].annotation)
        models[method] = model
    return models


REQUEST_MODELS = _by_method(ClientRequest)
NOTIFICATION_MODELS = _by_method(ClientNotification)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One validated client message."""

    kind: Kind
    raw: dict[str, Any]

    @property
    def id(self) -> RequestId | None:
        value = self.raw.get("id")
        return value if _is_request_id(value) else None

    @property
    def method(self) -> str:
        return str(self.raw.get("method", ""))

    @property
    def params(self) -> dict[str, Any]:
        params = self.raw.get("params")
        return params if isinstance(params, dict) else {}


def parse_message(body: bytes) -> Incoming:
    """Decode and validate one message; raises ``MessageError`` with the reply to send."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(PARSE_ERROR_CODE, f"Parse error: {exc}") from exc
    except RecursionError as exc:
        # The decoder gives up on deep nesting (about a thousand levels, fewer the deeper
        # the stack it runs on); no MCP message is nested anywhere near that deep.
        raise MessageError(PARSE_ERROR_CODE, "Parse error: JSON nested too deeply") from exc
    if isinstance(raw, list):
        raise MessageError(INVALID_REQUEST_CODE, "Invalid Request: batches are not supported")
    if not isinstance(raw, dict):
        raise MessageError(INVALID_REQUEST_CODE, "Invalid Request: expected a JSON object")
    request_id = raw.get("id") if _is_request_id(raw.get("id")) else None
    if "method" in raw and "id" in raw and request_id is None:
        raise MessageError(INVALID_REQUEST_CODE,
                           "Invalid Request: id must be a string or an integer")
    try:
        jsonrpc_message_adapter.validate_python(raw)
    except pydantic.ValidationError as exc:
        raise MessageError(INVALID_REQUEST_CODE, f"Invalid Request: {first_error(exc)}",
                           request_id) from exc
    if "method" not in raw:
        return Incoming("response", raw)
    if "id" not in raw:
        model = NOTIFICATION_MODELS.get(raw["method"])
        if model is not None:
            _validate_params(raw, model, None)
        return Incoming("notification", raw)
    model = REQUEST_MODELS.get(raw["method"])
    if model is not None:
        _validate_params(raw, model, request_id)
    return Incoming("request", raw)


def _is_request_id(value: object) -> bool:
    """MCP ids are strings or integers, never null (and a bool is not an integer here)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _validate_params(raw: dict[str, Any], model: type[pydantic.BaseModel],
                     request_id: RequestId | None) -> None:
    payload = {"method": raw["method"]}
    if raw.get("params") is not None:
        payload["params"] = raw["params"]
    try:
        model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise MessageError(INVALID_PARAMS_CODE, f"Invalid params: {first_error(exc)}",
                           request_id, http_status=200) from exc


def first_error(exc: pydantic.ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


def result(request_id: RequestId | None, payload: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": payload}


def error(request_id: RequestId | None, code: int, message: str,
          data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error; ``id`` is omitted when unknown, as MCP's 404 body shows."""
    body: dict[str, Any] = {"jsonrpc": "2.0"}
    if request_id is not None:
        body["id"] = request_id
    body["error"] = {"code": code, "message": message}
    if data is not None:
        body["error"]["data"] = data
    return body


def dumps(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
