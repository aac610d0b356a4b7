"""The Prometheus and Grafana of compose.yaml: every series the provisioned dashboard queries is one
a real worker exposes on GET /metrics, with the labels the query uses; Prometheus scrapes the
workers' service and port; Grafana finds the datasource and the dashboard where compose mounts
them; every published port is on the host's loopback. Compose itself is not run (no Docker)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until
from tests.worker_platform import Platform, json_records, serving

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "control" / "local" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "inferstream.json"
# Labels Prometheus attaches to every series it scrapes, and the series it makes per target.
TARGET_LABELS = {"instance", "job"}
SCRAPE_SERIES = {"up"}
# PromQL's functions and aggregations the dashboard may call (a misspelt one fails the test).
FUNCTIONS = {"sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "rate",
             "irate", "increase", "delta", "deriv", "histogram_quantile", "abs", "clamp_min",
             "clamp_max", "label_replace", "vector", "scalar", "time", "changes", "resets",
             "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "absent"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


@dataclass
class Query:
    """What one PromQL expression reads: series names, the labels it uses on each, functions."""

    expr: str
    labels: dict[str, set[str]] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)


def parse(expr: str, grouping: frozenset[str] = frozenset()) -> Query:
    """Series, labels and functions of a PromQL expression (or of Grafana's label_values)."""
    found = _LABEL_VALUES.match(expr)
    if found:  # a variable's query: label_values(selector, label)
        return parse(found[1], frozenset({found[2]}))
    query = Query(expr)
    text = _STRING.sub('""', expr)  # label values may hold anything
    by = set(grouping)
    for group in _GROUPING.findall(text):
        by |= {label.strip() for label in group.split(",") if label.strip()}
    matched: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(text):
        assert name, f"a selector without a series name in {expr!r}: name the series"
        matched.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    bare = _RANGE.sub("", _GROUPING.sub("", _SELECTOR.sub(lambda m: m[1] or "", text)))
    for token in _IDENT.finditer(bare):
        name = token[0].rstrip("( ")
        if token[1]:
            query.functions.add(name)
        elif name not in KEYWORDS:
            query.labels.setdefault(name, set())
    for name in query.labels:
        # Grouping labels must be on every series the expression reads; `le` on histograms'.
        query.labels[name] = matched.get(name, set()) | {
            label for label in by if label != "le" or name.endswith("_bucket")}
    return query


def dashboard_queries() -> list[Query]:
    """Every panel's and every variable's query of the provisioned dashboard."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        q = var["query"]
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return [parse(e) for e in exprs]


def exposed(body: str) -> dict[str, set[str]]:
    """Label names of every sample name (as Prometheus stores it) of a text exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (ROOT / source).resolve()
    return out


def container_port(service: dict) -> int:
    """The one container port a service publishes."""
    (port,) = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    return port


# -- the dashboard's PromQL, the files compose mounts (no broker) ----------------------------------


def test_parse_finds_series_labels_and_functions() -> None:
    q = parse('histogram_quantile(0.99, sum by (workspace, le) (rate(a_bucket{pipeline=~"x{y}", '
              'job="j"}[$__rate_interval]))) / on (workspace) b_total')
    assert q.functions == {"histogram_quantile", "sum", "rate"}
    assert q.labels == {"a_bucket": {"workspace", "le", "pipeline", "job"},
                        "b_total": {"workspace"}}
    assert parse('label_values(v{workspace=~"$workspace"}, pipeline)').labels == {
        "v": {"workspace", "pipeline"}}


def test_every_query_uses_known_functions_variables_and_job() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in scrape["scrape_configs"]}
    queries = dashboard_queries()
    assert len(queries) >= 10
    for q in queries:
        assert q.functions <= FUNCTIONS, f"{q.expr}: unknown {q.functions - FUNCTIONS}"
        assert q.labels, f"{q.expr} reads no series"
        used = set(re.findall(r"\$([a-zA-Z_]\w*)", q.expr)) - {"__rate_interval", "__range"}
        assert used <= variables, f"{q.expr}: no variable {used - variables}"
        for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', q.expr):
            assert job in jobs, f"{q.expr}: Prometheus has no job {job!r}, only {jobs}"
    panels = " ".join(p["title"].lower() for p in board["panels"])
    for shown in ("throughput", "p99 batch", "lag", "dead letters", "load failures", "ready"):
        assert shown in panels


def test_compose_publishes_every_port_on_loopback_only() -> None:
    services = compose()["services"]
    assert {"prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            host = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host == "127.0.0.1", f"service {name} publishes {port} beyond the loopback"
        image = service["image"]
        assert re.search(r":v?\d+\.\d+", image), f"service {name}: pin {image} to a version"


def test_prometheus_scrapes_the_compose_workers() -> None:
    services = compose()["services"]
    worker, prometheus = services["worker"], services["prometheus"]
    config = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    assert config == OBSERVABILITY / "prometheus.yml"
    (job,) = yaml.safe_load(config.read_text())["scrape_configs"]
    web_port = int(re.search(r"--web-port\s+(\d+)", worker["command"])[1])
    assert job["metrics_path"] == "/metrics"
    for sd in job["dns_sd_configs"]:  # one address per scaled worker
        assert set(sd["names"]) <= set(services) and sd["type"] == "A"
        assert sd["port"] == web_port == container_port(worker)
    # A worker bound to its container's loopback could not be scraped from another container.
    assert worker["environment"]["INFERSTREAM_WORKER_BIND"] == "0.0.0.0"


def test_grafana_finds_its_datasource_and_dashboard_and_needs_a_password() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounted = mounts(grafana)
    provisioning = mounted["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == f"http://prometheus:{container_port(services['prometheus'])}"
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert mounted[provider["options"]["path"]] / DASHBOARD.name == DASHBOARD
    board = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    uids |= {v["datasource"]["uid"] for v in board["templating"]["list"]}
    assert uids == {source["uid"]}
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"  # no default
    check = " ".join(grafana["entrypoint"])
    assert "$${#GF_SECURITY_ADMIN_PASSWORD}" in check and check.endswith("exec /run.sh")


# -- against a real worker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with serving(broker.bootstrap, tmp_path_factory.mktemp("grafana"), "g", keras=False) as p:
        yield p


def scrape(platform: Platform) -> str:
    with urllib.request.urlopen(f"{platform.workers[0].url}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.kafka
def test_every_series_the_dashboard_queries_is_exposed_with_its_labels(
        platform: Platform) -> None:
    platform.pipeline("watched", [{"model": "clf", "version": 1}])
    platform.deploy("watched")
    bad = {"id": "bad", "float_input": [1.0]}  # of the wrong shape: dead-lettered
    replies = platform.client.infer("watched", [*json_records(3), bad])
    assert [r.ok for r in replies] == [True, True, True, False]
    # Counters appear with the first batch served; lag is reported a moment later.
    lag = re.compile(r'^inferstream_consumer_lag_records\{[^}]*pipeline="watched"', re.M)

    def with_lag() -> str | None:
        body = scrape(platform)
        return body if lag.search(body) else None

    got = exposed(wait_until(with_lag, 30, "the lag of pipeline watched on /metrics"))
    for q in dashboard_queries():
        for name, labels in q.labels.items():
            if name in SCRAPE_SERIES:
                assert labels <= TARGET_LABELS, q.expr
                continue
            assert name in got, f"{q.expr}: no worker exposes {name}"
            missing = labels - got[name] - TARGET_LABELS
            assert not missing, f"{q.expr}: {name} has no label {missing}, only {got[name]}"
