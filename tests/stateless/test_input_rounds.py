"""A session-based backend's questions to its client, as ``input_required`` rounds."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from vmcp.backend import BackendRpcError
from vmcp.errors import InvalidRound
from vmcp.stateless.input_rounds import Ask, InputRounds, Notify, is_round_token

pytestmark = pytest.mark.anyio

TARGET = ("tools/call", "weather_ask_llm")
SAMPLING = {"messages": [], "maxTokens": 10}


class Collected:
    """A sink for the notifications of the request attached to a call."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


async def asks_once(ask: Ask, notify: Notify) -> dict[str, Any]:
    answer = await ask("sampling/createMessage", SAMPLING)
    return {"content": [{"type": "text", "text": f"model said {answer}"}]}


async def test_a_call_that_needs_nothing_answers_at_once() -> None:
    rounds = InputRounds(answer_timeout=60)

    async def plain(ask: Ask, notify: Notify) -> dict[str, Any]:
        await notify({"method": "notifications/progress", "params": {"progress": 1}})
        return {"content": []}

    sink = Collected()
    outcome = await rounds.start("alice", TARGET, plain, sink)
    assert outcome.result == {"content": []}
    assert sink.messages == [{"method": "notifications/progress", "params": {"progress": 1}}]
    assert len(rounds) == 0


async def test_a_question_becomes_a_round_and_the_retry_answers_it() -> None:
    rounds = InputRounds(answer_timeout=60)
    outcome = await rounds.start("alice", TARGET, asks_once, Collected())
    assert outcome.result is None
    assert outcome.input_requests == {
        "r1": {"method": "sampling/createMessage", "params": SAMPLING}}
    assert is_round_token(outcome.request_state)
    assert len(rounds) == 1

    assert outcome.request_state is not None
    done = await rounds.resume(outcome.request_state, "alice", TARGET,
                               {"r1": {"role": "assistant", "content": "hi"}}, Collected())
    assert done.result == {"content": [{"type": "text", "text": "model said {'result': "
                                                                "{'role': 'assistant', "
                                                                "'content': 'hi'}}"}]}
    assert len(rounds) == 0


async def test_each_round_has_a_new_token_and_a_used_one_is_refused() -> None:
    rounds = InputRounds(answer_timeout=60)

    async def asks_twice(ask: Ask, notify: Notify) -> dict[str, Any]:
        await ask("elicitation/create", {"message": "name?"})
        await ask("elicitation/create", {"message": "colour?"})
        return {"content": []}

    first = await rounds.start("alice", TARGET, asks_twice, Collected())
    assert first.request_state is not None
    second = await rounds.resume(first.request_state, "alice", TARGET,
                                 {"r1": {"action": "accept"}}, Collected())
    assert second.input_requests == {
        "r2": {"method": "elicitation/create", "params": {"message": "colour?"}}}
    assert second.request_state not in (None, first.request_state)
    with pytest.raises(InvalidRound):
        await rounds.resume(first.request_state, "alice", TARGET,
                            {"r1": {"action": "accept"}}, Collected())
    assert second.request_state is not None
    done = await rounds.resume(second.request_state, "alice", TARGET,
                               {"r2": {"action": "accept"}}, Collected())
    assert done.result == {"content": []}


async def test_another_identity_or_request_cannot_use_the_token() -> None:
    rounds = InputRounds(answer_timeout=60)
    outcome = await rounds.start("alice", TARGET, asks_once, Collected())
    token = outcome.request_state
    assert token is not None
    with pytest.raises(InvalidRound):
        await rounds.resume(token, "mallory", TARGET, {"r1": {}}, Collected())
    with pytest.raises(InvalidRound):
        await rounds.resume(token, "alice", ("tools/call", "other_tool"), {"r1": {}},
                            Collected())
    with pytest.raises(InvalidRound):
        await rounds.resume("vmcp-round.never-minted", "alice", TARGET, {"r1": {}},
                            Collected())
    # The owner's call is untouched by all of that.
    done = await rounds.resume(token, "alice", TARGET, {"r1": {"content": "ok"}}, Collected())
    assert done.result is not None


