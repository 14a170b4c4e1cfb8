"""The ingest process: streams of feature events (Kafka, a file, a ZeroMQ socket) into the shards."""
