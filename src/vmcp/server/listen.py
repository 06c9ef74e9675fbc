"""``subscriptions/listen`` on the wire (2026-07-28): one POST whose answer is the stream.

The stream is an event stream whose first frame is the acknowledgement of what the
gateway honours of the request's filter (``notifications/subscriptions/acknowledged``);
then come the changes of the requested kinds, each tagged with the subscription id (the
listen request's JSON-RPC id, under ``_meta`` ``io.modelcontextprotocol/subscriptionId``),
with keep-alive comments while nothing changes. It ends:

* gracefully, with the ``subscriptions/listen`` result (tagged too), when the replica
  drains: the client re-listens, through the balancer, to a replica that stays;
* abruptly, when its client stopped reading long enough for its buffer to fill, or
  when the client hangs up.

A listen beyond the replica's limit, or on a draining replica, is answered 503 with a
JSON-RPC error before any stream opens; one asking for more than ``max_resources``
resource subscriptions, 400 with -32602.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, event_to_notification
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
)
from starlette.types import Receive, Send

from vmcp.server.responses import SSE_HEADERS, cancel_on_disconnect, send_json, sse_event
from vmcp.stateless.subscriptions import (
    ChangeHub,
    Listener,
    ListenerEnd,
    SubscriptionLimit,
    SubscriptionsClosed,
    honored_filter,
)

logger = logging.getLogger(__name__)

__all__ = ["Listening"]

PING_SECONDS: Final = 15.0
"""Silence after which a keep-alive comment is written, so that a proxy's idle timeout
does not cut a stream that has nothing to say."""
PING: Final = b": ping\n\n"
MAX_RESOURCES: Final = 64

Resolve = Callable[[list[str]], Awaitable[dict[str, str]]]
"""Of the requested resource URIs, those the gateway can subscribe to: URI -> backend."""


class Listening:
    """Serves listen streams from this replica's :class:`ChangeHub`."""

    def __init__(self, hub: ChangeHub, *, ping_seconds: float = PING_SECONDS,
                 max_resources: int = MAX_RESOURCES) -> None:
        self._hub = hub
        self._ping = ping_seconds
        self._max_resources = max_resources

    async def serve(self, receive: Receive, send: Send, request_id: Any,
                    params: dict[str, Any], resolve: Resolve | None = None) -> None:
        """Answer one admitted listen request (its params already validated)."""
        requested = SubscriptionFilter.model_validate(params.get("notifications") or {})
        uris = list(dict.fromkeys(requested.resource_subscriptions or ()))
        if len(uris) > self._max_resources:
            await send_json(send, 400, {"jsonrpc": "2.0", "id": request_id, "error": {
                "code": INVALID_PARAMS,
                "message": f"At most {self._max_resources} resource subscriptions per "
                           f"listen request ({len(uris)} asked)"}})
            return
        resources = await resolve(uris) if uris and resolve is not None else {}
        honored = honored_filter(requested, resources)
        try:
            listener = self._hub.open(honored, resources)
        except SubscriptionLimit:
            await self._refuse(send, request_id, "Subscription limit reached")
            return
        except SubscriptionsClosed:
            await self._refuse(send, request_id, "The server is shutting down")
            return
        meta = {SUBSCRIPTION_ID_META_KEY: request_id}
        try:
            if self._hub.ready is not None:
                await self._hub.ready()
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
                await self._stream(send, request_id, listener, honored, meta)
                tg.cancel_scope.cancel()
        finally:
            self._hub.close(listener)

    async def _stream(self, send: Send, request_id: Any, listener: Listener,
                      honored: SubscriptionFilter, meta: dict[str, Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        ack = SubscriptionsAcknowledgedNotification(
            params=SubscriptionsAcknowledgedNotificationParams(notifications=honored,
                                                               _meta=meta))
        await self._write(send, _wire(ack))
        while True:
            with anyio.move_on_after(self._ping):
                try:
                    event = await listener.events.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                await self._write(send, _wire(event_to_notification(event, meta)))
                continue
            await send({"type": "http.response.body", "body": PING, "more_body": True})
        final = b""
        if listener.end is ListenerEnd.DRAINED:
            final = sse_event({"jsonrpc": "2.0", "id": request_id,
                               "result": {"_meta": meta}})
        await send({"type": "http.response.body", "body": final, "more_body": False})

    @staticmethod
    async def _write(send: Send, message: dict[str, Any]) -> None:
        await send({"type": "http.response.body", "body": sse_event(message),
                    "more_body": True})

    @staticmethod
    async def _refuse(send: Send, request_id: Any, message: str) -> None:
        await send_json(send, 503, {"jsonrpc": "2.0", "id": request_id,
                                    "error": {"code": INTERNAL_ERROR, "message": message}},
                        extra=[(b"retry-after", b"1")])


def _wire(model: Any) -> dict[str, Any]:
    """A notification model as the JSON-RPC message it is sent as."""
    message: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {"jsonrpc": "2.0", **message}
