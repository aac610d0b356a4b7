"""The Faust peer (faust-streaming): the textbook `@app.agent` batching with `take`.

An agent over the input topic takes up to 512 events or what came within 10 ms (the batch
inferstream's worker is given), scores them in one ONNX Runtime call and sends each result
with `await topic.send(...)`. `take_events` rather than `take`: `take` yields values only,
and each result keeps its record's key. `processing_guarantee="exactly_once"` is Faust's
strongest setting, but it covers the input offsets only: results sent from an agent go out
through the plain producer, without transaction markers (faust-streaming#177, #517), so
what a consumer sees is at least once.

Run by bench/peers/driver.py in the Faust venv: `python faust_app.py worker -l warn`.
"""

from __future__ import annotations

import os

import faust
import numpy as np
import orjson

from bench.peers.payload import Config, Reader, results, session

BATCH, WITHIN_S = 512, 0.01

config = Config()
reader, model = Reader(config.schema), session(config.model)
app = faust.App(config.group, broker=f"kafka://{config.bootstrap}",
                processing_guarantee="exactly_once", store="memory://",
                topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
                web_port=int(os.environ.get("BENCH_PORT", "6066")), web_host="127.0.0.1",
                consumer_auto_offset_reset="earliest")
source = app.topic(config.source, key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw")
output = app.topic(config.output, key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw")


@app.agent(source)
async def score(stream: faust.StreamT) -> None:
    async for events in stream.take_events(BATCH, within=WITHIN_S):
        rows = np.concatenate([reader.rows(e.value) for e in events])
        for event, result in zip(events, results(model, rows), strict=True):
            await output.send(key=event.key, value=orjson.dumps(result))


if __name__ == "__main__":
    app.main()
