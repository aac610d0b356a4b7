"""Ed25519 keys of operators: make them, sign, check (pure; key files: control/client/keys.py).

A user's public key is registered with the user (CreateUser.public_key, raw 32 bytes). The
actor signs each control event over its single-object encoding with `signature` null
(`ControlEvent.unsigned_bytes`); the fold checks it with `verify`, which is pure.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def new_key() -> Ed25519PrivateKey:
    """A fresh private key."""
    return Ed25519PrivateKey.generate()


def public_key_of(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key that goes into CreateUser."""
    return key.public_key().public_bytes(*RAW)


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


@lru_cache(maxsize=1 << 16)
def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is `public_key`'s over `data`.

    Cached: every CLI call and worker replays the whole control topic, and checking a
    signature costs ~50 µs, so each process checks each event once.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public_key: bytes) -> str:
    """How a person tells keys apart, ssh style: SHA256:<base64 of the key's sha256>."""
    digest = base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
