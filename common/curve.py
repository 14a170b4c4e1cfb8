"""CurveZMQ on the shard and ingest links: certificates, and the server and client side of a socket.

``FS_CURVE_DIR`` names a directory holding the files ``zmq.auth.create_certificates`` writes:
``server.key`` / ``server.key_secret`` and ``client.key`` / ``client.key_secret``. A ROUTER
(shard, ingest) serves with the server's secret key and admits only peers that present the
client's public key; a DEALER (front end, ingest writer, producer) connects with the client's
secret key and checks the server's public key. Generate them once and copy them to every host::

    python -m common.curve DIR

Client keys are checked by pyzmq's authenticator thread (one per process, answering ZAP requests
on ``inproc://zeromq.zap.01``): the shard's own loop stays single-threaded.
"""
from __future__ import annotations

import hmac
import logging
import os
import sys
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER, CLIENT = "server", "client"
ZAP_DOMAIN = "shardstore"


class CurveError(ValueError):
    """A certificate is missing or unreadable."""


def generate(directory: str) -> list[Path]:
    """Write the server and client certificates into ``directory``; return the files written."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    written = []
    for name in (SERVER, CLIENT):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


def _load(directory: str, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(directory) / (f"{name}.key_secret" if secret else f"{name}.key")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"FS_CURVE_DIR: cannot read {path}: {exc}") from None
    if secret and not secret_key:
        raise CurveError(f"FS_CURVE_DIR: {path} holds no secret key")
    return public, secret_key


def serve(sock: zmq.Socket, directory: str) -> None:
    """Make ``sock`` (before it binds) a CURVE server with the server's keys.

    Peers are checked by the process's authenticator (:func:`start_authenticator`)."""
    public, secret = _load(directory, SERVER, secret=True)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no authenticator answering: nobody gets in


def connect_as_client(sock: zmq.Socket, directory: str) -> None:
    """Give ``sock`` (before it connects) the client's keys and the server's public key."""
    server_public, _ = _load(directory, SERVER, secret=False)
    public, secret = _load(directory, CLIENT, secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


class _ClientKey:
    """Admits exactly the client's public key (compared in constant time)."""

    def __init__(self, z85_public: bytes) -> None:
        self.z85_public = z85_public

    def callback(self, domain: str, z85_key: bytes) -> bool:
        return hmac.compare_digest(z85_key, self.z85_public)


def start_authenticator(ctx: zmq.Context, directory: str | None) -> ThreadAuthenticator | None:
    """Start the thread that admits only the client key to this context's CURVE servers (None
    when ``directory`` is None: plain tcp). Stop it (``.stop()``) before terminating the context."""
    if not directory:
        return None
    public, _ = _load(directory, CLIENT, secret=False)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("curve"))
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, _ClientKey(public))  # the file holds Z85 text
    return auth


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m common.curve DIR   (writes server.key[_secret], client.key[_secret])",
              file=sys.stderr)
        return 2
    for path in generate(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
