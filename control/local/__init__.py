"""The embedded platform: a local broker (or three), a worker process, the demo."""
