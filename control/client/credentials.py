"""Which private key signs for which user: the operator's local credentials file.

`inferstream login NAME --key-file KEY` (and `inferstream bootstrap`) record, per platform
(bootstrap servers and namespace), the key file of a user and that this user is the one who
acts by default. The file holds paths, never keys; it and the keys are readable by their
owner only (0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.client.keys import read_private_key
from control.config import Settings
from schemas.errors import ConfigError


def platform_of(settings: Settings) -> str:
    """How the credentials file names a platform: its bootstrap servers and namespace."""
    return f"{settings.bootstrap_servers}/{settings.namespace}"


@dataclass
class Credentials:
    """The contents of a credentials file: key files and default users, per platform."""

    path: Path
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # platform -> user -> file
    users: dict[str, str] = field(default_factory=dict)  # platform -> default user

    @classmethod
    def load(cls, path: Path) -> Credentials:
        path = Path(path).expanduser()
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, dict(data.get("keys", {})), dict(data.get("users", {})))
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"credentials file {path} is unreadable ({exc}); fix or remove "
                              "it and log in again") from None

    def save(self) -> None:
        """Write the file (0600) in one step, so a crash never leaves half of it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"keys": self.keys, "users": self.users}, out, indent=2, sort_keys=True)
        os.replace(staging, self.path)

    def login(self, settings: Settings, user: str, key_file: Path) -> None:
        platform = platform_of(settings)
        self.keys.setdefault(platform, {})[user] = str(Path(key_file).expanduser().resolve())
        self.users[platform] = user

    def key_file(self, settings: Settings, user: str) -> Path | None:
        found = self.keys.get(platform_of(settings), {}).get(user)
        return Path(found) if found else None

    def user(self, settings: Settings) -> str | None:
        return self.users.get(platform_of(settings))


def default_key_path(settings: Settings, user: str) -> Path:
    """Where a new key of `user` goes unless told: beside the credentials file."""
    folder = Path(settings.credentials_file).expanduser().parent / "keys"
    return folder / f"{settings.namespace}-{user}.key"


def signing_key(settings: Settings, user: str) -> Ed25519PrivateKey | None:
    """The key that signs `user`'s events: --key-file, else the one logged in; None: unsigned."""
    path = settings.key_file or Credentials.load(settings.credentials_file).key_file(
        settings, user)
    return read_private_key(path) if path is not None else None


def default_user(settings: Settings) -> str | None:
    """The user acting: --user / INFERSTREAM_USER, else the one logged in on this platform."""
    return settings.user or Credentials.load(settings.credentials_file).user(settings)
