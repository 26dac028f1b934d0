"""Lamina's speed layer: Spark Structured Streaming jobs reading Kafka."""
