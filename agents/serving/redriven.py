"""What a redriven record carries: the Kafka headers the redrive job sets and the data plane
reads, so a record sent back keeps its record id and its dead letters count the redrives."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Message

REDRIVE_HEADER = "inferstream-redrive"  # the redrive id
COUNT_HEADER = "inferstream-redrive-count"  # how many times it was redriven, this one included
ORIGIN_HEADER = "inferstream-origin"  # topic:partition:offset where it first arrived


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a redriven record first arrived, and which redrive sent it back how often."""

    topic: str
    partition: int
    offset: int
    redrive_id: str
    count: int

    @property
    def record_id(self) -> str:
        """The id a record without an id of its own had when it first arrived."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def headers(self) -> list[tuple[str, bytes]]:
        return [(REDRIVE_HEADER, self.redrive_id.encode()),
                (COUNT_HEADER, str(self.count).encode()),
                (ORIGIN_HEADER, self.record_id.encode())]


def origin_of(message: Message) -> Origin | None:
    """The origin a redriven message's headers tell; None for any other message (or headers
    that do not parse: then it is served as the new record it looks like)."""
    headers = message.headers()
    if not headers:
        return None
    found = {k: v for k, v in headers if k in (REDRIVE_HEADER, COUNT_HEADER, ORIGIN_HEADER)}
    try:
        topic, partition, offset = found[ORIGIN_HEADER].decode().rsplit(":", 2)
        return Origin(topic, int(partition), int(offset), found[REDRIVE_HEADER].decode(),
                      int(found[COUNT_HEADER]))
    except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
        return None


def any_redriven(messages: Iterable[Message]) -> bool:
    """Whether a batch holds a redriven message (a producer's own headers do not count)."""
    for m in messages:
        headers = m.headers()  # None for the common message: no list is built
        if headers and any(k == REDRIVE_HEADER for k, _ in headers):
            return True
    return False
