"""Shards on "other hosts": each in its own network namespace, joined to this one by a veth pair
(Debian's iproute2), in cluster mode; the broker and the front end stay here. Skipped, with the
reason, where namespaces cannot be made (not root, no CAP_SYS_ADMIN, no iproute2)."""
from __future__ import annotations

import ipaddress
import random
import shutil
import subprocess
import sys
import uuid

import pytest

from common import protocol as P
from tests.cluster_support import FAST
from tests.support import Proc, base_env, free_port, poll_for, quote, request, zmq_call
from common.local_broker import broker_args


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def free_subnet() -> ipaddress.IPv4Network:
    """A /29 of 10.213.0.0/16 that no route of this host overlaps."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(w.split("/")[0] + ("/" + w.split("/")[1] if "/" in w else "/32"), strict=False)
             for line in routes.splitlines() for w in line.split()[:1] if w[0].isdigit()]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.213.{random.randrange(256)}.{8 * random.randrange(32)}/29")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise AssertionError("no free subnet")


@pytest.fixture
def hosts():
    """Two namespaces, each with a veth to this one: [(namespace, its address, our address)].
    Nothing is forwarded between the two (no global sysctl is touched): each reaches this
    namespace only, as a shard host reaches the brokers and the front ends."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []
    net = list(free_subnet().hosts())  # 6 addresses: two /30-like pairs
    out = []
    try:
        for n, (here, there) in enumerate([(net[0], net[1]), (net[3], net[4])]):
            ns, veth = f"fs13-{tag}-{n}", f"fs{tag}{n}"
            try:
                ip("netns", "add", ns)
            except (subprocess.CalledProcessError, OSError) as exc:
                pytest.skip(f"cannot create a network namespace here: {getattr(exc, 'stderr', exc)}".strip())
            made.append(ns)
            ip("link", "add", veth + "h", "type", "veth", "peer", "name", veth + "n")
            ip("link", "set", veth + "n", "netns", ns)
            ip("addr", "add", f"{here}/30", "dev", veth + "h")
            ip("link", "set", veth + "h", "up")
            ip("netns", "exec", ns, "ip", "addr", "add", f"{there}/30", "dev", veth + "n")
            ip("netns", "exec", ns, "ip", "link", "set", veth + "n", "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            ip("netns", "exec", ns, "ip", "route", "add", "default", "via", str(here))
            out.append((ns, str(there), str(here)))
        yield out
    finally:
        for ns in made:  # deleting a namespace deletes its veth end, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_shards_in_other_namespaces_serve_through_a_front_end_here(hosts, tmp_path):
    broker_host = hosts[0][2]  # our end of the first pair: reachable from both namespaces
    bootstrap = f"{broker_host}:{free_port()}"
    broker = Proc(broker_args(bootstrap), env={"PATH": "/usr/bin:/bin"}, log_path=tmp_path / "tansu.log",
                  stdin=subprocess.DEVNULL)
    procs = [broker]
    try:
        topic = f"features-{uuid.uuid4().hex[:8]}"
        fs = dict(cluster_kafka=bootstrap, cluster_topic=topic, cluster_partitions=4, shard_timeout_s=1.0,
                  ingest_stats_endpoint="", **FAST)
        endpoints = {}
        for (ns, there, _), replica in zip(hosts, "ab"):
            port = free_port()
            env = base_env(**fs, replica=replica, shard_bind_host=there, shard_base_port=port)
            procs.append(Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "shard", "--index", "0"], env,
                              tmp_path / f"shard-{replica}.log"))
            endpoints[replica] = f"tcp://{there}:{port}"
        http_port = free_port()
        frontend = Proc([sys.executable, "-m", "frontend"], base_env(**fs, http_port=http_port),
                        tmp_path / "frontend.log")
        procs.append(frontend)
        url = f"http://127.0.0.1:{http_port}"

        def ready():
            for p in procs:
                assert p.alive(), p.output()
            return request("GET", url + "/readyz")[0] == 200

        poll_for(ready, 60, interval=0.2, what="the namespaced shards to serve every partition")

        def both():  # each replica set (host) serves every partition
            body = request("GET", url + "/readyz")[2]
            return (sorted(s["endpoint"] for s in body["shards"]) == sorted(endpoints.values())
                    and all(s["serving"] == [0, 1, 2, 3] for s in body["shards"]))

        poll_for(both, 60, interval=0.2, what="both namespaced shards to serve every partition")
        for i in range(20):
            eid = f"far/{i}"
            status, _, reply = request("POST", url + "/features", {"entity_id": eid, "features": {"x": i}})
            assert status == 200, reply
            status, _, reply = request("GET", url + "/features/" + quote(eid))
            assert status == 200 and reply["features"] == {"x": i}, reply
        for replica, endpoint in endpoints.items():  # both hosts hold every value (R = 2)
            reply = zmq_call(endpoint, [P.get("far/7", req_id=1)], 2000)[0]
            assert P.is_ok(reply), (replica, reply)
    finally:
        for p in reversed(procs):
            p.stop()
