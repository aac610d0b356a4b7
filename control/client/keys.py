"""Key files of operators: private keys in PEM files only their owner can read, public keys in
PEM files to hand to an administrator."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# Re-exported for the CLI and client: it lives in control.config so that a worker, which may
# not import the client, reads its own key (the actions of rules) with the same checks.
from control.config import read_private_key
from control.registry.signing import RAW, public_key_of
from schemas.errors import ConfigError

__all__ = ["read_private_key", "read_public_key", "write_private_key", "write_public_key"]


def write_private_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the key as PEM (PKCS#8) to a new file that only its owner can read (0600)."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        # O_EXCL: never overwrite someone's key; 0600 from the start, not chmod-ed after.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {path} exists; give another path, or use that key") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def write_public_key(public_key: bytes, path: Path) -> Path:
    """Write a public key as PEM (SubjectPublicKeyInfo), for handing to an administrator."""
    path = Path(path).expanduser().resolve()
    pem = Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return path


def read_public_key(path: Path) -> bytes:
    """The raw public key in a PEM public key file, or of a PEM private key file."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return public_key_of(read_private_key(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key.public_bytes(*RAW)
