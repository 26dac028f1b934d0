"""Lamina's batch layer: master imports, view recompute on Spark, versioned publish, freshness."""
