"""The worker: a Faust app (app.py) with its web pages, heartbeat and metrics, over the data
plane (serving/), the wire formats (records/), model runtimes (runtimes/), connectors and
schedules (scheduling/)."""

import os

# TensorFlow logs INFO and WARNING lines (oneDNN, CPU features) to stderr on import; keep our
# output for our own records unless the operator asks for them (TF_CPP_MIN_LOG_LEVEL=0).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
