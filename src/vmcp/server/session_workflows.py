"""Composite tools' questions to session clients, answered on any replica.

The replica running a workflow asks the user on the call's response stream, under a
request id that is a one-use handle, after keeping the run's snapshot in the store
(see :mod:`vmcp.store.workflow_states`) and copying the stream to the event log. The
client's answer may be POSTed anywhere:

* on the replica that asked, it is delivered in place;
* elsewhere, it is published on the handle's relay channel, which only the asking
  replica listens to: Redis says how many received it, so a replica that died (its
  subscription went with its connection) is noticed at once;
* if nobody received it, the replica that got the answer takes the stored run and
  continues it itself, writing the rest of the call's stream into the event log under
  the stream's own id, after the events already there. The client, whose stream broke
  with the replica, resumes it with ``Last-Event-ID`` (GET) on any replica and gets what
  follows the question, the call's result last.

Whoever continues the run takes the record first (one use), so exactly one replica does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from vmcp.composite import Asked, StepFailed
from vmcp.config import CompositeToolConfig
from vmcp.dispatch import (
    NO_ELICITATION,
    WorkflowCall,
    elicit_result,
    is_handle,
    new_handle,
    state_key,
)
from vmcp.errors import StoreError
from vmcp.server import jsonrpc
from vmcp.session.channel import ClientChannel
from vmcp.session.multisession import MultiSession
from vmcp.session.streams import Outbound
from vmcp.store.pubsub import SessionRelay
from vmcp.store.workflow_states import WorkflowStates

logger = logging.getLogger(__name__)

ANSWER: Final = "workflow-answer"
"""The type of a relayed answer on a handle's channel."""

Resume = Callable[[ClientChannel, dict[str, Any], dict[str, dict[str, Any]]],
                  Awaitable[dict[str, Any]]]
"""Continues a stored run (its record, the answers by step) with the request's channel;
the call's ``CallToolResult``."""


class WorkflowGone(Exception):
    """No run waits for this answer (expired, answered already, or another session's)."""


def session_key(session_id: str, handle: str) -> str:
    return state_key(handle, "session", session_id)


class SessionQuestions:
    """Asks a session's client a workflow's questions so that any replica can continue."""

    def __init__(self, states: WorkflowStates, relay: SessionRelay | None) -> None:
        self._states = states
        self._relay = relay

    def elicitor(self, session: MultiSession, channel: ClientChannel,
                 work: WorkflowCall) -> Callable[[dict[str, Any], Asked],
                                                 Awaitable[dict[str, Any]]]:
        """The ``Elicit`` of one composite call on ``channel``."""

        async def elicit(params: dict[str, Any], asked: Asked) -> dict[str, Any]:
            capabilities = session.client_capabilities
            if capabilities is not None and "elicitation" not in capabilities:
                raise StepFailed(NO_ELICITATION)
            handle = new_handle()
            key = session_key(session.session_id, handle)
            snapshot = asked.snapshot()
            ttl = CompositeToolConfig.model_validate(snapshot["tool"]).answer_ttl_seconds
            try:
                await self._states.create(key, {
                    "snapshot": snapshot, "step": asked.step, "stream": channel.stream_id,
                    "seq": channel.next_seq, "request": channel.request_id,
                    "progress": work.progress_token}, ttl)
            except StoreError as exc:
                raise StepFailed(f"the run could not be kept while it waits: {exc}") from None
            listening = (self._relay.listen(key, _delivering(session))
                         if self._relay is not None else None)
            try:
                answer = await channel.request("elicitation/create", params,
                                               request_id=handle, wait_seconds=ttl,
                                               answers_elsewhere=listening, resumable=True)
            except TimeoutError:
                await _forget(self._states, key)
                raise StepFailed("the user did not answer in time") from None
            try:
                taken = await self._states.take(key)
            except StoreError as exc:
                raise StepFailed(f"the answer could not be claimed: {exc}") from None
            if taken is None:
                raise StepFailed("the answer came after the run's state expired")
            return elicit_result(answer)

        return elicit

    async def answer(self, session: MultiSession, message: dict[str, Any],
                     resume: Resume) -> None:
        """A client's answer to a workflow's question that nobody waits for here: hand
        it to the replica that asked, or, if none is listening, continue the run here.
        Raises :class:`WorkflowGone`, or ``StoreError``."""
        handle = message.get("id")
        assert is_handle(handle)
        key = session_key(session.session_id, str(handle))
        if self._relay is not None:
            received = await self._relay.publish(key, {"type": ANSWER, "message": message})
            if received:
                return
        record = await self._states.take(key)
        if record is None or not isinstance(record.get("snapshot"), dict):
            raise WorkflowGone(str(handle))
        stream_id, request_id = str(record.get("stream")), record.get("request")
        seq = record.get("seq")
        start = max(int(seq) if isinstance(seq, int) else 0,
                    await _logged_until(session, stream_id))
        stream = session.streams.adopt(stream_id, request_id, start=start)
        # The client resumes this stream from the event log, on whichever replica.
        session.work.persist(stream)
        channel = session.channel(stream, request_id)
        answers: dict[str, dict[str, Any]] = {}
        try:
            answers[str(record.get("step"))] = elicit_result(message)
        except StepFailed:
            answers[str(record.get("step"))] = {"action": "cancel"}
        logger.info("continuing a composite tool run whose replica is gone",
                    extra={"session_id": session.session_id})

        async def run() -> None:
            try:
                result = await resume(channel, record, answers)
                final = jsonrpc.result(request_id, result)
            except Exception:
                logger.exception("continuing a composite tool run failed",
                                 extra={"session_id": session.session_id})
                final = jsonrpc.error(request_id, -32603, "Internal error")
            stream.append(Outbound(final, final=True))

        session.work.spawn(run())


def _delivering(session: MultiSession) -> Callable[[dict[str, Any]], None]:
    def deliver(payload: dict[str, Any]) -> None:
        message = payload.get("message")
        if payload.get("type") == ANSWER and isinstance(message, dict):
            session.deliver_client_response(message)
    return deliver


async def _logged_until(session: MultiSession, stream_id: str) -> int:
    if session.event_log is None:
        return 0
    return await session.event_log.last_seq(session.session_id, stream_id)


async def _forget(states: WorkflowStates, key: str) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await states.take(key)
        except StoreError as exc:
            logger.warning("a run's expired state stays until its TTL: %s", exc)
