"""Content-addressed model artifacts, stored as chunks in a compacted Kafka topic.

Any worker that reaches Kafka can load every registered model: the registry
holds each artifact's sha256 and where its chunks start; loading reassembles the
chunks, checks the sha256 and keeps a verified copy in a local cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, Producer, TopicPartition

from control.config import Settings
from control.kafka import consumer, producer, read_until_end
from control.registry.state import ArtifactRef
from schemas.codec import codec
from schemas.errors import ArtifactError, BrokerError

Progress = Callable[[int], None]  # called with the number of bytes just handled


# What an upload queues in librdkafka at most: a 1 GB model used to overflow its default
# queue (BufferError); the chunks wait for room instead, and memory stays the artifact's own.
UPLOAD_QUEUE_KB = 64 * 1024
STALLED_S = 60.0  # an upload whose chunks stop reaching the broker for this long fails


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wait_for_room(p: Producer) -> None:
    """Serve delivery reports until the queue shrinks; BrokerError if it stays full."""
    full, deadline = len(p), time.monotonic() + STALLED_S
    while len(p) >= full:
        if time.monotonic() > deadline:
            raise BrokerError(f"no chunk of the artifact reached the broker in {STALLED_S:g}s")
        p.poll(0.1)


def _flush(p: Producer) -> int:
    """Flush for as long as chunks keep reaching the broker (a 1 GB upload takes minutes on a
    slow link); what is left once nothing moved for STALLED_S."""
    left = len(p)
    while left:
        now = p.flush(STALLED_S)
        if now >= left:
            return now
        left = now
    return 0


class ArtifactStore:
    """Puts blobs into the artifact topic and gets them back, verified."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("artifacts")
        self.cache = settings.artifact_cache

    def put(self, data: bytes, format: str, progress: Progress | None = None) -> ArtifactRef:
        """Store a blob as chunks; returns the reference the registry keeps."""
        if not data:
            raise ArtifactError("refusing to store an empty artifact")
        self._check_size(len(data), "the artifact")
        sha, size, step = sha256_of(data), len(data), self.settings.artifact_chunk_bytes
        count = (size + step - 1) // step
        chunk = codec("ArtifactChunk")
        first: list[tuple[int, int]] = []
        failures: list[str] = []

        def delivered(err: KafkaError | None, msg: object, *, index: int, n: int) -> None:
            if err is not None:
                failures.append(f"chunk {index}: {err}")
                return
            if index == 0:
                first.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]
            if progress:
                progress(n)

        p = producer(self.settings, **{"queue.buffering.max.kbytes": UPLOAD_QUEUE_KB})
        for index in range(count):
            part = data[index * step:(index + 1) * step]
            value = chunk.encode({"sha256": sha, "index": index, "count": count,
                                  "size": size, "data": part})
            on_delivery = partial(delivered, index=index, n=len(part))
            while True:
                try:
                    p.produce(self.topic, key=f"{sha}:{index}".encode(), value=value,
                              on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: wait for the broker to take some
                    _wait_for_room(p)
            p.poll(0)
        if _flush(p) or failures or not first:
            raise BrokerError(f"storing artifact {sha[:12]}… failed: {failures or 'timed out'}")
        partition, offset = first[0]
        ref = ArtifactRef(sha, size, format, self.topic, partition, offset, count)
        self._cache_write(ref, data)
        return ref

    def get(self, ref: ArtifactRef) -> bytes:
        """The artifact's bytes, from the cache or the topic; ArtifactError if they do not check."""
        # The registry takes the size an UploadModel declares; a worker reads no more than this.
        self._check_size(ref.size, f"artifact {ref.sha256[:12]}…")
        if not 0 < ref.chunks <= ref.size:
            raise ArtifactError(f"artifact {ref.sha256[:12]}… of {ref.size} bytes cannot be "
                                f"{ref.chunks} chunks; upload the model again")
        cached = self.cache / ref.sha256
        if cached.exists():
            data = cached.read_bytes()
            if sha256_of(data) == ref.sha256:
                return data
            cached.unlink()  # a corrupted cache entry is refetched, not trusted
        data = self._fetch(ref)
        actual = sha256_of(data)
        if actual != ref.sha256:
            raise ArtifactError(
                f"artifact {ref.sha256} is corrupt: its {len(data)} bytes hash to {actual}; "
                "upload the model again to make a new version"
            )
        self._cache_write(ref, data)
        return data

    def _check_size(self, size: int, what: str) -> None:
        limit = self.settings.max_artifact_bytes
        if size > limit:
            raise ArtifactError(
                f"{what} is {size} bytes, over the limit of {limit} bytes; raise "
                "INFERSTREAM_MAX_ARTIFACT_BYTES if models are meant to be that large"
            )

    def _fetch(self, ref: ArtifactRef) -> bytes:
        chunks = self._read_at(ref)
        if chunks is None:
            # The chunks are not where the registry says (e.g. re-uploaded and compacted).
            chunks = self._scan(ref)
        missing = [i for i in range(ref.chunks) if i not in chunks]
        if missing:
            raise ArtifactError(
                f"artifact {ref.sha256[:12]}… is missing chunks {missing[:5]} of {ref.chunks} "
                f"in topic {ref.topic}; was the topic deleted or its retention changed?"
            )
        return b"".join(chunks[i] for i in range(ref.chunks))

    def _read_at(self, ref: ArtifactRef) -> dict[int, bytes] | None:
        c = consumer(self.settings)
        chunks: dict[int, bytes] = {}
        try:
            c.assign([TopicPartition(ref.topic, ref.partition, ref.offset)])
            while len(chunks) < ref.chunks:
                msgs = c.consume(min(ref.chunks - len(chunks), 100), timeout=10)
                if not msgs:
                    return None
                for msg in msgs:
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            return None
                        raise BrokerError(f"reading artifact {ref.sha256[:12]}…: {msg.error()}")
                    record = codec("ArtifactChunk").decode(msg.value())
                    if record["sha256"] != ref.sha256:
                        return None
                    chunks[record["index"]] = record["data"]
        finally:
            c.close()
        return chunks

    def _scan(self, ref: ArtifactRef) -> dict[int, bytes]:
        prefix = f"{ref.sha256}:".encode()
        chunks: dict[int, bytes] = {}
        for msg in read_until_end(self.settings, ref.topic):
            if msg.key() and msg.key().startswith(prefix):
                record = codec("ArtifactChunk").decode(msg.value())
                chunks[record["index"]] = record["data"]
        return chunks

    def _cache_write(self, ref: ArtifactRef, data: bytes) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.cache / f".{ref.sha256}.{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(self.cache / ref.sha256)
