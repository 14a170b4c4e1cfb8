"""frontend/endpoints.py without sockets: run_coroutine, which runs an endpoint's coroutine without a Task."""
import asyncio

import pytest

from frontend.endpoints import run_coroutine


def outcome_of(make_coro):
    """Run ``make_coro()`` through run_coroutine on a fresh loop; return (result, exception)."""
    async def main():
        got = asyncio.get_running_loop().create_future()
        run_coroutine(make_coro(), lambda result, exc: got.set_result((result, exc)))
        return await asyncio.wait_for(got, 2.0)
    return asyncio.run(main())


def test_a_coroutine_that_never_waits_is_done_at_once():
    async def now():
        return 42
    assert outcome_of(now) == (42, None)


def test_awaited_futures_resume_it_in_order_until_it_returns():
    async def two_steps():
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        loop.call_later(0.01, first.set_result, 1)
        loop.call_soon(second.set_result, 2)
        a = await first
        await asyncio.sleep(0)  # a bare yield
        b = await second
        return a + b
    assert outcome_of(two_steps) == (3, None)


def test_an_exception_raised_or_awaited_is_passed_on():
    async def fails_after_a_wait():
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_exception, ValueError("from the shard"))
        await fut
    result, exc = outcome_of(fails_after_a_wait)
    assert result is None and isinstance(exc, ValueError) and str(exc) == "from the shard"


def test_a_task_awaited_inside_is_awaited_like_any_future():
    async def inner():
        await asyncio.sleep(0.01)
        return "inner"

    async def outer():
        return await asyncio.ensure_future(inner())
    assert outcome_of(outer) == ("inner", None)


@pytest.mark.parametrize("delay", [0, 0.01])
def test_the_coroutine_runs_on_the_running_loop(delay):
    async def which_loop():
        await asyncio.sleep(delay)
        return asyncio.get_running_loop()
    result, exc = outcome_of(which_loop)
    assert exc is None and isinstance(result, asyncio.AbstractEventLoop)


def test_a_finished_coroutine_leaves_no_garbage_for_the_collector():
    import gc

    async def waits():
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, 1)
        return await fut

    async def main():
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                got = asyncio.get_running_loop().create_future()
                run_coroutine(waits(), lambda result, exc, got=got: got.set_result(result))
                assert await got == 1
            return gc.collect()
        finally:
            gc.enable()
    assert asyncio.run(main()) == 0  # everything was freed by reference counting
