"""Record framing, recovery, snapshots and the journal of shard/persistence/, without sockets."""
from __future__ import annotations

import errno
import logging
import os

import msgpack
import pytest

from common import config
from common import protocol as P
from shard.handlers import ShardState, dispatch
from shard.persistence import (HEADER, FileOps, Journal, LogError, RecoveryError, SyncError,
                               frame, scan, write_snapshot)
from shard.store import Store

TS = 1_700_000_000_000_000


def records(*objs) -> bytes:
    return b"".join(frame(msgpack.packb(o)) for o in objs)


def journal(tmp_path, store=None, **kw) -> Journal:
    j = Journal(str(tmp_path / "shard-0"), store if store is not None else Store(), 0, **kw)
    j.recover()
    return j


def shard_with(j: Journal) -> ShardState:
    return ShardState(0, j.store, j)


def write(shard: ShardState, *writes) -> dict:
    return dispatch(shard, P.write([list(w) for w in writes], 1))


def wait_sync(j: Journal) -> None:
    j._stop_syncer()  # waits for the handed-over sync


def log_files(tmp_path) -> list:
    return sorted((tmp_path / "shard-0").glob("log-*.aof"))


# ---- framing
def test_scan_round_trips_records():
    buf = records([1, "a"], [2, "b", None], {"x": 1})
    found = scan(buf, "f", last=True, skip=False)
    assert [msgpack.unpackb(p) for p in found.payloads] == [[1, "a"], [2, "b", None], {"x": 1}]
    assert found.end == len(buf) and not found.torn and not found.damaged


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 3])
def test_a_torn_final_record_is_cut_off(cut):
    whole = records([1, "a"], [1, "bcdef"])
    buf = whole[:len(whole) - len(frame(msgpack.packb([1, "bcdef"]))) + cut]
    found = scan(buf, "f", last=True, skip=False)
    assert found.torn and len(found.payloads) == 1
    assert found.end == len(frame(msgpack.packb([1, "a"])))


def test_a_zero_filled_tail_is_torn():
    buf = records([1, "a"]) + bytes(64)
    found = scan(buf, "f", last=True, skip=False)
    assert found.torn and len(found.payloads) == 1


def test_a_torn_record_in_an_older_file_is_damage():
    buf = records([1, "a"], [1, "b"])[:-2]
    first = len(records([1, "a"]))
    with pytest.raises(RecoveryError, match=rf"log-7\.aof: damaged record at offset {first} "):
        scan(buf, "log-7.aof", last=False, skip=False)


def test_a_flipped_byte_names_file_and_offset_and_can_be_skipped():
    one, two, three = (frame(msgpack.packb([1, s])) for s in ("aa", "bb", "cc"))
    buf = bytearray(one + two + three)
    buf[len(one) + HEADER.size + 2] ^= 0xFF  # inside the second payload
    with pytest.raises(RecoveryError) as err:
        scan(bytes(buf), "/d/log-1.aof", last=True, skip=False)
    assert f"/d/log-1.aof: damaged record at offset {len(one)} (checksum mismatch)" in str(err.value)
    assert "FS_SKIP_DAMAGED" in str(err.value)
    found = scan(bytes(buf), "/d/log-1.aof", last=True, skip=True)
    assert [msgpack.unpackb(p) for p in found.payloads] == [[1, "aa"], [1, "cc"]]
    assert found.damaged == [len(one)]


def test_a_damaged_length_in_the_last_file_is_not_mistaken_for_a_torn_tail():
    one, two, three = (frame(msgpack.packb([1, s])) for s in ("aa", "bb", "cc"))
    buf = bytearray(one + two + three)
    buf[len(one) + 3] = 0x7F  # the second record now claims to run far past the end
    with pytest.raises(RecoveryError, match=rf"offset {len(one)} \(length \d+ runs past the end"):
        scan(bytes(buf), "f", last=True, skip=False)


def test_a_damaged_length_is_skipped_by_resynchronising():
    one, two, three = (frame(msgpack.packb([1, s])) for s in ("aa", "bb", "cc"))
    buf = bytearray(one + two + three)
    buf[len(one)] = 0  # length of the second record becomes wrong
    found = scan(bytes(buf), "f", last=False, skip=True)
    assert [msgpack.unpackb(p) for p in found.payloads] == [[1, "aa"], [1, "cc"]]


