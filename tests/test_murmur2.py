"""Kafka's default partitioner, checked against Kafka's own test vectors and a real broker."""
from __future__ import annotations

import ctypes
import uuid

import pytest

from common.murmur2 import murmur2, partition_for, partition_of

# Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2
JAVA = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}

KEYS = [f"user_{i}" for i in range(25)] + ["", "a", "ab", "abc", "abcd", "ü 1", "user/1", "2025-06-01",
                                            "日本語のキー", "x" * 300, "e:1:2", "driver_1001", "👍", "k" * 7, "z"]


@pytest.mark.parametrize("key", sorted(JAVA))
def test_murmur2_is_javas(key):
    assert ctypes.c_int32(murmur2(key)).value == JAVA[key]


def test_partition_of_entity_is_the_utf8_key():
    for key in KEYS:
        assert partition_of(key, 12) == partition_for(key.encode(), 12)
    assert len({partition_of(k, 8) for k in KEYS}) == 8  # spreads: every partition gets some


@pytest.mark.parametrize("partitions", [7, 16])
def test_librdkafka_murmur2_random_agrees_on_a_real_broker(broker, partitions):
    """librdkafka's Java-compatible partitioner puts every key where partition_for says."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = broker.create_topic(partitions)
    landed: dict[str, int] = {}

    def delivered(err, msg):
        assert err is None, err
        landed[msg.key().decode()] = msg.partition()

    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 5})
    for key in KEYS:
        producer.produce(topic, b"{}", key=key.encode(), on_delivery=delivered)
    assert producer.flush(15) == 0
    assert len(landed) == len(set(KEYS))
    # read the records back from the partitions the broker stored them in
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    stored: dict[str, int] = {}
    try:
        while len(stored) < len(landed):
            msgs = consumer.consume(len(landed) - len(stored), 5)  # returns once all are in
            assert msgs, f"only {len(stored)} of {len(landed)} records read back"
            for m in msgs:
                assert m.error() is None, m.error()
                stored[m.key().decode()] = m.partition()
    finally:
        consumer.close()
    assert stored == landed
    assert stored == {k: partition_for(k.encode(), partitions) for k in KEYS}
