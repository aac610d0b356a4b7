"""Serving deployed pipelines: the intake, deployments, the runner and the column-wise path,
the model cache and the outbox, used alike by the stream, HTTP and batch tasks."""
