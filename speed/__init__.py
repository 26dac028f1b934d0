"""Lamina's speed layer: Spark Structured Streaming queries reading Kafka (archiver, dead
letters, real-time views), their spark-submit launcher and driver, the dead-letter reader and
the ``/jobs`` HTTP router."""
