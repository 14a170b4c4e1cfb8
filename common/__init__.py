"""Shared pieces every process imports: configuration, wire protocol, partitioning, events."""