# ---- the journal
def test_writes_and_deletes_survive_a_restart(tmp_path):
    j = journal(tmp_path, fsync="always")
    shard = shard_with(j)
    assert write(shard, ("e1", "a", 1, TS), ("e1", "b", "x", TS), ("e2", "a", [1.5], TS))[P.OK]
    assert write(shard, ("e1", "a", 0, TS - 1))[P.STALE] == 1
    assert dispatch(shard, P.delete("e1", "b", 2))[P.OK]
    assert dispatch(shard, P.delete("nobody", None, 3))[P.CODE] == P.NOT_FOUND
    j.sync_pending()
    before = dict(j.store.data)
    again = journal(tmp_path)  # without close(): as after a crash
    assert again.store.data == before and again.store.values == 2
    assert again.info["replayed_records"] == 4 and again.info["replayed_values"] == 4


def test_shutdown_snapshot_means_nothing_to_replay(tmp_path):
    j = journal(tmp_path)
    shard = shard_with(j)
    for i in range(50):
        write(shard, (f"e{i}", "f", i, TS))
    j.close()
    again = journal(tmp_path)
    assert again.info["replayed_records"] == 0 and again.info["snapshot_entities"] == 50
    assert again.store.features("e7") == {"f": [7, TS]} and again.store.values == 50
    assert len(log_files(tmp_path)) <= 2  # the empty log of the snapshot's generation, the new one


def test_torn_tail_of_the_log_is_cut_with_a_warning(tmp_path, caplog):
    j = journal(tmp_path)
    shard = shard_with(j)
    write(shard, ("e1", "a", 1, TS))
    write(shard, ("e1", "b", 2, TS))
    path = log_files(tmp_path)[-1]
    os.truncate(path, path.stat().st_size - 3)
    with caplog.at_level(logging.WARNING):
        again = journal(tmp_path)
    assert "cut off a torn final record" in caplog.text and str(path) in caplog.text
    assert again.store.features("e1") == {"a": [1, TS]}
    third = journal(tmp_path)  # the cut is on disk: the file is no longer the last, and clean
    assert third.store.features("e1") == {"a": [1, TS]}


