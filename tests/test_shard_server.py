"""The shard's loop itself, on an in-process socket."""
import logging

import zmq

from shard.handlers import ShardState
from shard.server import Server, bind


def test_a_failing_chore_is_logged_and_the_loop_goes_on(caplog):
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    def stop_after_three():
        if len(calls) >= 3:
            server.stop()

    sock = bind(zmq.Context.instance(), "inproc://shard-server-test")
    try:
        server = Server(ShardState(0), sock, chores=[broken, stop_after_three])
        with caplog.at_level(logging.ERROR):
            server.run()
    finally:
        sock.close()
    assert len(calls) == 3 and "chore broken failed" in caplog.text and "boom" in caplog.text
