"""The Faust app, pipeline runners, model runtimes and schedulers."""

import os

# TensorFlow logs INFO and WARNING lines (oneDNN, CPU features) to stderr on import; keep our
# output for our own records unless the operator asks for them (TF_CPP_MIN_LOG_LEVEL=0).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
