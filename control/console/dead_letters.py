"""Dead letters: the newest records a pipeline could not serve, with the reason and their bytes.

Dead letters live only in the pipeline's `….dead` topic, so this page reads it: at most the
last `n` of each partition (from `high - n`), never the whole topic. The original bytes are
shown safely: text when they are UTF-8 (escaped by the template), else hex; past SHOWN_BYTES
cut, with the size shown.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from control.config import Settings
from control.console.reading import readable
from control.console.web import context, feeds_of, render
from control.kafka import consumer, watermarks
from schemas.codec import codec
from schemas.errors import BrokerError, DecodeError

TITLE, PATH = "Dead letters", "/dead-letters"
DEFAULT_N, MAX_N = 50, 500
SHOWN_BYTES = 2048  # of a record's original bytes; the rest is counted, not shown
READ_S = 10.0


@dataclass(frozen=True)
class Shown:
    """Bytes as the page shows them: text or hex, perhaps cut, and their whole size."""

    kind: str  # text | hex | empty
    text: str
    size: int

    @property
    def cut(self) -> bool:
        return self.size > SHOWN_BYTES


def shown(data: bytes | None) -> Shown:
    """UTF-8 text when the (first SHOWN_BYTES) bytes decode, else hex pairs."""
    data = data or b""
    if not data:
        return Shown("empty", "", 0)
    head = data[:SHOWN_BYTES]
    try:
        # A cut may split a character: ignore only a broken tail, nothing in the middle.
        text = head.decode("utf-8") if len(data) <= SHOWN_BYTES else _decode_cut(head)
        return Shown("text", text, len(data))
    except UnicodeDecodeError:
        return Shown("hex", " ".join(f"{b:02x}" for b in head), len(data))


def _decode_cut(head: bytes) -> str:
    for drop in range(4):
        try:
            return head[:len(head) - drop].decode("utf-8")
        except UnicodeDecodeError:
            if drop == 3:
                raise
    raise AssertionError  # unreachable


@dataclass(frozen=True)
class Letter:
    time: datetime
    reason: str
    pipeline_version: int | None
    topic: str
    partition: int
    offset: int
    key: Shown
    original: Shown
    where: str  # where the letter itself is: partition/offset of the dead topic


def newest_letters(settings: Settings, topic: str, n: int) -> list[Letter]:
    """The newest `n` dead letters of `topic`, newest first (at most n read per partition)."""
    c = consumer(settings, **{"enable.partition.eof": True})
    try:
        meta = c.list_topics(topic, timeout=READ_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return []  # no dead letter yet: the topic is made with the pipeline's first deploy
        starts, ends = [], {}
        for p in meta.partitions:
            low, high = watermarks(c, TopicPartition(topic, p), READ_S)
            if high > low:
                starts.append(TopicPartition(topic, p, max(low, high - n)))
                ends[p] = high
        if not starts:
            return []
        c.assign(starts)
        letters: list[Letter] = []
        deadline = time.monotonic() + READ_S
        while ends and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
                continue
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
            letter = _letter(msg.value(), f"{msg.partition()}/{msg.offset()}")
            if letter is not None:
                letters.append(letter)
    finally:
        c.close()
    return sorted(letters, key=lambda x: (x.time, x.where), reverse=True)[:n]


def _letter(value: bytes | None, where: str) -> Letter | None:
    try:
        d = codec("DeadLetter").decode(value or b"")
    except (DecodeError, ValueError):
        return None  # not a letter this platform wrote: nothing to show of it
    moment = d["time"]
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment / 1e6, UTC)
    return Letter(moment, d["reason"], d.get("pipeline_version"), d["topic"], d["partition"],
                  d["offset"], shown(d.get("key")), shown(d["original"]), where)


async def page(request: web.Request) -> web.Response:
    """?workspace= &pipeline= (else the first readable pipeline) &n= (newest n, at most 500)."""
    ctx = context(request)
    pipelines = [(ws, name) for ws, name in sorted(ctx.registry.pipelines) if ws in ctx.shown]
    wanted = request.query.get("pipeline")
    if wanted:
        chosen = (readable(ctx, request.query.get("workspace")), wanted)
        if chosen not in ctx.registry.pipelines:
            raise web.HTTPNotFound(text=f"workspace {chosen[0]!r} has no pipeline "
                                   f"{wanted[:128]!r}")
    else:
        chosen = pipelines[0] if pipelines else None
    try:
        n = min(MAX_N, max(1, int(request.query.get("n", DEFAULT_N))))
    except ValueError:
        raise web.HTTPBadRequest(text="n must be a whole number from 1 to 500") from None
    letters: list[Letter] = []
    if chosen is not None:
        settings = feeds_of(request).settings
        topic = settings.pipeline_topic(chosen[0], chosen[1], "dead")
        try:
            letters = await asyncio.to_thread(newest_letters, settings, topic, n)
        except (KafkaException, BrokerError) as exc:
            raise web.HTTPServiceUnavailable(text=f"cannot read {topic}: {exc}") from exc
    return render(request, "dead_letters.html", ctx=ctx, pipelines=pipelines, chosen=chosen,
                  letters=letters, n=n, shown_bytes=SHOWN_BYTES)


ROUTES = [web.get(PATH, page)]
