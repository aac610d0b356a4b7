"""Benchmarks: the pipeline measured against its physical limits (`python3 -m bench`)."""
