"""Lamina's engine-free core (settings, views, monoids, the dataset and stream contracts), the
local stack and the ``lamina`` CLI.

Nothing in the core imports pyspark or the Cassandra driver (see tests/unit/test_layers.py).
"""

__version__ = "0.1.0"
