"""The control plane: the registry (registry/, a pure fold), settings and the Kafka services
(config, kafka, artifacts, registrar, follower, topic_inference), and on top of them the
Python client (client/), the embedded platform (local/) and the CLI (cli/)."""
