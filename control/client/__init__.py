"""The Python client of an inferstream platform: `from control.client import Client`."""

from control.client.client import Client

__all__ = ["Client"]
