"""Key files of operators: private keys in PEM files only their owner can read, public keys in
PEM files to hand to an administrator."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from control.registry.signing import RAW, public_key_of
from schemas.errors import ConfigError


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


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file that no one but its owner can read."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} can be read by others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The library's message never holds key material; say what the file should be.
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


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
