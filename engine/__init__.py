"""Spark code shared by the batch and the speed layer: one translation of a view into Spark,
one session builder, one Spark schema per row kind, the Kafka source. Imports no layer."""
