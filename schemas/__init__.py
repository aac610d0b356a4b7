"""Avro schemas of every event and record, and the codec that reads and writes them."""

from schemas.codec import decode, encode, schema_names
from schemas.errors import DecodeError, InferstreamError

__all__ = ["DecodeError", "InferstreamError", "decode", "encode", "schema_names"]
