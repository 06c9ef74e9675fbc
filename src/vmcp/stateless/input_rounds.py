"""A session-based backend's requests to the client, as ``input_required`` rounds.

A backend of the handshake era asks its client for something (sampling, elicitation,
roots) by sending a request in the middle of a call and waiting for the answer. A client
of the stateless revision cannot take such a request: the server answers the call with an
``input_required`` result naming what it needs, and the client repeats the call with the
answers (``inputResponses``) and the opaque ``requestState`` it was given.

The gateway bridges the two by parking the backend call: it keeps running, its request
waits, and the client's call is answered with ``input_required`` whose ``requestState``
is a fresh unguessable token. The retry carrying that token is matched back to the
parked call, its answers go to the waiting backend, and the call is followed again
until it finishes or asks once more (with a new token: an answered round cannot be
replayed). A parked call belongs to the identity that started it and to the same
request (method and target); anything else presenting its token is told the state is
invalid. A call nobody comes back for within ``answer_timeout`` is cancelled (the
backend is told), as is one whose client goes away while it waits for the outcome.

A parked call lives on the replica that started it, but the retry may reach any
replica. With a :class:`~vmcp.store.pubsub.SessionRelay` (Redis), the holder listens on
the token's channel while the call is parked; a replica that does not know a token
forwards the retry there and relays what comes back (notifications, then the outcome),
so the client cannot tell. Without a relay, or if no replica answers within
``relay_timeout``, the token is treated as unknown.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from vmcp.backend import BackendRpcError
from vmcp.errors import BackendError, InvalidRound, StoreError, VmcpError
from vmcp.store.pubsub import SessionRelay

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "vmcp-round."
"""Starts every ``requestState`` the gateway mints, so it is never taken for a backend's."""

ROUND_CHANNEL = "round:"
"""Relay channel (+ token) the replica holding a parked call listens on."""
REPLY_CHANNEL = "round-reply:"
"""Relay channel (+ a nonce) a forwarded retry's notifications and outcome come back on."""

Notify = Callable[[dict[str, Any]], Awaitable[None]]
"""Delivers a notification (progress, log) to the client request currently attached."""

Ask = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any]]]
"""Puts a request (method, params) to the client; returns its answer: ``{"result": ...}``
or ``{"error": ...}``."""

Work = Callable[[Ask, Notify], Awaitable[dict[str, Any]]]
"""The backend call: runs once, may ask and notify, returns the call's result."""


class ForwardedBackendError(BackendError):
    """A backend failure the replica holding a call reported for a forwarded retry."""

    def __init__(self, backend: str, text: str) -> None:
        VmcpError.__init__(self, text)
        self.backend = backend


@dataclass(frozen=True)
class Outcome:
    """What the client's request is answered with: the call's ``result``, or an
    ``input_required`` round (``input_requests`` by key, ``request_state``)."""

    result: dict[str, Any] | None = None
    input_requests: dict[str, dict[str, Any]] | None = None
    request_state: str | None = None


class _Question:
    __slots__ = ("answer", "request")

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.answer: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future())


