"""A shard: one single-threaded process owning the entities of its slots, in memory."""
