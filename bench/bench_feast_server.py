"""Feast's own feature server side by side with ours, same data, same requests, same load generator.

Starts Redis (Debian's ``redis-server``) and ``feast serve --workers 2 --no-access-log
--max-requests 0`` over a Feast repository with one view of 10 features, loads 100,000 entities
through Feast's SDK, and drives ``POST /get-online-features`` (100 entities x 10 features) with
the wrk script of bench_batch.py. Then does the same against our cluster (2 shards, the given
number of front-end processes) and prints both and the ratio.

Needs Feast (``pip install -e '.[feast]'`` and ``feast[redis]`` for Feast's Redis store); give the
Python that has it with ``--feast-python`` when it is not this one.

    python3 bench/bench_feast_server.py --feast-python /path/to/venv/bin/python [--connections 1 16]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_batch as B  # noqa: E402
from tests.support import Cluster, Proc, base_env, free_port, poll_for, request  # noqa: E402

FEATURES_PY = f'''
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64
driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
source = FileSource(name="src", path="data/src.parquet", timestamp_field="event_timestamp")
view = FeatureView(name="{B.VIEW}", entities=[driver], ttl=timedelta(days=3650), online=True, source=source,
                   schema=[{", ".join(f'Field(name="{f}", dtype=Float64)' for f in B.FEATURES)}])
'''

LOAD_PY = f'''
import importlib.util, random, sys, time
import pandas as pd
from feast import FeatureStore
spec = importlib.util.spec_from_file_location("defs", "features.py")
defs = importlib.util.module_from_spec(spec); spec.loader.exec_module(defs)
ts = pd.Timestamp("2026-11-25T12:00:00", tz="UTC")
pd.DataFrame({{"driver_id": [0], "event_timestamp": [ts], **{{f: [0.0] for f in {B.FEATURES!r}}}}}).to_parquet("data/src.parquet")
store = FeatureStore(repo_path=".")
store.apply([defs.driver, defs.source, defs.view])
rng = random.Random(1)
start = time.perf_counter()
rows = 10000
for first in range(0, {B.ENTITIES}, rows):
    ids = list(range(first, min(first + rows, {B.ENTITIES})))
    df = pd.DataFrame({{"driver_id": ids, "event_timestamp": [ts] * len(ids),
                       **{{f: [round(rng.random(), 6) for _ in ids] for f in {B.FEATURES!r}}}}})
    store.write_to_online_store("{B.VIEW}", df)
print("LOADED", {B.ENTITIES} * {len(B.FEATURES)} / (time.perf_counter() - start))
'''


def feast_side(python: str, tmp: Path, connections: list[int], seconds: float, script: str, body_file: str) -> dict:
    feast_bin = str(Path(python).parent / "feast")
    redis_port, http_port = free_port(), free_port()
    redis = Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no"], base_env(), tmp / "redis.log")
    repo = tmp / "feast_repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\nprovider: local\nregistry: data/registry.db\n"
        f"online_store:\n  type: redis\n  connection_string: 127.0.0.1:{redis_port}\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")
    (repo / "features.py").write_text(FEATURES_PY)
    (repo / "load.py").write_text(LOAD_PY)
    server = None
    try:
        poll_for(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", 10, what="redis")
        out = subprocess.run([python, "load.py"], cwd=repo, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        rate = float(out.stdout.split("LOADED")[1])
        print(f"feast: loaded {B.ENTITIES} x {len(B.FEATURES)} through the SDK into Redis at {rate:,.0f} values/s",
              flush=True)
        server = subprocess.Popen([feast_bin, "serve", "-h", "127.0.0.1", "-p", str(http_port), "--workers", "2",
                                   "--no-access-log", "--max-requests", "0"], cwd=repo,
                                  stdout=open(tmp / "feast.log", "ab"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http_port}"
        poll_for(lambda: request("GET", url + "/health")[0] == 200, 60, interval=0.2, what="feast serve")
        B.check(url, "/get-online-features", Path(body_file).read_text().splitlines()[0])
        B.wrk(url, "/get-online-features", body_file, 4, 2, script)
        return {c: B.wrk(url, "/get-online-features", body_file, c, seconds, script) for c in connections}
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        redis.stop()


def ours_side(tmp: Path, processes: int, connections: list[int], seconds: float, script: str, body_file: str) -> dict:
    config = tmp / "store.toml"
    config.write_text(f'[views.{B.VIEW}]\njoin_keys = ["driver_id"]\n')
    (tmp / "ours").mkdir()
    with Cluster(tmp / "ours", frontend_processes=processes, config_file=config, shard_timeout_s=10) as cluster:
        B.load(cluster.url)
        B.check(cluster.url, "/get-online-features", Path(body_file).read_text().splitlines()[0])
        B.wrk(cluster.url, "/get-online-features", body_file, 4, 2, script)
        return {c: B.wrk(cluster.url, "/get-online-features", body_file, c, seconds, script) for c in connections}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feast-python", default=sys.executable)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "post.lua"
        script.write_text(B.LUA)
        body_file = tmp / "bodies.txt"
        body_file.write_text("\n".join(B.bodies("/get-online-features")) + "\n")
        theirs = feast_side(args.feast_python, tmp, args.connections, args.seconds, str(script), str(body_file))
        ours = ours_side(tmp, args.processes, args.connections, args.seconds, str(script), str(body_file))
    values = B.BATCH * len(B.FEATURES)
    for c in args.connections:
        for who, r in (("feast serve (2 workers, Redis)", theirs[c]), (f"ours ({args.processes} front end(s))", ours[c])):
            print(f"{who:34s} c={c:<3d} {r['rps']:8,.0f} req/s  p50 {r['p50_us'] / 1000:7.2f} ms  "
                  f"p99 {r['p99_us'] / 1000:7.2f} ms  {r['rps'] * values:12,.0f} values/s  "
                  f"errors {r['errors'] + r['non2xx']}")
        print(f"{'ratio ours / feast':34s} c={c:<3d} {ours[c]['rps'] / theirs[c]['rps']:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