def test_a_corrupted_log_stops_recovery_unless_skipped(tmp_path):
    j = journal(tmp_path)
    shard = shard_with(j)
    for i in range(3):
        write(shard, ("e", f"f{i}", i, TS))
    path = log_files(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    size = len(data) // 3
    data[size + HEADER.size + 1] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(RecoveryError, match=rf"{path}: damaged record at offset {size} "):
        journal(tmp_path)
    skipped = journal(tmp_path, skip_damaged=True)
    assert skipped.store.features("e") == {"f0": [0, TS], "f2": [2, TS]}
    clean = journal(tmp_path)  # the skip wrote a snapshot: the damage is gone
    assert clean.store.features("e") == {"f0": [0, TS], "f2": [2, TS]}


def test_a_missing_log_generation_is_an_error(tmp_path):
    j = journal(tmp_path)
    write(shard_with(j), ("e", "a", 1, TS))
    j._rotate()
    write(shard_with(j), ("e", "b", 1, TS))
    j._rotate()
    write(shard_with(j), ("e", "c", 1, TS))
    os.unlink(log_files(tmp_path)[1])
    with pytest.raises(RecoveryError, match="is missing"):
        journal(tmp_path)
    skipped = journal(tmp_path, skip_damaged=True)
    assert skipped.store.features("e") == {"a": [1, TS], "c": [1, TS]}
    assert journal(tmp_path).store.features("e") == {"a": [1, TS], "c": [1, TS]}


def test_a_damaged_snapshot_is_an_error(tmp_path):
    store = Store()
    store.apply([["e", "a", 1, TS]])
    os.makedirs(tmp_path / "shard-0")
    path = write_snapshot(str(tmp_path / "shard-0"), 3, store, 0)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(RecoveryError, match="snapshot-00000003.snap: damaged record"):
        journal(tmp_path)


def test_forked_snapshot_while_writes_continue(tmp_path):
    j = journal(tmp_path, snapshot_log_bytes=1)
    shard = shard_with(j)
    for i in range(2000):
        write(shard, (f"e{i % 300}", f"f{i}", i, TS))
    j.tick()  # starts the child
    assert j.child is not None
    for i in range(2000, 2500):  # the parent keeps writing into the new generation
        write(shard, (f"e{i % 300}", f"f{i}", i, TS))
    pid = j.child[0]
    j._reap(0)  # wait for the child
    assert j.child is None and j.info["snapshots"] == 1, f"child {pid} failed"
    snaps = sorted((tmp_path / "shard-0").glob("snapshot-*.snap"))
    assert [s.name for s in snaps] == [f"snapshot-{j.gen:08d}.snap"]
    assert all(int(p.name[4:12]) >= j.gen for p in log_files(tmp_path))
    again = journal(tmp_path)
    assert again.store.data == j.store.data and again.store.values == 2500
    assert again.info["replayed_values"] == 500


def test_a_log_that_cannot_be_written_refuses_the_write(tmp_path):
    j = journal(tmp_path)
    shard = shard_with(j)
    os.close(j.fd)
    j.fd = os.open(os.devnull, os.O_RDONLY)  # every write fails (EBADF)
    reply = write(shard, ("e", "a", 1, TS))
    assert reply[P.CODE] == P.UNAVAILABLE and "cannot write its log" in reply[P.REASON]
    assert j.store.features("e") is None  # refused writes are not applied
    with pytest.raises(LogError) as err:
        j.log_delete("e", None)
    assert err.value.code == P.UNAVAILABLE and j.size == 0  # nothing half-written stays


def test_everysec_syncs_from_tick(tmp_path):
    j = journal(tmp_path, fsync="everysec")
    write(shard_with(j), ("e", "a", 1, TS))
    j.sync_pending()
    assert j.dirty  # commit fsyncs only under always
    j.last_sync -= 2
    j.tick()
    wait_sync(j)
    assert not j.dirty and j.sync_failed is None


def test_a_failed_everysec_fsync_refuses_writes_until_one_succeeds(tmp_path):
    j = journal(tmp_path, fsync="everysec")
    shard = shard_with(j)
    write(shard, ("e", "a", 1, TS))
    good = j.fd
    j.fd, w = os.pipe()  # fdatasync of a pipe fails (EINVAL)
    os.close(w)
    j.last_sync -= 2
    j.tick()
    wait_sync(j)
    assert j.sync_failed and "fsync of" in j.sync_failed
    reply = write(shard, ("e", "b", 2, TS))
    assert reply[P.CODE] == P.UNAVAILABLE and "refuses writes" in reply[P.REASON]
    os.close(j.fd)
    j.fd = good
    j.last_sync -= 2
    j.tick()
    wait_sync(j)
    assert j.sync_failed is None and write(shard, ("e", "b", 2, TS))[P.OK]


class Faults:
    """The journal's file operations, failing on demand: a write puts half its record on disk
    and reports a short write, a cut-back or an fsync raises EIO."""

    def __init__(self) -> None:
        self.half_writes = self.failed_cuts = self.failed_syncs = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.half_writes:
            self.half_writes -= 1
            return os.write(fd, data[: len(data) // 2])
        return os.write(fd, data)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.failed_cuts:
            self.failed_cuts -= 1
            raise OSError(errno.EIO, "Input/output error")
        os.ftruncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        if self.failed_syncs:
            self.failed_syncs -= 1
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)

    def ops(self) -> FileOps:
        return FileOps(write=self.write, ftruncate=self.ftruncate, fdatasync=self.fdatasync)


def sync_now(j: Journal) -> None:
    """One everysec fsync by the fsync thread, waited for."""
    j.last_sync -= 2
    j.tick()
    wait_sync(j)


def acked(shard: ShardState, acks: dict, eid: str, value) -> dict:
    """Write ``eid.f = value``; remember it in ``acks`` if it was acknowledged."""
    reply = write(shard, (eid, "f", value, TS))
    if reply[P.OK]:
        acks[eid] = value
    return reply


def read_back(tmp_path, acks: dict) -> Journal:
    again = journal(tmp_path)
    assert {e: again.store.features(e)["f"][0] for e in again.store.data} == acks
    return again


def test_a_failed_cut_back_is_not_cleared_by_a_later_fsync_and_no_acknowledged_write_is_lost(tmp_path):
    faults = Faults()
    j = journal(tmp_path, fsync="everysec", snapshot_log_bytes=1 << 30, ops=faults.ops())
    shard, acks = shard_with(j), {}
    assert acked(shard, acks, "a", 1)[P.OK]
    faults.half_writes, faults.failed_cuts = 1, 2  # b leaves half a record; two cut-backs fail
    reply = acked(shard, acks, "b", 2)
    assert reply["code"] == P.DISK_FULL and "cannot write its log" in reply["reason"]
    assert j.cut_failed and os.path.getsize(j.log_path) > j.size
    sync_now(j)  # an fsync succeeds: the log still ends in half a record
    assert j.sync_failed is None and j.cut_failed
    reply = acked(shard, acks, "c", 3)  # the cut-back is tried again and fails again
    assert reply["code"] == P.UNAVAILABLE and "cannot be cut back" in reply["reason"]
    assert acked(shard, acks, "d", 4)[P.OK]  # this time the cut-back works: writes resume
    assert j.cut_failed is None and os.path.getsize(j.log_path) == j.size
    faults.half_writes = 1  # another failed write: cut back to the end of d, not into it
    assert acked(shard, acks, "e", 5)["code"] == P.DISK_FULL
    assert acked(shard, acks, "f", 6)[P.OK]
    assert os.path.getsize(j.log_path) == j.size and acks == {"a": 1, "d": 4, "f": 6}
    wait_sync(j)
    read_back(tmp_path, acks)  # as after a crash


def test_a_log_that_cannot_be_cut_back_refuses_writes_and_snapshots_until_restart(tmp_path, caplog):
    faults = Faults()
    j = journal(tmp_path, fsync="everysec", snapshot_log_bytes=1, ops=faults.ops())
    shard, acks = shard_with(j), {}
    assert acked(shard, acks, "a", 1)[P.OK]
    faults.half_writes, faults.failed_cuts = 1, 10 ** 9  # the cut-back never works again
    assert acked(shard, acks, "b", 2)["code"] == P.DISK_FULL
    sync_now(j)
    assert j.child is None and "cannot start a snapshot" in caplog.text  # no rotation past a torn record
    for i in range(3):
        assert acked(shard, acks, f"x{i}", i)["code"] == P.UNAVAILABLE
    j.close()  # the final snapshot cannot rotate either: the log is kept
    assert "final snapshot failed" in caplog.text
    with caplog.at_level(logging.WARNING):
        read_back(tmp_path, acks)
    assert "cut off a torn final record" in caplog.text  # half of b, never acknowledged


def test_a_failed_fsync_under_always_acknowledges_nothing(tmp_path):
    faults = Faults()
    j = journal(tmp_path, fsync="always", ops=faults.ops())
    write(shard_with(j), ("e", "a", 1, TS))
    faults.failed_syncs = 1
    with pytest.raises(SyncError, match="fsync of .*log-00000001.aof failed"):
        j.sync_pending()


# ---- settings
def test_durability_settings_come_from_the_environment(tmp_path):
    env = {"FS_DATA_DIR": str(tmp_path), "FS_FSYNC": "always", "FS_SNAPSHOT_LOG_BYTES": "1000",
           "FS_SNAPSHOT_INTERVAL_S": "2.5", "FS_SKIP_DAMAGED": "1"}
    cfg = config.load(["--index", "1"], environ=env)
    j = Journal.from_config(cfg, Store())
    assert j.dir == str(tmp_path / "shard-1") and j.policy == "always" and j.skip is True
    assert (j.snapshot_log_bytes, j.snapshot_interval_s) == (1000, 2.5)
    assert config.load([], environ={}).skip_damaged is False


@pytest.mark.parametrize("env", [{"FS_SNAPSHOT_LOG_BYTES": "0"}, {"FS_SNAPSHOT_INTERVAL_S": "-1"},
                                 {"FS_SKIP_DAMAGED": "perhaps"}])
def test_bad_durability_settings_are_refused(env):
    with pytest.raises(config.ConfigError, match=next(iter(env))):
        config.load([], environ=env)


def test_recovery_reclaims_what_the_ttl_sweep_had_taken(tmp_path):
    now = 1_800_000_000_000_000
    ttl_store = lambda: Store(ttl_s=60, grace_s=0, clock=lambda: now)  # noqa: E731
    j = journal(tmp_path, ttl_store())
    shard = shard_with(j)
    write(shard, ("e", "old", 1, now - 3_600_000_000), ("e", "fresh", 2, now),
          ("gone", "old", 3, now - 3_600_000_000))
    again = journal(tmp_path, ttl_store())  # no sweep has run in this store
    assert again.info["replayed_values"] == 3 and again.info["reclaimed_on_recovery"] == 2
    assert again.store.features("e") == {"fresh": [2, now]} and again.store.features("gone") is None
    assert again.store.values == 1


def test_a_failed_fork_keeps_the_shard_serving_and_loses_nothing(tmp_path, monkeypatch, caplog):
    j = journal(tmp_path, snapshot_log_bytes=1)
    shard = shard_with(j)
    write(shard, ("e", "x", 1, TS))

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    j.tick()  # would start a snapshot: the fork fails
    assert j.child is None and "cannot fork a snapshot child" in caplog.text
    assert write(shard, ("e", "y", 2, TS))[P.OK]
    monkeypatch.undo()
    j.close()
    again = journal(tmp_path)
    assert again.store.values == 2
