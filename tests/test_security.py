"""Tokens from files, /metrics behind the read token, closed metric labels, CurveZMQ links."""
from __future__ import annotations

import sys

import pytest
import zmq

from common import config, curve
from common import protocol as P
from tests.support import Cluster, Proc, base_env, free_port, poll_for, request

W = {"entity_id": "t", "name": "x", "value": 1}


def auth(token):
    return {"Authorization": f"Bearer {token}"}


# ---- tokens from files
def test_token_files_set_the_tokens_without_surrounding_whitespace(tmp_path):
    (tmp_path / "r").write_text("reader-secret\n")
    (tmp_path / "w").write_text("  writer-secret \n")
    cfg = config.load([], {"FS_READ_TOKEN_FILE": str(tmp_path / "r"), "FS_WRITE_TOKEN_FILE": str(tmp_path / "w")})
    assert (cfg.read_token, cfg.write_token) == ("reader-secret", "writer-secret")


@pytest.mark.parametrize("setup, words", [
    (lambda p: {"FS_READ_TOKEN_FILE": str(p / "missing")}, "cannot read"),
    (lambda p: {"FS_READ_TOKEN_FILE": str(p / "empty")}, "is empty"),
    (lambda p: {"FS_WRITE_TOKEN_FILE": str(p / "empty"), "FS_WRITE_TOKEN": "x"}, "both set"),
])
def test_a_bad_token_file_is_a_config_error_naming_the_variable(tmp_path, setup, words):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(config.ConfigError, match=words) as info:
        config.load([], setup(tmp_path))
    assert "TOKEN" in str(info.value)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token-files")
    (tmp / "read.token").write_text("reader\n")
    (tmp / "write.token").write_text("writer\n")
    with Cluster(tmp, read_token_file=tmp / "read.token", write_token_file=tmp / "write.token") as c:
        yield c


def test_tokens_read_from_files_are_enforced(secured):
    status, headers, body = request("POST", secured.url + "/features", W)
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer", body
    assert request("POST", secured.url + "/features", W, auth("reader"))[0] == 403
    assert request("POST", secured.url + "/features", W, auth("writer"))[0] == 200
    assert request("GET", secured.url + "/features/t", headers=auth("reader"))[0] == 200
    status, headers, _ = request("GET", secured.url + "/features/t")
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"


def test_metrics_need_the_read_token_by_default(secured):
    status, headers, _ = request("GET", secured.url + "/metrics")
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
    assert request("GET", secured.url + "/metrics", headers=auth("nope"))[0] == 403
    status, _, text = request("GET", secured.url + "/metrics", headers=auth("reader"))
    assert status == 200 and b"featurestore_http_requests_total" in text


def test_metric_labels_come_from_closed_sets(secured):
    for method in ("BREW", "X-" + "A" * 50, "PROPFIND", "MKCOL"):  # an engine may refuse unknown ones (400)
        status = request(method, secured.url + "/features/t", headers=auth("writer"))[0]
        assert status in (400, 401, 403, 405), (method, status)
    text = request("GET", secured.url + "/metrics", headers=auth("reader"))[2].decode()
    assert 'method="other"' in text
    assert not any(m in text for m in ("BREW", "PROPFIND", "MKCOL", "X-AAAA"))


def test_metrics_open_lets_a_scraper_in_without_the_token(tmp_path):
    with Cluster(tmp_path, read_token="reader", metrics_open=1) as c:
        assert request("GET", c.url + "/metrics")[0] == 200
        assert request("GET", c.url + "/features/t")[0] == 401  # the rest stays behind it


# ---- CurveZMQ
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("curve") / "keys"
    assert curve.main([str(directory)]) == 0
    return str(directory)


def test_the_command_writes_both_certificates(keys):
    import os
    names = sorted(os.listdir(keys))
    assert names == ["client.key", "client.key_secret", "server.key", "server.key_secret"]
    assert os.stat(os.path.join(keys, "client.key_secret")).st_mode & 0o077 == 0


def _ask(endpoint: str, requests: list, setup, timeout_ms: int = 1500):
    """One frame to ``endpoint`` from a fresh DEALER prepared by ``setup``; the replies or None."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        setup(sock)
        sock.connect(endpoint)
        sock.send(P.encode(requests))
        return P.decode(sock.recv()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()
        ctx.term()


def _wrong_client_key(keys):
    def setup(sock):
        curve.connect_as_client(sock, keys)
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()  # a stranger's key pair
    return setup


def _plain(sock):
    pass


def test_a_curve_shard_answers_only_the_client_key(tmp_path, keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = base_env(shard_endpoints=endpoint, curve_dir=keys)
    shard = Proc([sys.executable, "-m", "shard", "--index", "0"], env, tmp_path / "shard.log")
    try:
        with_key = lambda sock: curve.connect_as_client(sock, keys)  # noqa: E731
        replies = poll_for(lambda: _ask(endpoint, [P.ping(1)], with_key, 300), 15, what="curve shard")
        assert P.is_ok(replies[0])
        assert _ask(endpoint, [P.ping(2)], _plain) is None
        assert _ask(endpoint, [P.ping(3)], _wrong_client_key(keys)) is None
        assert shard.alive()
        assert P.is_ok(_ask(endpoint, [P.ping(4)], with_key)[0])  # strangers did not hurt it
    finally:
        shard.stop()


def test_a_shard_without_its_certificates_refuses_to_start(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = base_env(shard_endpoints=endpoint, curve_dir=tmp_path / "nothing-here")
    shard = Proc([sys.executable, "-m", "shard", "--index", "0"], env, tmp_path / "shard.log")
    assert shard.popen.wait(15) == 2
    assert "FS_CURVE_DIR" in shard.output()
    shard.stop()