class ParkedCall:
    """One backend call that may outlive the client request that started it."""

    def __init__(self, binding: str, target: tuple[str, str], work: Work) -> None:
        self.binding = binding
        self.target = target
        self.token: str | None = None
        self.expires_at = float("inf")
        self.unparked = asyncio.Event()  # ends the relay listener of the current token
        self._questions: dict[str, _Question] = {}
        self._keys = itertools.count(1)
        self._sink: Notify | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(work), name=f"vmcp-round-{target[1][:32]}")
        self._task.add_done_callback(_retrieve)

    @property
    def attached(self) -> bool:
        return self._sink is not None

    def cancel(self) -> None:
        self._task.cancel()
        for question in self._questions.values():
            question.answer.cancel()

    async def _run(self, work: Work) -> dict[str, Any]:
        try:
            return await work(self._ask, self._notify)
        finally:
            self._changed.set()

    async def _ask(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        key = f"r{next(self._keys)}"
        request: dict[str, Any] = {"method": method}
        if params is not None:
            request["params"] = params
        question = _Question(request)
        self._questions[key] = question
        self._changed.set()
        try:
            return await question.answer
        finally:
            self._questions.pop(key, None)

    async def _notify(self, message: dict[str, Any]) -> None:
        if self._sink is not None:
            await self._sink(message)

    def answer(self, responses: dict[str, Any]) -> None:
        """Hand the client's answers to the questions they name; others are ignored.

        Raises :class:`InvalidRound`, answering none of them, if one that names a
        question is not a result object.
        """
        for key, response in responses.items():
            if key in self._questions and not isinstance(response, dict):
                raise InvalidRound(f"inputResponses[{key!r}] must be an object")
        for key, response in responses.items():
            question = self._questions.get(key)
            if question is not None and not question.answer.done():
                question.answer.set_result({"result": response})

    async def next_outcome(self, sink: Notify, *, grace: float) -> dict[str, Any] | None:
        """Follow the call until it finishes (its result) or waits for answers (None).

        ``sink`` receives the call's notifications meanwhile. Raises whatever the call
        raised. A caller cancelled while waiting cancels the call too: its client went
        away, and nobody else can come for it.
        """
        self._sink = sink
        try:
            while True:
                self._changed.clear()
                if self._task.done():
                    return self._task.result()
                if self.unanswered():
                    # A backend may ask several things at once: collect what arrives
                    # right after the first, so the client gets them in one round.
                    with anyio.move_on_after(grace):
                        await self._task_done()
                    if self._task.done():
                        return self._task.result()
                    return None
                await self._changed.wait()
        except BaseException:
            if not self._task.done():
                self.cancel()
            raise
        finally:
            self._sink = None

    async def _task_done(self) -> None:
        await asyncio.wait([self._task])

    def unanswered(self) -> dict[str, dict[str, Any]]:
        return {key: q.request for key, q in self._questions.items() if not q.answer.done()}


class InputRounds:
    """The parked calls of this replica, by their current token."""

    def __init__(self, *, answer_timeout: float, grace: float = 0.05,
                 relay: SessionRelay | None = None, relay_timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if answer_timeout <= 0:
            raise ValueError("answer_timeout must be positive")
        self._timeout = answer_timeout
        self._grace = grace
        self._relay = relay
        self._relay_timeout = relay_timeout
        self._clock = clock
        self._calls: dict[str, ParkedCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._calls)

    async def start(self, binding: str, target: tuple[str, str], work: Work,
                    sink: Notify) -> Outcome:
        """Run ``work`` for the identity ``binding``'s request on ``target`` (method and
        exposed name or URI) until it finishes or first needs the client's answers."""
        call = ParkedCall(binding, target, work)
        return await self._follow(call, sink)

    async def resume(self, token: str, binding: str, target: tuple[str, str],
                     responses: dict[str, Any] | None, sink: Notify, *,
                     forward: bool = True) -> Outcome:
        """Continue the call ``token`` names with the client's ``responses``.

        Raises :class:`InvalidRound` if no call of this identity and request waits under
        ``token`` (never minted, already used, expired), here or - unless ``forward`` is
        false - through the relay, on another replica.
        """
        call = self._calls.get(token)
        if call is None and forward and self._relay is not None and is_round_token(token):
            return await self._resume_elsewhere(token, binding, target, responses, sink)
        if call is None or call.binding != binding or call.target != target or call.attached:
            raise InvalidRound("Invalid or expired requestState")
        call.answer(responses or {})  # a malformed answer leaves the round as it was
        self._unpark(token)
        return await self._follow(call, sink)

    async def _follow(self, call: ParkedCall, sink: Notify) -> Outcome:
        result = await call.next_outcome(sink, grace=self._grace)
        if result is not None:
            return Outcome(result=result)
        token = await self._park(call)
        return Outcome(input_requests=call.unanswered(), request_state=token)

    async def _park(self, call: ParkedCall) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        call.token = token
        call.expires_at = self._clock() + self._timeout
        call.unparked = asyncio.Event()
        self._calls[token] = call
        if self._relay is not None:
            await self._listen_for(token, call.unparked)
        return token

    def _unpark(self, token: str) -> ParkedCall | None:
        call = self._calls.pop(token, None)
        if call is not None:
            call.token = None
            call.unparked.set()
        return call

    def sweep(self) -> int:
        """Cancel the parked calls nobody came back for in time; how many."""
        now = self._clock()
        expired = [token for token, call in self._calls.items() if call.expires_at <= now]
        for token in expired:
            call = self._unpark(token)
            if call is not None:
                logger.info("an input_required round on %s %s expired unanswered",
                            call.target[0], call.target[1])
                call.cancel()
        return len(expired)

    def aclose(self) -> None:
        """Cancel every parked call and relay listener (shutdown)."""
        for token in list(self._calls):
            call = self._unpark(token)
            if call is not None:
                call.cancel()
        for task in list(self._tasks):
            task.cancel()

    # -- across replicas -------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name="vmcp-round-relay")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen_for(self, token: str, unparked: asyncio.Event) -> None:
        """Take forwarded retries of ``token`` until it is unparked; returns once the
        subscription is active (or has failed: then only this replica can serve it)."""
        assert self._relay is not None
        relay = self._relay
        ready = asyncio.Event()

        def deliver(payload: dict[str, Any]) -> None:
            if payload.get("type") == "resume":
                self._spawn(self._serve_forwarded(token, payload))

        async def listen() -> None:
            try:
                async with relay.listen(ROUND_CHANNEL + token, deliver):
                    ready.set()
                    await unparked.wait()
            except (StoreError, TimeoutError) as exc:
                logger.warning("an input_required round can be continued on this replica "
                               "only: %s", exc)
            finally:
                ready.set()

        self._spawn(listen())
        with anyio.move_on_after(self._relay_timeout * 2):
            await ready.wait()

    async def _serve_forwarded(self, token: str, request: dict[str, Any]) -> None:
        """Serve a retry another replica forwarded, and send it all that comes of it."""
        assert self._relay is not None
        relay = self._relay
        reply = request.get("reply")
        target = request.get("target")
        binding = request.get("binding")
        responses = request.get("responses")
        if (not isinstance(reply, str) or not isinstance(binding, str)
                or not isinstance(target, list) or len(target) != 2
                or not (responses is None or isinstance(responses, dict))
                or token not in self._calls):
            return
        channel = REPLY_CHANNEL + reply

        async def publish(message: dict[str, Any]) -> None:
            try:
                await relay.publish(channel, message)
            except StoreError as exc:
                logger.warning("could not send a forwarded round's %s: %s",
                               message.get("type"), exc)

        async def sink(message: dict[str, Any]) -> None:
            await publish({"type": "notify", "message": message})

        await publish({"type": "accepted"})
        try:
            outcome = await self.resume(token, binding, (str(target[0]), str(target[1])),
                                        responses, sink, forward=False)
        except InvalidRound as exc:
            await publish({"type": "outcome", "error": "invalid", "message": str(exc)})
        except BackendRpcError as exc:
            await publish({"type": "outcome", "error": "rpc", "backend": exc.backend,
                           "code": exc.code, "message": exc.message, "data": exc.data})
        except BackendError as exc:
            await publish({"type": "outcome", "error": "backend", "backend": exc.backend,
                           "message": str(exc)})
        except Exception:
            logger.exception("a forwarded input_required round failed")
            await publish({"type": "outcome", "error": "internal"})
        else:
            await publish({"type": "outcome", "result": outcome.result,
                           "inputRequests": outcome.input_requests,
                           "requestState": outcome.request_state})

    async def _resume_elsewhere(self, token: str, binding: str, target: tuple[str, str],
                                responses: dict[str, Any] | None, sink: Notify) -> Outcome:
        """Forward a retry to the replica that holds ``token``'s call, and follow it."""
        assert self._relay is not None
        relay = self._relay
        nonce = secrets.token_urlsafe(16)
        inbox, received = anyio.create_memory_object_stream[dict[str, Any]](256)

        def deliver(payload: dict[str, Any]) -> None:
            try:
                inbox.send_nowait(payload)
            except anyio.WouldBlock:
                logger.warning("dropped a forwarded round's %s: too many waiting",
                               payload.get("type"))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the retry is over; whatever comes late has nobody to go to

        try:
            async with inbox, received, relay.listen(REPLY_CHANNEL + nonce, deliver):
                await relay.publish(ROUND_CHANNEL + token, {
                    "type": "resume", "binding": binding, "target": list(target),
                    "responses": responses, "reply": nonce})
                with anyio.move_on_after(self._relay_timeout):
                    first = await received.receive()
                    if first.get("type") == "accepted":
                        with anyio.fail_after(self._timeout):
                            while (message := await received.receive()).get("type") != "outcome":
                                if isinstance(message.get("message"), dict):
                                    await sink(message["message"])
                        return _outcome_of(message)
                    if first.get("type") == "outcome":
                        return _outcome_of(first)
        except (StoreError, TimeoutError) as exc:
            logger.warning("could not forward an input_required round: %s", exc)
        raise InvalidRound("Invalid or expired requestState")


def _outcome_of(message: dict[str, Any]) -> Outcome:
    """The outcome a holder replica sent for a forwarded retry (or the error it raised)."""
    error = message.get("error")
    backend = str(message.get("backend", "?"))
    if error == "invalid":
        raise InvalidRound(str(message.get("message", "Invalid or expired requestState")))
    if error == "rpc":
        code = message.get("code")
        raise BackendRpcError(backend, code if isinstance(code, int) else -32603,
                              str(message.get("message", "")), message.get("data"))
    if error == "backend":
        raise ForwardedBackendError(backend, str(message.get("message", "backend error")))
    if error is not None:
        raise RuntimeError("the replica holding the call failed to continue it")
    result = message.get("result")
    requests = message.get("inputRequests")
    state = message.get("requestState")
    return Outcome(result=result if isinstance(result, dict) else None,
                   input_requests=requests if isinstance(requests, dict) else None,
                   request_state=state if isinstance(state, str) else None)


def _retrieve(task: asyncio.Task[dict[str, Any]]) -> None:
    """Mark a call's failure as seen: a call cancelled or expired has nobody to report to."""
    if not task.cancelled():
        task.exception()


def is_round_token(state: object) -> bool:
    """Whether a ``requestState`` is one of the gateway's own (not a backend's)."""
    return isinstance(state, str) and state.startswith(TOKEN_PREFIX)
