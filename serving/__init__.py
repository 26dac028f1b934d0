"""Lamina's serving layer: the Cassandra store, the merge, and the query API (CLI and HTTP)."""
