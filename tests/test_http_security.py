"""The worker's HTTP surface on a secured platform, tried as an attacker would: a real broker,
a real worker process owning real chDB, real HTTP (and HTTPS).

Where it listens; no, forged, expired, replayed, revoked credentials; roles and API key
scopes; another workspace's pipelines and logs; SQL and table functions through every
parameter of every read; a 10 MB body; 1,000 requests at once. After each, the worker is
live and ready, and nothing was read, written or served that should not have been.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control.client import Client
from control.client.http import HttpError
from control.client.keys import read_private_key
from control.config import Settings
from control.local.demo_models import build_onnx_classifier
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar
from control.registry.http_auth import sign_request
from sinks.access import RemoteReader, open_reader, read_owner
from sinks.reads import READS
from tests.helpers import wait_until
from tests.worker_platform import json_records

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.transactions]
MAX_IN_FLIGHT = 8
INFER = "/pipelines/p/infer?workspace=lab"


@dataclass
class Secured:
    settings: Settings
    tmp: Path
    worker: WorkerProcess
    users: dict[str, Client]  # root (admin), ann (owns lab), vera (views lab), nina, olga
    canary: str  # a file's contents that no response may ever carry
    canary_path: Path
    http_served: int = 0  # inferences answered 200 over HTTP in lab/p, so far

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, Any]]:
        status, data = self.worker.post(path, body, headers)
        assert self.canary.encode() not in data, f"{path} leaked the canary file"
        try:
            return status, json.loads(data)
        except ValueError:
            return status, {"raw": data.decode(errors="replace")}

    def signed(self, user: str, path: str, body: bytes) -> dict[str, str]:
        return self.users[user].http_headers("POST", path, body)

    def infer(self, headers: dict[str, str], body: bytes | None = None,
              path: str = INFER) -> tuple[int, dict[str, Any]]:
        status, answer = self.post(path, body or record(), headers)
        if status == 200 and path == INFER:
            self.http_served += 1
        return status, answer

    def intact(self) -> None:
        """The worker is live and ready, and lab/p's logs are those it served: by Kafka in
        setup, and by HTTP since."""
        for probe in ("/health/live", "/health/ready"):
            with urllib_open(self.worker, probe) as r:
                assert r.status == 200
        want = SERVED_BY_KAFKA + self.http_served
        wait_until(lambda: self.users["ann"].count_logs("p") == want, 60,
                   f"lab/p has {want} logs")


def urllib_open(worker: WorkerProcess, path: str):
    import urllib.request

    return urllib.request.urlopen(f"{worker.url}{path}", timeout=10, context=worker._tls)


def record(i: int = 0) -> bytes:
    return json.dumps(json_records(1, i)[0]).encode()


SERVED_BY_KAFKA = 20


@pytest.fixture(scope="module")
def secured(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("secured")
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"h{uuid4().hex[:8]}",
                        data_dir=tmp / "data", pipeline_partitions=1,
                        credentials_file=tmp / "credentials.json")
    registrar = Registrar(settings).start()
    root = Client(settings, user="root")
    root.bootstrap_admin("root", key_file=tmp / "root.key")
    users = {"root": root}
    for name in ("ann", "vera", "nina", "olga"):
        root.create_user_with_key(name, key_file=tmp / f"{name}.key")
        users[name] = Client(settings, user=name, key=tmp / f"{name}.key")
    ann, olga = users["ann"], users["olga"]
    ann.workspace, olga.workspace, users["vera"].workspace = "lab", "other", "lab"
    ann.create_workspace("lab")
    ann.add_member("vera", "viewer")
    olga.create_workspace("other")
    clf = build_onnx_classifier(tmp / "clf.onnx")
    for owner in (ann, olga):
        owner.upload_model("clf", clf)
        for name in ("p", "q"):
            owner.create_pipeline(name)
            owner.create_pipeline_version(name, [{"model": "clf"}])
    worker = WorkerProcess(settings, "w1", tmp, data_dir=settings.data_dir,
                           env={"INFERSTREAM_HTTP_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)})
    canary_path = tmp / "canary.txt"
    canary = f"canary-{uuid4().hex}"
    canary_path.write_text(canary + "\n")
    try:
        worker.wait_ready()
        for owner in (ann, olga):
            for name in ("p", "q"):
                owner.deploy(name, worker_wait=60)
        worker.wait_ready("lab/p")
        wait_until(lambda: read_owner(settings), 60, "w1 owns the chDB folder")
        ann.infer("p", json_records(SERVED_BY_KAFKA))
        olga.infer("p", json_records(5))
        platform = Secured(settings, tmp, worker, users, canary, canary_path)
        wait_until(lambda: ann.count_logs("p") == SERVED_BY_KAFKA, 60, "setup's logs stored")
        yield platform
    finally:
        worker.stop()
        for client in users.values():
            client.close()
        registrar.stop()


def test_the_worker_listens_on_loopback_only_by_default(secured: Secured) -> None:
    listening = [c.laddr for c in psutil.Process(secured.worker.process.pid).net_connections(
        kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == secured.worker.port]
    assert listening and all(ipaddress.ip_address(a.ip).is_loopback for a in listening), listening
    assert secured.worker.health()["secured"] is True
    # Faust's own pages (partition assignment, tables, stats) are not served.
    import urllib.error

    for page in ("/router/", "/table/", "/graph/", "/stats/", "/performance/"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib_open(secured.worker, page)
        assert caught.value.code == 404, page


def test_inference_needs_a_good_credential(secured: Secured) -> None:
    body = record(1)
    status, answer = secured.infer({}, body)
    assert status == 401 and "this platform is secured" in answer["error"]
    good = secured.signed("ann", INFER, body)
    status, answer = secured.infer(good, body)
    assert status == 200 and answer["pipeline"] == "p", answer
    # The same signed request again: a replay.
    status, answer = secured.infer(good, body)
    assert status == 401 and "replayed request" in answer["error"]
    # Signed by nina's key in ann's name; the body changed after signing; an old signature.
    nina_key = read_private_key(secured.tmp / "nina.key")
    forged = {"Authorization": sign_request(nina_key, "ann", secured.settings.namespace,
                                            "POST", INFER, body)}
    status, answer = secured.infer(forged, body)
    assert status == 401 and "bad signature from 'ann'" in answer["error"]
    status, answer = secured.infer(secured.signed("ann", INFER, body), record(2))
    assert status == 401 and "bad signature" in answer["error"]
    ann_key = read_private_key(secured.tmp / "ann.key")
    stale = {"Authorization": sign_request(ann_key, "ann", secured.settings.namespace, "POST",
                                           INFER, body, int((time.time() - 600) * 1000))}
    status, answer = secured.infer(stale, body)
    assert status == 401 and "beyond the 60s window" in answer["error"]
    for header in ("Basic YW5uOmFubg==", "Bearer nope", "Inferstream-Ed25519 user=ann"):
        status, answer = secured.infer({"Authorization": header}, body)
        assert status == 401, (header, answer)
    secured.intact()


def test_roles_decide_who_may_infer(secured: Secured) -> None:
    body = record(3)
    for user, reason in [("vera", "is a viewer of workspace 'lab'"),
                         ("nina", "is not a member of workspace 'lab'"),
                         ("root", "is not a member of workspace 'lab'")]:
        status, answer = secured.infer(secured.signed(user, INFER, body), body)
        assert status == 403 and reason in answer["error"], (user, answer)
    # ann's request for olga's pipeline, named by workspace.
    theirs = "/pipelines/q/infer?workspace=other"
    status, answer = secured.infer(secured.signed("ann", theirs, body), body, theirs)
    assert status == 403 and "workspace 'other'" in answer["error"]
    # p is deployed in both workspaces: without ?workspace ann's own is chosen.
    bare = "/pipelines/p/infer"
    status, answer = secured.post(bare, body, secured.signed("ann", bare, body))
    assert status == 200 and answer["workspace"] == "lab"
    secured.http_served += 1
    secured.intact()


def test_api_keys_scopes_revocation_and_expiry(secured: Secured) -> None:
    ann, body = secured.users["ann"], record(4)
    _, infer_key = ann.create_api_key("svc", ["infer"])
    _, read_key = ann.create_api_key("dash", ["read"])
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    status, answer = secured.infer(bearer(infer_key), body)
    assert status == 200, answer
    status, answer = secured.infer(bearer(read_key), body)
    assert status == 403 and "not infer" in answer["error"]
    theirs = "/pipelines/q/infer?workspace=other"
    status, answer = secured.infer(bearer(infer_key), body, theirs)
    assert status == 403 and "cannot act in workspace 'other'" in answer["error"]
    wrong = infer_key[:-2] + ("AA" if not infer_key.endswith("AA") else "BB")
    status, answer = secured.infer(bearer(wrong), body)
    assert status == 401 and "not known to this platform" in answer["error"]
    # Revoked: refused by the worker within seconds of the event.
    ann.revoke_api_key("svc")
    wait_until(lambda: secured.infer(bearer(infer_key), body)[0] == 401, 10, "revocation")
    assert "was revoked" in secured.infer(bearer(infer_key), body)[1]["error"]
    # Expired: a key good for a few seconds.
    _, brief = ann.create_api_key(
        "brief", ["infer"], expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3))
    assert secured.infer(bearer(brief), body)[0] == 200
    wait_until(lambda: secured.infer(bearer(brief), body)[0] == 401, 15, "expiry")
    assert "expired at" in secured.infer(bearer(brief), body)[1]["error"]
    # The CLI's list shows no secret.
    listed = {k.name: k for k in ann.api_keys()}
    assert listed["svc"].revoked_at is not None and listed["dash"].scopes == ("read",)
    assert infer_key.rsplit("_", 1)[-1] not in repr(listed)
    secured.intact()


def test_reads_go_through_the_owner_with_the_callers_credential(secured: Secured) -> None:
    ann, vera = secured.users["ann"], secured.users["vera"]
    with open_reader(secured.settings, ann.http_headers) as reader:
        assert isinstance(reader, RemoteReader)  # the worker owns chDB: the CLI asks it
    assert vera.count_logs("p") == ann.count_logs("p") >= SERVED_BY_KAFKA  # a viewer reads
    assert [r["workspace"] for r in vera.logs("p", limit=3)] == ["lab"] * 3
    path = "/reads/count_logs"
    lab = json.dumps({"where": {"workspace": "lab", "pipeline": "p"}}).encode()
    other = json.dumps({"where": {"workspace": "other", "pipeline": "p"}}).encode()
    assert secured.post(path, lab)[0] == 401
    status, answer = secured.post(path, lab, secured.signed("nina", path, lab))
    assert status == 403 and "not a member of workspace 'lab'" in answer["error"]
    status, answer = secured.post(path, other, secured.signed("ann", path, other))
    assert status == 403 and "'other'" in answer["error"]
    wait_until(lambda: secured.post(path, other, secured.signed("root", path, other))[1].get(
        "result") == 5, 60, "an administrator reads other's 5 logs")
    _, read_key = ann.create_api_key("reader", ["read"])
    _, infer_key = ann.create_api_key("writer", ["infer"])
    status, answer = secured.post(path, lab, {"Authorization": f"Bearer {read_key}"})
    assert status == 200 and answer["result"] == ann.count_logs("p")
    assert secured.post(path, other, {"Authorization": f"Bearer {read_key}"})[0] == 403
    assert secured.post(path, lab, {"Authorization": f"Bearer {infer_key}"})[0] == 403
    # The raw SQL endpoint is gone, and unknown reads are named.
    raw = json.dumps({"sql": f"SELECT * FROM file('{secured.canary_path}', 'LineAsString')"}
                     ).encode()
    assert secured.post("/storage/query", raw, secured.signed("root", "/storage/query", raw)
                        )[0] == 404
    status, answer = secured.post("/reads/sql", raw, secured.signed("root", "/reads/sql", raw))
    assert status == 404 and "unknown read 'sql'" in answer["error"]
    secured.intact()


def injections(secured: Secured) -> list[str]:
    canary, out = secured.canary_path, secured.tmp / "outfile.csv"
    file_fn = f"file('{canary}', 'LineAsString')"
    return [
        f"x' UNION ALL SELECT * FROM {file_fn} --",
        f"x'; SELECT * FROM {file_fn}; --",
        f"p' INTO OUTFILE '{out}' --",
        "x' SETTINGS readonly = 0 --",
        "' OR 1 = 1 --",
        "x'/*c*/OR/**/'1'='1",
        file_fn,
        "url('http://127.0.0.1:9/x', 'LineAsString')",
        "s3('http://127.0.0.1:9/bucket/x', 'CSV')",
        "remote('127.0.0.1', system.one)",
        "executable('sh', 'CSV', 'a String')",
        "{workspace:String}",
        "x` FROM " + file_fn + " --",
        "x\uff07 OR \uff071\uff07=\uff071",  # fullwidth apostrophes: not quotes to the engine
        "x\u0000' OR 1=1 --",
        "\u202ex' OR 1=1 --",
        "x\\' OR 1=1 --",
        "lab\n' OR 1=1",
    ]


# Every caller-given string of every read, as a path into its JSON arguments.
STRING_FIELDS = {
    "logs": [("where", "workspace"), ("where", "pipeline"), ("where", "model")],
    "count_logs": [("where", "workspace"), ("where", "pipeline"), ("where", "model")],
    "count_logs_upto": [("where", "workspace"), ("where", "pipeline"), ("where", "model")],
    "nth_newest_log": [("where", "pipeline"), ("where", "model")],
    "log_page": [("where", "pipeline"), ("after", "record_id"), ("after", "model"),
                 ("since", "record_id")],
    "assay_results": [("workspace",), ("assay_id",)],
    "last_assay_window": [("workspace",), ("assay_id",)],
    "preview_assay": [("config", "pipeline"), ("config", "model"), ("config", "field"),
                      ("config", "workspace")],
    "runs": [("workspace",), ("task",)],
    "run": [("run_id",)],
    "run_logs": [("run_id",)],
    "table_rows": [("workspace",), ("connection",), ("table",)],
    "labelled_logs": [("workspace",), ("pipeline",)],
    "compare_replay": [("workspace",), ("pipeline",), ("replay",)],
}
POSITION = {"time": "2099-01-01T00:00:00+00:00", "record_id": "r", "step": 0, "model": "clf",
            "shadow": False}
BASE_ARGS: dict[str, dict[str, Any]] = {
    "logs": {"where": {"workspace": "lab", "pipeline": "p"}},
    "count_logs": {"where": {"workspace": "lab", "pipeline": "p"}},
    "count_logs_upto": {"where": {"workspace": "lab", "pipeline": "p"}, "cap": 1000},
    "nth_newest_log": {"where": {"workspace": "lab", "pipeline": "p"}, "n": 1},
    "log_page": {"where": {"workspace": "lab", "pipeline": "p"}, "size": 5,
                 "after": POSITION, "since": POSITION},
    "assay_results": {"workspace": "lab", "assay_id": "a"},
    "last_assay_window": {"workspace": "lab", "assay_id": "a"},
    "preview_assay": {"config": {"assay_id": "a", "workspace": "lab", "pipeline": "p",
                                 "model": "clf", "field": "probabilities",
                                 "baseline_values": [0.1, 0.5, 0.9],
                                 "first_window_start": "2026-01-01T00:00:00Z",
                                 "width": 3600},
                      "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T02:00:00Z"},
    "runs": {"workspace": "lab", "task": "t"},
    "run": {"run_id": "x"},
    "run_logs": {"run_id": "x"},
    "table_rows": {"workspace": "lab", "connection": "c", "table": "t"},
    "labelled_logs": {"workspace": "lab", "pipeline": "p"},
    "compare_replay": {"workspace": "lab", "pipeline": "p", "replay": "r"},
}


def test_no_sql_reaches_the_engine_through_any_parameter(secured: Secured) -> None:
    assert set(STRING_FIELDS) == set(READS) == set(BASE_ARGS)  # a new read joins this test
    before = Counter(r["record_id"] for r in secured.users["ann"].logs("p", limit=None))
    statuses: Counter[int] = Counter()
    for name, fields in STRING_FIELDS.items():
        path = f"/reads/{name}"
        status, _ = secured.post(path, enc := json.dumps(BASE_ARGS[name]).encode(),
                                 secured.signed("ann", path, enc))
        assert status in (200, 403), (name, status)  # the untouched arguments are fine
        for field in fields:
            for payload in injections(secured):
                args = json.loads(json.dumps(BASE_ARGS[name]))
                target = args
                for part in field[:-1]:
                    target = target[part]
                target[field[-1]] = payload
                body = json.dumps(args).encode()
                status, answer = secured.post(path, body, secured.signed("ann", path, body))
                statuses[status] += 1
                # Found nothing, refused the arguments or the workspace: never an answer
                # made from the payload, and never a server error.
                assert status in (200, 400, 403), (name, field, payload, status, answer)
                if status == 200 and name == "preview_assay":  # windows with no values
                    assert all(r["window_count"] == 0 for r in answer["result"]), answer
                elif status == 200 and name == "compare_replay":  # nothing compared
                    assert answer["result"]["records_compared"] == 0, answer
                    assert not answer["result"]["outputs"], answer
                elif status == 200:
                    assert answer["result"] in ([], 0, None), (name, field, payload, answer)
    assert statuses[200] and statuses[403], statuses
    assert not (secured.tmp / "outfile.csv").exists()
    after = Counter(r["record_id"] for r in secured.users["ann"].logs("p", limit=None))
    assert after == before  # nothing written, nothing dropped
    secured.intact()


def test_connection_queries_are_checked_when_registered(secured: Secured) -> None:
    ann = secured.users["ann"]
    for query, reason in [
        (f"SELECT * FROM file('{secured.canary_path}', 'LineAsString')", "table function"),
        ("SELECT * FROM inference_logs", "belongs to the platform"),
        ("SELECT 1; SELECT * FROM system.users", "2 statements"),
    ]:
        with pytest.raises(Exception, match=reason):
            ann.create_connection("sneaky", "clickhouse", {"query": query})
    with pytest.raises(Exception, match="belongs to the platform"):
        ann.create_connection("forge", "clickhouse", {"table": "inference_log_rows"})


def test_a_ten_megabyte_body_and_a_thousand_requests_at_once(secured: Secured) -> None:
    path, big = INFER, b"{" + b" " * 10_000_000 + b"}"
    status, answer = secured.post(path, big, secured.signed("ann", path, big))
    assert status == 413 and "over the limit of 1000000" in answer["error"]
    _, token = secured.users["ann"].create_api_key("burst", ["infer"])
    body = record(5)

    async def burst() -> list[tuple[int, str | None]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one() -> tuple[int, str | None]:
                async with session.post(f"{secured.worker.url}{path}", data=body,
                                        headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After")
            return await asyncio.gather(*(one() for _ in range(1000)))

    answers = asyncio.run(burst())
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {200, 503} and statuses[200] >= MAX_IN_FLIGHT, statuses
    assert statuses[503] and all(after == "1" for status, after in answers if status == 503)
    secured.http_served += statuses[200]
    secured.intact()  # every 200 logged once, nothing else


def self_signed(tmp: Path, ip: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for `ip` signed by it: (ca.pem, cert.pem, key.pem)."""
    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name(ip)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_where_a_certificate_is_configured(secured: Secured) -> None:
    """A second worker with a certificate, bound where told (127.0.0.2): it serves HTTPS to a
    client that checks it against the CA, and nothing to one that does not."""
    ca, cert, key = self_signed(secured.tmp, "127.0.0.2")
    tls = secured.settings.model_copy(update={
        "worker_bind": "127.0.0.2", "http_tls_cert": cert, "http_tls_key": key,
        "http_ca_location": ca, "data_dir": secured.tmp / "w2"})
    w2 = WorkerProcess(tls, "w2", secured.tmp, data_dir=secured.tmp / "w2",
                       env={"INFERSTREAM_LOG_SINK": "false"})
    try:
        w2.wait_ready("lab/p")
        assert w2.url.startswith("https://127.0.0.2:")
        listening = {c.laddr.ip for c in psutil.Process(w2.process.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == w2.port}
        assert listening == {"127.0.0.2"}
        ann = Client(tls, user="ann", workspace="lab", key=secured.tmp / "ann.key")
        answer = ann.infer_http("p", record(6), url=w2.url)
        assert answer["pipeline"] == "p" and answer["workspace"] == "lab"
        secured.http_served += 1
        # Reads through w2's storage (its own, empty): over HTTPS, with ann's signature.
        wait_until(lambda: read_owner(tls), 60, "w2 owns its chDB folder")
        assert ann.count_logs("q") == 0
        # A client without the CA refuses the worker; plain HTTP gets no answer.
        stranger = Client(secured.settings, user="ann", workspace="lab",
                          key=secured.tmp / "ann.key")
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.infer_http("p", record(7), url=w2.url)
        with pytest.raises(Exception, match="no worker answers"):
            ann.infer_http("p", record(7), url=w2.url.replace("https:", "http:"))
        with pytest.raises(HttpError, match="HTTP 401"):
            Client(tls, user="ann", workspace="lab").infer_http("p", record(8), url=w2.url)
    finally:
        w2.stop()
    secured.intact()
