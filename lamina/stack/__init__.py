"""The local stack manager: start, probe and stop Kafka and Cassandra (jars via lamina.jars)."""
