"""Encode and decode inferstream records with Avro.

Every message is Avro single-object encoded: the marker C3 01, the 8-byte
CRC-64-AVRO fingerprint of the writer's schema, then the Avro body. The
fingerprint finds the writer's schema among the current ones and those frozen
in `history/`, so a record written before a schema grew still decodes after.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from schemas.errors import DecodeError, InferstreamError

MARKER = b"\xc3\x01"
AVRO_DIR = Path(__file__).parent / "avro"
HISTORY_DIR = Path(__file__).parent / "history"
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # an object's repr, e.g. fastavro's stream


class Codec:
    """Reads and writes the records of one schema; parsed once, reused for every record."""

    __slots__ = ("_prefix", "fingerprint", "full_name", "name", "schema")

    def __init__(self, full_name: str, schema: dict) -> None:
        self.full_name = full_name
        self.name = full_name.rsplit(".", 1)[-1]
        self.schema = schema
        self.fingerprint = schema_fingerprint(schema)
        self._prefix = MARKER + self.fingerprint

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The record as single-object encoded Avro; a record that does not fit raises."""
        out = io.BytesIO()
        out.write(self._prefix)
        try:
            # fastavro would silently truncate 1.5 into an int field: validate first.
            validate(record, self.schema, raise_errors=True)
            fastavro.schemaless_writer(out, self.schema, record)
        except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InferstreamError(f"cannot encode {self.name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """The record in `data`, read with the current schema; DecodeError says why not."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes for a {self.name}, got {type(data).__name__}")
        if len(data) < 10 or data[:2] != MARKER:
            raise DecodeError(
                f"not an inferstream {self.name}: {len(data)} bytes starting {bytes(data[:10])!r}; "
                "expected Avro single-object encoding (marker C3 01)"
            )
        writer = writer_schemas().get(bytes(data[2:10]))
        if writer is None:
            raise DecodeError(
                f"unknown writer schema {bytes(data[2:10]).hex()} for a {self.name}: written by "
                "a newer inferstream? Upgrade this one, or freeze schemas with "
                "`python -m schemas freeze`"
            )
        if writer["name"] != self.full_name:
            raise DecodeError(f"expected a {self.full_name}, got a {writer['name']}")
        body = io.BytesIO(data[10:])
        # Written with the current schema: nothing to resolve (a third of the time of reading
        # a control event, which every replay of the control topic does for each).
        reader = None if data[2:10] == self._prefix[2:] else self.schema
        try:
            record = fastavro.schemaless_reader(
                body, writer, reader,
                return_record_name=True, return_record_name_override=True,
            )
        except Exception as exc:  # fastavro raises many types on garbage
            raise DecodeError(f"corrupt {self.name} ({len(data)} bytes): {reader_error(exc)}"
                              ) from exc
        if body.tell() != len(data) - 10:
            raise DecodeError(
                f"corrupt {self.name}: {len(data) - 10 - body.tell()} trailing bytes after it"
            )
        return record


def avro_long(n: int) -> bytes:
    """An Avro int or long as written by hand: zigzag, then 7 bits per byte, low bits first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """The Avro int or long at buf[pos:] and the position after it (IndexError past the end)."""
    byte = buf[pos]
    if byte < 0x80:  # most counts and lengths fit one byte
        return (byte >> 1) ^ -(byte & 1), pos + 1
    n, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = buf[pos]
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos + 1
        shift += 7


def avro_string(text: str) -> bytes:
    """An Avro string: its UTF-8 length, then the bytes."""
    data = text.encode()
    return avro_long(len(data)) + data


def reader_error(exc: BaseException) -> str:
    """What an Avro reader said was wrong with some bytes, the same on every run: fastavro
    names the stream it read (`<_io.BytesIO object at 0x7f...>`), a new address each time."""
    text = _ADDRESS.sub("the record", str(exc))
    what = type(exc).__name__ + (" (the bytes end too early)" if isinstance(exc, EOFError)
                                 else "")
    return f"{what}: {text}" if text else what


def schema_fingerprint(schema: dict) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of a parsed schema (Avro spec, little-endian)."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def schema_names() -> list[str]:
    """Short names of every schema in avro/ (e.g. 'ControlEvent')."""
    return sorted(p.stem.rsplit(".", 1)[-1] for p in AVRO_DIR.glob("*.avsc"))


@cache
def codec(name: str) -> Codec:
    """The codec of a schema, by short name ('ControlEvent') or full name."""
    matches = [p for p in AVRO_DIR.glob("*.avsc") if p.stem == name or p.stem.endswith("." + name)]
    if len(matches) != 1:
        raise InferstreamError(f"no schema named {name!r}; known: {', '.join(schema_names())}")
    if name != matches[0].stem:  # one parse per schema, whichever name asked for it
        return codec(matches[0].stem)
    return Codec(matches[0].stem, load_schema(str(matches[0])))


@cache
def writer_schemas() -> dict[bytes, dict]:
    """Every schema a record may have been written with: current ones and frozen history."""
    schemas: dict[bytes, dict] = {}
    for path in sorted(HISTORY_DIR.glob("*.avsc")):
        schema = fastavro.parse_schema(json.loads(path.read_text()), _write_hint=False)
        schemas[schema_fingerprint(schema)] = schema
    for path in AVRO_DIR.glob("*.avsc"):
        current = codec(path.stem).schema
        schemas[schema_fingerprint(current)] = current
    return schemas


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Encode one record of the named schema."""
    return codec(name).encode(record)


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Decode one record of the named schema, whatever version of it wrote the bytes."""
    return codec(name).decode(data)


def freeze() -> list[Path]:
    """Write every current schema, expanded, to history/ (once per version).

    Not the canonical form: it drops logical types, and old timestamps must still read as such.
    """
    HISTORY_DIR.mkdir(exist_ok=True)
    written = []
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        c = codec(path.stem)
        target = HISTORY_DIR / f"{c.full_name}.{c.fingerprint.hex()}.avsc"
        if not target.exists():
            expanded = load_schema(str(path), _write_hint=False)
            target.write_text(json.dumps(expanded, indent=2) + "\n")
            written.append(target)
    return written
