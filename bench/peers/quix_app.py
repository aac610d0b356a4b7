"""The Quix Streams peer: consume, score with ONNX Runtime, produce, exactly once.

What a user writes from Quix Streams' quickstart with `processing_guarantee="exactly-once"`:
a StreamingDataFrame that applies a function per record and sends the result to a topic.
The dataframe API has no batches, so ONNX Runtime is called once per record. Results become
visible at each checkpoint (a transaction commit every `commit_interval`); 0.5 s rather than
the default 5 s, which would floor every latency at seconds; and a consumer poll timeout of
0.1 s instead of 1 s: a checkpoint is taken only between polls, so when the input pauses,
the last results would wait up to a second more.

Run by bench/peers/driver.py in the Quix Streams venv: `python quix_app.py`.
"""

from __future__ import annotations

import os
from typing import Any

from quixstreams import Application

from bench.peers.payload import Config, Reader, results, session

COMMIT_INTERVAL_S = float(os.environ.get("BENCH_QUIX_COMMIT_INTERVAL_S", "0.5"))


def main() -> None:
    config = Config()
    reader, model = Reader(config.schema), session(config.model)
    app = Application(broker_address=config.bootstrap, consumer_group=config.group,
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      commit_interval=COMMIT_INTERVAL_S, consumer_poll_timeout=0.1,
                      use_changelog_topics=False,
                      loglevel="WARNING")
    source = app.topic(config.source, key_deserializer="str", value_deserializer="bytes")
    output = app.topic(config.output, key_serializer="str", value_serializer="json")

    def score(raw: bytes) -> dict[str, Any]:
        return results(model, reader.rows(raw))[0]

    app.dataframe(source).apply(score).to_topic(output)
    print("ready", flush=True)
    app.run()


if __name__ == "__main__":
    main()
