"""Lamina's batch layer: the master dataset, view recompute on Spark, versioned publish."""
