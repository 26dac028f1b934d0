"""The local stack manager: fetch jars, start, probe and stop Kafka and Cassandra."""
