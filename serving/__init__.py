"""Lamina's serving layer: the Cassandra schema, writer and store, the merge, and the query API."""
