"""The HTTP front end: Tornado handlers that route requests to the shards over ZeroMQ."""
