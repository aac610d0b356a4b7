"""The one exception hierarchy of inferstream.

It lives in the lowest package so that every other package (control, agents,
sinks) can raise and catch the same types without import cycles.
"""

from __future__ import annotations


class InferstreamError(Exception):
    """Base of every error inferstream raises on purpose."""


class DecodeError(InferstreamError):
    """Bytes that are not a record of the expected schema."""


class ConfigError(InferstreamError):
    """A setting is missing or has a value that cannot work."""


class Rejected(InferstreamError):
    """A control event broke a rule of the registry; the registry is unchanged."""


class ArtifactError(InferstreamError):
    """A model artifact is missing, corrupt (checksum mismatch) or unreadable."""


class BrokerError(InferstreamError):
    """The Kafka broker could not be reached, started or used."""


class StatusTimeout(InferstreamError):
    """No status record arrived for a control event in time."""
