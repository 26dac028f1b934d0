"""Lamina's shared core: settings, errors, the stack manager and the ``lamina`` CLI.

Nothing in the core imports pyspark or the Cassandra driver (see tests/unit/test_layers.py).
"""

__version__ = "0.1.0"
