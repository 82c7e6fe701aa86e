"""Dynamic batching: concurrent requests share a forward pass, and each gets exactly the numbers
it would get alone with the same seed."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from model.config.train import TrainConfig
from model.core.preprocess import scale
from model.data.loading import load_data
from service.app import create_app
from service.core.batching import ArrivalGate, Batcher
from service.core.errors import BadInputError, NotReadyError
from service.settings import Settings


# --- the batcher on its own ------------------------------------------------------------------------

@dataclass(frozen=True)
class Echo:
    rows: int
    value: int
    key: tuple = ()


def echo_batches(record: list):
    def run(calls):
        record.append([c.value for c in calls])
        if any(c.value < 0 for c in calls):
            raise BadInputError(f"negative value in {[c.value for c in calls]}")
        return [c.value * 10 for c in calls]

    return run


async def _batcher(run, gate=None, **kw):
    settings = dict(max_batch_size=4, max_wait_s=0.2, max_queue=100) | kw
    return Batcher("test", run, executor=ThreadPoolExecutor(1), gate=gate or ArrivalGate(), **settings)


def test_each_caller_gets_its_own_result_and_passes_respect_the_size_limit():
    record = []

    async def main():
        gate = ArrivalGate()
        tickets = [gate.enter() for _ in range(10)]  # ten requests are on their way
        batcher = await _batcher(echo_batches(record), gate)

        async def one(i):
            tickets[i].close()
            return await batcher.submit(Echo(rows=1 + i % 2, value=i))

        results = await asyncio.gather(*(one(i) for i in range(10)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert sorted(v for batch in record for v in batch) == list(range(10))
    assert all(sum(1 + v % 2 for v in batch) <= 4 for batch in record)  # rows per pass
    assert len(record) < 10  # they were batched


def test_calls_with_different_keys_never_share_a_pass():
    record = []

    async def main():
        gate = ArrivalGate()
        batcher = await _batcher(echo_batches(record), gate, max_batch_size=100)
        calls = [Echo(1, i, key=("k", i % 2)) for i in range(6)]
        return await asyncio.gather(*(batcher.submit(c) for c in calls))

    assert asyncio.run(main()) == [i * 10 for i in range(6)]
    assert all(len({v % 2 for v in batch}) == 1 for batch in record)


def test_a_lone_request_does_not_wait_for_companions():
    async def main():
        batcher = await _batcher(echo_batches([]), max_wait_s=5.0)
        started = time.perf_counter()
        assert await batcher.submit(Echo(1, 1)) == 10
        return time.perf_counter() - started

    assert asyncio.run(main()) < 2.5  # nobody else is arriving: no reason to sit out the 5 s


def test_waits_at_most_max_wait_for_requests_still_arriving():
    async def main():
        gate = ArrivalGate()
        gate.enter()  # a request that never reaches the batcher
        batcher = await _batcher(echo_batches([]), gate, max_wait_s=0.3)
        started = time.perf_counter()
        await batcher.submit(Echo(1, 1))
        return time.perf_counter() - started

    assert 0.25 <= asyncio.run(main()) < 5


def test_one_bad_call_fails_alone():
    record = []

    async def main():
        gate = ArrivalGate()
        tickets = [gate.enter() for _ in range(3)]
        batcher = await _batcher(echo_batches(record), gate)

        async def one(i, value):
            tickets[i].close()
            return await batcher.submit(Echo(1, value))

        return await asyncio.gather(one(0, 1), one(1, -1), one(2, 3), return_exceptions=True)

    first, bad, third = asyncio.run(main())
    assert (first, third) == (10, 30) and isinstance(bad, BadInputError)
    assert record[0] == [1, -1, 3]  # tried together first, then one by one


def test_close_finishes_queued_calls_then_refuses_new_ones():
    release = threading.Event()

    def slow(calls):
        release.wait(5)
        return [c.value for c in calls]

    async def main():
        batcher = await _batcher(slow, max_batch_size=1)
        pending = [asyncio.ensure_future(batcher.submit(Echo(1, i))) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # still draining
        release.set()
        await closing
        with pytest.raises(NotReadyError):
            await batcher.submit(Echo(1, 9))
        return [p.result() for p in pending]

    assert asyncio.run(main()) == [0, 1, 2]


# --- through the app ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(model_dir, asgi_client):
    # A long max_wait: concurrent requests surely meet in one pass.
    return asgi_client(create_app(Settings(model_dir=model_dir, max_wait_ms=500, max_batch_size=64)))


@pytest.fixture(scope="module")
def digits():
    return scale(load_data(TrainConfig.of(train_subset=100)).test.x[:12]).reshape(12, -1).tolist()  # uint8 -> [0, 1]


def passes(client, operation: str) -> tuple[float, float]:
    text = client.get("/metrics").text
    count = re.search(rf'vae_batch_requests_count{{model="tiny",operation="{operation}"}} (\S+)', text)
    total = re.search(rf'vae_batch_requests_sum{{model="tiny",operation="{operation}"}} (\S+)', text)
    return (float(count.group(1)), float(total.group(1))) if count else (0.0, 0.0)


def bodies(operation: str, digits) -> list[dict]:
    """Six requests of different sizes and seeds (some without a seed for deterministic ops)."""
    sizes = [1, 3, 2, 1, 4, 1]
    starts = np.cumsum([0, *sizes])
    out = []
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        body = {"n": int(b - a)} if operation == "sample" else {"images": digits[a:b]}
        body |= {"elbo": {}, "iwae": {"k": 16}, "encode": {"num_samples": 3}, "anomaly": {},
                 "sample": {}, "reconstruct": {}, "classify": {}}[operation]
        if operation not in ("reconstruct", "classify"):
            body["seed"] = 100 + i
        out.append(body)
    return out


@pytest.mark.parametrize("operation", ["elbo", "iwae", "encode", "sample", "anomaly", "reconstruct", "classify"])
def test_batched_answers_equal_one_at_a_time_answers(client, digits, operation):
    requests = bodies(operation, digits)
    alone = [client.post(f"/models/tiny/{operation}", json=body) for body in requests]
    before = passes(client, operation)
    together = client.gather([("POST", f"/models/tiny/{operation}", {"json": body}) for body in requests])
    after = passes(client, operation)
    assert all(r.status_code == 200 for r in alone + together), [r.text for r in alone + together]
    for one, many in zip(alone, together):
        a, b = one.json(), many.json()
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(a[name], list):
                # Same noise, same rows: equal up to float rounding of a larger matrix product.
                np.testing.assert_allclose(np.asarray(b[name], float), np.asarray(a[name], float),
                                           rtol=1e-5, atol=1e-5, err_msg=f"{operation}.{name}")
            else:
                assert a[name] == b[name]
        rows = len(next(v for v in a.values() if isinstance(v, list)))
        assert rows == (requests[alone.index(one)].get("n") or len(requests[alone.index(one)]["images"]))
    new_passes, new_requests = after[0] - before[0], after[1] - before[1]
    assert new_requests == len(requests) and new_passes < len(requests), (new_passes, new_requests)


def test_requests_with_different_k_are_answered_with_their_own_k(client, digits):
    requests = [{"images": digits[:2], "k": k, "seed": 1} for k in (4, 16, 4, 64)]
    responses = client.gather([("POST", "/models/tiny/iwae", {"json": body}) for body in requests])
    assert [r.json()["k"] for r in responses] == [4, 16, 4, 64]
    assert responses[0].json() == responses[2].json()


def test_the_event_loop_answers_while_a_forward_pass_runs(client, digits):
    """Forward passes run in the inference thread: while one is busy, other requests are served."""
    release = threading.Event()
    busy = client.app.state.service.inference.executor.submit(release.wait, 10)  # a pass that takes long

    async def scenario():
        pending = asyncio.ensure_future(client.client.post("/models/tiny/elbo", json={"images": digits[:1]}))
        await asyncio.sleep(0.2)
        others = await asyncio.gather(client.client.get("/health/live"), client.client.get("/models"),
                                      client.client.post("/models/tiny/elbo", json={"images": [[2.0] * 784]}))
        still_waiting = not pending.done()
        release.set()
        return others, still_waiting, await pending

    others, still_waiting, answered = client.run(scenario())
    assert [r.status_code for r in others] == [200, 200, 422]  # 422: checked without a forward pass
    assert still_waiting and answered.status_code == 200
    busy.result()