async def test_a_missing_answer_is_asked_for_again() -> None:
    rounds = InputRounds(answer_timeout=60)
    outcome = await rounds.start("alice", TARGET, asks_once, Collected())
    assert outcome.request_state is not None
    again = await rounds.resume(outcome.request_state, "alice", TARGET,
                                {"wrong_key": {"action": "accept"}}, Collected())
    assert again.input_requests == outcome.input_requests
    assert again.request_state != outcome.request_state


async def test_an_answer_that_is_not_an_object_is_refused_and_the_round_stays() -> None:
    rounds = InputRounds(answer_timeout=60)
    outcome = await rounds.start("alice", TARGET, asks_once, Collected())
    token = outcome.request_state
    assert token is not None
    with pytest.raises(InvalidRound):
        await rounds.resume(token, "alice", TARGET, {"r1": 12345}, Collected())
    done = await rounds.resume(token, "alice", TARGET, {"r1": {"content": "ok"}}, Collected())
    assert done.result is not None


async def test_questions_asked_together_come_in_one_round() -> None:
    rounds = InputRounds(answer_timeout=60)

    async def asks_two_at_once(ask: Ask, notify: Notify) -> dict[str, Any]:
        answers: list[dict[str, Any]] = []

        async def one(method: str) -> None:
            answers.append(await ask(method, None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "roots/list")
            tg.start_soon(one, "elicitation/create")
        return {"answers": len(answers)}

    outcome = await rounds.start("alice", TARGET, asks_two_at_once, Collected())
    assert outcome.input_requests is not None
    assert sorted(r["method"] for r in outcome.input_requests.values()) == [
        "elicitation/create", "roots/list"]
    assert outcome.request_state is not None
    answers = {key: {"roots": []} for key in outcome.input_requests}
    done = await rounds.resume(outcome.request_state, "alice", TARGET, answers, Collected())
    assert done.result == {"answers": 2}


async def test_a_round_nobody_answers_in_time_is_cancelled() -> None:
    now = [0.0]
    rounds = InputRounds(answer_timeout=30, clock=lambda: now[0])
    cancelled = anyio.Event()

    async def waits(ask: Ask, notify: Notify) -> dict[str, Any]:
        try:
            return await ask("elicitation/create", None)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    outcome = await rounds.start("alice", TARGET, waits, Collected())
    assert rounds.sweep() == 0
    now[0] += 31
    assert rounds.sweep() == 1
    with anyio.fail_after(5):
        await cancelled.wait()
    assert outcome.request_state is not None
    with pytest.raises(InvalidRound):
        await rounds.resume(outcome.request_state, "alice", TARGET, {}, Collected())


async def test_a_client_that_goes_away_while_waiting_cancels_the_call() -> None:
    rounds = InputRounds(answer_timeout=60)
    started, cancelled = anyio.Event(), anyio.Event()

    async def slow(ask: Ask, notify: Notify) -> dict[str, Any]:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return {}

    async with anyio.create_task_group() as tg:
        tg.start_soon(rounds.start, "alice", TARGET, slow, Collected())
        await started.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(5):
        await cancelled.wait()


async def test_a_failing_call_raises_to_the_request_following_it() -> None:
    rounds = InputRounds(answer_timeout=60)

    async def fails_after_asking(ask: Ask, notify: Notify) -> dict[str, Any]:
        await ask("roots/list", None)
        raise RuntimeError("backend broke")

    outcome = await rounds.start("alice", TARGET, fails_after_asking, Collected())
    assert outcome.request_state is not None
    with pytest.raises(RuntimeError, match="backend broke"):
        await rounds.resume(outcome.request_state, "alice", TARGET, {"r1": {"roots": []}},
                            Collected())
    assert len(rounds) == 0


# -- across replicas ------------------------------------------------------------------


class FakeRelay:
    """An in-memory ``SessionRelay``: payloads go through JSON, as over Redis."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}

    async def publish(self, session_id: str, payload: dict[str, Any]) -> int:
        handlers = list(self.handlers.get(session_id, []))
        for handler in handlers:
            handler(json.loads(json.dumps(payload)))
        return len(handlers)

    @contextlib.asynccontextmanager
    async def listen(self, session_id: str,
                     handler: Callable[[dict[str, Any]], None]) -> AsyncIterator[None]:
        self.handlers.setdefault(session_id, []).append(handler)
        try:
            yield
        finally:
            self.handlers[session_id].remove(handler)


def replicas(count: int) -> tuple[FakeRelay, list[InputRounds]]:
    relay = FakeRelay()
    return relay, [InputRounds(answer_timeout=60, relay=relay, relay_timeout=0.5)
                   for _ in range(count)]


async def test_a_retry_on_another_replica_reaches_the_parked_call() -> None:
    relay, (first, second) = replicas(2)

    async def asks_then_reports(ask: Ask, notify: Notify) -> dict[str, Any]:
        answer = await ask("elicitation/create", {"message": "name?"})
        await notify({"method": "notifications/progress", "params": {"progress": 1}})
        return {"content": [{"type": "text", "text": answer["result"]["content"]["name"]}]}

    outcome = await first.start("alice", TARGET, asks_then_reports, Collected())
    assert outcome.request_state is not None
    sink = Collected()
    done = await second.resume(outcome.request_state, "alice", TARGET,
                               {"r1": {"action": "accept", "content": {"name": "Ada"}}}, sink)
    assert done.result == {"content": [{"type": "text", "text": "Ada"}]}
    assert sink.messages == [{"method": "notifications/progress", "params": {"progress": 1}}]
    assert len(first) == 0
    assert not any(relay.handlers.values())  # every subscription was given up


async def test_rounds_can_hop_between_replicas() -> None:
    _, (first, second, third) = replicas(3)

    async def asks_twice(ask: Ask, notify: Notify) -> dict[str, Any]:
        one = await ask("roots/list", None)
        two = await ask("roots/list", None)
        return {"roots": [one["result"], two["result"]]}

    outcome = await first.start("alice", TARGET, asks_twice, Collected())
    assert outcome.request_state is not None
    again = await second.resume(outcome.request_state, "alice", TARGET, {"r1": {"roots": []}},
                                Collected())
    assert again.input_requests == {"r2": {"method": "roots/list"}}
    assert again.request_state is not None
    done = await third.resume(again.request_state, "alice", TARGET, {"r2": {"roots": [1]}},
                              Collected())
    assert done.result == {"roots": [{"roots": []}, {"roots": [1]}]}


async def test_a_forwarded_retry_is_checked_like_a_local_one() -> None:
    _, (first, second) = replicas(2)
    outcome = await first.start("alice", TARGET, asks_once, Collected())
    token = outcome.request_state
    assert token is not None
    with pytest.raises(InvalidRound):
        await second.resume(token, "mallory", TARGET, {"r1": {}}, Collected())
    with pytest.raises(InvalidRound):
        await second.resume("vmcp-round.nobody-holds-this", "alice", TARGET, {}, Collected())
    done = await second.resume(token, "alice", TARGET, {"r1": {"content": "x"}}, Collected())
    assert done.result is not None


async def test_a_backend_error_comes_back_from_the_holding_replica() -> None:
    _, (first, second) = replicas(2)

    async def refuses(ask: Ask, notify: Notify) -> dict[str, Any]:
        await ask("sampling/createMessage", SAMPLING)
        raise BackendRpcError("weather", -32602, "bad question", {"why": "test"})

    outcome = await first.start("alice", TARGET, refuses, Collected())
    assert outcome.request_state is not None
    with pytest.raises(BackendRpcError) as caught:
        await second.resume(outcome.request_state, "alice", TARGET, {"r1": {}}, Collected())
    assert (caught.value.backend, caught.value.code, caught.value.message,
            caught.value.data) == ("weather", -32602, "bad question", {"why": "test"})
