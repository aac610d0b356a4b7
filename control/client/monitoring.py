"""The client's monitoring half: assays (control events) and what ClickHouse holds about them.

`Client` inherits these methods. Reads go through `sinks.access.open_reader`: a ClickHouse
server when one is configured, else chDB under the data folder, opened here when it is free
(or already open in this process, whose handle is shared), else through the worker that
owns it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from control.registry.assay_config import AssayConfig
from control.registry.assays import assay_payload
from control.registry.state import Assay, Registry
from schemas.codec import codec
from schemas.errors import InferstreamError, Rejected
from sinks import reads
from sinks.access import Credential, Reader, log_pages, open_reader
from sinks.assays import AssayResult, result_from_row
from sinks.log_queries import LogFilter
from sinks.storage import StorageError

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from control.config import Settings
    from control.registry.events import ControlStatus


class Monitoring:
    """Assays and inference logs, for the CLI, notebooks and scripts."""

    if TYPE_CHECKING:
        settings: Settings

        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...
        def http_headers(self, method: str, path: str, body: bytes) -> dict[str, str]: ...
        def registry(self) -> Registry: ...
        def send(self, type: str, payload: Mapping[str, Any], *,
                 workspace: str | None = None) -> ControlStatus: ...
        def _get_producer(self) -> Producer: ...

    # -- ground truth ------------------------------------------------------------------------

    def send_labels(self, pipeline: str, labels: Mapping[str, float] | Iterable[
                        tuple[str, float, datetime | None]], *,
                    workspace: str | None = None) -> int:
        """Publish ground truth to the pipeline's labels topic: {record id: label}, or
        (record id, label, time or None) tuples; returns how many. Labels are numbers (class
        indexes, or regression targets); a later time replaces an earlier label."""
        items = ([(rid, label, None) for rid, label in labels.items()]
                 if isinstance(labels, Mapping) else list(labels))
        topic = self.settings.pipeline_topic(self._ws(workspace), pipeline, "labels")
        p = self._get_producer()
        label = codec("Label")
        for rid, value, when in items:
            p.produce(topic, key=str(rid).encode(),
                      value=label.encode({"id": str(rid), "label": float(value), "time": when}))
        if p.flush(30):
            raise InferstreamError(f"labels to {topic} not delivered within 30 s: is the "
                                   "broker reachable?")
        return len(items)

    # -- assays: control events ------------------------------------------------------------

    def define_assay(self, name: str = "preview", *, workspace: str | None = None,
                     **options: Any) -> AssayConfig:
        """An assay config in the workspace, checked here; `options` are AssayConfig fields.

        pipeline, model, field, io, index, baseline_start and baseline_end (or
        baseline_values), width, interval, first_window_start, binning, bins, edges,
        aggregation, metric, warning_threshold, alert_threshold, epsilon.
        """
        return AssayConfig(assay_id=name, workspace=self._ws(workspace), **options)

    def create_assay(self, name: str, *, workspace: str | None = None,
                     **options: Any) -> Assay:
        """Create an assay (options as for define_assay); it runs from its first window on."""
        config = self.define_assay(name, workspace=workspace, **options)
        self.send("CreateAssay", assay_payload(name, config), workspace=config.workspace)
        return self.assay(name, config.workspace)

    def assays(self, workspace: str | None = None) -> list[Assay]:
        ws, registry = self._readable(workspace)
        return [a for (w, _), a in sorted(registry.assays.items()) if w == ws]

    def assay(self, name: str, workspace: str | None = None) -> Assay:
        ws, registry = self._readable(workspace)
        assay = registry.assays.get((ws, name))
        if assay is None:
            raise Rejected(f"unknown assay {name!r} in workspace {ws!r}")
        return assay

    def assay_config(self, name: str, workspace: str | None = None) -> AssayConfig:
        """What the assay computes, as the workers run it."""
        return self.assay(name, workspace).config

    def pause_assay(self, name: str, workspace: str | None = None) -> Assay:
        ws = self._ws(workspace)
        self.send("PauseAssay", {"name": name}, workspace=ws)
        return self.assay(name, ws)

    def resume_assay(self, name: str, workspace: str | None = None) -> Assay:
        """Run a paused assay again; the windows it missed are backfilled."""
        ws = self._ws(workspace)
        self.send("ResumeAssay", {"name": name}, workspace=ws)
        return self.assay(name, ws)

    def delete_assay(self, name: str, workspace: str | None = None) -> ControlStatus:
        """Remove an assay; its stored results stay under its old id."""
        return self.send("DeleteAssay", {"name": name}, workspace=self._ws(workspace))

    # -- assays: results -------------------------------------------------------------------

    def assay_results(self, name: str, start: datetime | None = None,
                      end: datetime | None = None, workspace: str | None = None
                      ) -> list[AssayResult]:
        """Stored results of an assay, oldest window first; windows starting in [start, end)."""
        config = self.assay_config(name, workspace)
        return [result_from_row(row) for row in self._read("assay_results", reads.AssayResults(
            workspace=config.workspace, assay_id=config.assay_id, start=start, end=end))]

    def preview_assay(self, assay: AssayConfig | str, start: datetime, end: datetime,
                      workspace: str | None = None) -> list[AssayResult]:
        """Run an assay (a config, or a registered one's name) over [start, end); saves nothing.

        Windows start at `start`, every interval, and must end by `end`.
        """
        config = self.assay_config(assay, workspace) if isinstance(assay, str) else assay
        if end <= start:
            raise InferstreamError(f"preview range: --from {start} is not before --to {end}")
        return [result_from_row(row) for row in self._read(
            "preview_assay", reads.PreviewAssay(config=config, start=start, end=end))]

    # -- inference logs --------------------------------------------------------------------

    def logs(self, pipeline: str, start: datetime | None = None, end: datetime | None = None,
             limit: int | None = 100, *, pipeline_version: int | None = None,
             model: str | None = None, only_failures: bool = False,
             only_anomalies: bool = False, anomaly: str | None = None,
             workspace: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` inference logs of a pipeline in [start, end), oldest first.

        Filters: pipeline version, model, only failed inferences (error set), only records
        that failed a validation (only_anomalies) or the validation named `anomaly`.
        """
        where = self._log_filter(pipeline, start, end, pipeline_version, model, only_failures,
                                 workspace, only_anomalies, anomaly)
        return self._read("logs", reads.Logs(where=where, limit=limit))

    def labelled_logs(self, pipeline: str, limit: int = 100, *,
                      workspace: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` inference logs of a pipeline that have a ground-truth label,
        with it (label, label_time), oldest first."""
        return self._read("labelled_logs", reads.LabelledLogs(
            workspace=self._readable(workspace)[0], pipeline=pipeline, limit=limit))

    def count_logs(self, pipeline: str, start: datetime | None = None,
                   end: datetime | None = None, *, pipeline_version: int | None = None,
                   model: str | None = None, only_failures: bool = False,
                   only_anomalies: bool = False, anomaly: str | None = None,
                   workspace: str | None = None) -> int:
        """How many inference logs match (for a progress bar, or before an export)."""
        where = self._log_filter(pipeline, start, end, pipeline_version, model, only_failures,
                                 workspace, only_anomalies, anomaly)
        return self._read("count_logs", reads.CountLogs(where=where))

    def iter_logs(self, pipeline: str, start: datetime | None = None,
                  end: datetime | None = None, limit: int | None = None, *,
                  pipeline_version: int | None = None, model: str | None = None,
                  only_failures: bool = False, only_anomalies: bool = False,
                  anomaly: str | None = None, page_size: int = 10_000,
                  workspace: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """The logs `logs()` would return, any number of them, in pages, oldest first.

        Each page is one read that starts after the last row of the one before (in time
        order), so memory stays at one page and no row is repeated or skipped between pages.
        """
        if page_size <= 0:
            raise InferstreamError(f"page size {page_size} must be positive")
        where = self._log_filter(pipeline, start, end, pipeline_version, model, only_failures,
                                 workspace, only_anomalies, anomaly)
        with self._reader() as reader:
            yield from log_pages(reader, where, limit, page_size)

    def _log_filter(self, pipeline: str, start: datetime | None, end: datetime | None,
                    pipeline_version: int | None, model: str | None, only_failures: bool,
                    workspace: str | None, only_anomalies: bool = False,
                    anomaly: str | None = None) -> LogFilter:
        # Logs are rows of one workspace: members (and administrators) read them.
        return LogFilter(workspace=self._readable(workspace)[0], pipeline=pipeline, start=start,
                         end=end, pipeline_version=pipeline_version, model=model,
                         only_failures=only_failures, only_anomalies=only_anomalies,
                         anomaly=anomaly)

    def _read(self, name: str, args: reads.Args, reader: Reader | None = None) -> Any:
        """One typed read, through `reader` or one opened for it."""
        if reader is not None:
            return reader.read(name, args)
        with self._reader() as opened:
            return opened.read(name, args)

    @contextmanager
    def _reader(self) -> Iterator[Reader]:
        """A storage reader for the duration of one call; UNKNOWN_TABLE explained."""
        credential: Credential = self.http_headers
        reader = open_reader(self.settings, credential)
        try:
            yield reader
        except StorageError as exc:
            if "UNKNOWN_TABLE" not in str(exc):
                raise
            raise InferstreamError(
                f"nothing is stored yet ({exc}). Inference logs and assay results reach "
                "ClickHouse through a worker: is one running (`inferstream worker`) with the "
                "same --data-dir or INFERSTREAM_CLICKHOUSE_URL?"
            ) from exc
        finally:
            reader.close()
