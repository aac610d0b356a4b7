"""The SQL of assays: edges, bins, counts, densities, scores and window statistics.

The semantics are docs/assays.md's. Values come as bound parameters; the only text
put into these statements is numbers and column names that `AssayConfig` has validated.
"""

from __future__ import annotations

# docs/assays.md bins, over edges `e` (e[1] = e_0 ... e[k+1] = e_k, ClickHouse arrays are 1-based):
# bin 0 is NaN or x < e_0; bin k+1 is x > e_k; else the first i >= 1 with x <= e_i, so a
# value on an edge falls in the lower bin and e_0 itself in bin 1.
# Every branch is UInt64: mixed integer types make ClickHouse 26 infer a Variant, and
# comparing a Variant gives Nullable counts that the array functions then refuse.
BIN = """multiIf(
    isNaN(x) OR x < e[1], toUInt64(0),
    x > e[-1], toUInt64(length(e)),
    toUInt64(greatest(arrayFirstIndex(v -> x <= v, e), 2) - 1))"""

# k + 2 counts in one pass; summing per-bin indicator arrays keeps memory O(k) per group.
COUNTS = f"sumForEach(arrayMap(i -> toUInt64(({BIN}) = i), range(length(e) + 1)))"

# Statistics skip NaN (a NaN still counts in `n` and in bin 0). The median is the
# linear-interpolation one and never a sampling quantile; the std is the population one.
STATS = """count() AS n,
    countIf(NOT isNaN(x)) AS numbers,
    minIfOrNull(x, NOT isNaN(x)) AS min,
    maxIfOrNull(x, NOT isNaN(x)) AS max,
    avgIfOrNull(x, NOT isNaN(x)) AS mean,
    quantileExactInclusiveIfOrNull(0.5)(x, NOT isNaN(x)) AS median,
    stddevPopIfOrNull(x, NOT isNaN(x)) AS std"""

# Both densities with the same expression (count / total): equal shares are then equal
# doubles, and maxdiff's lowest-index tie-break is not decided by rounding.
SCORES = """arrayMap(c -> c / n, counts) AS window_densities,
    arrayMap(c -> c / arraySum(bc), bc) AS baseline_densities,
    arrayMap((w, b) -> abs(w - b), window_densities, baseline_densities) AS diffs,
    arraySum(arrayMap(
        (w, b) -> (w - b) * ln(w / b),
        arrayMap(w -> if(w = 0, eps, w), window_densities),
        arrayMap(b -> if(b = 0, eps, b), baseline_densities))) AS psi,
    arraySum(diffs) / 2 AS sumdiff,
    arrayMax(diffs) AS maxdiff,
    toUInt16(arrayFirstIndex(d -> d = maxdiff, diffs) - 1) AS maxdiff_bin,
    arraySum(arrayMap(
        (w, b) -> abs(w - b),
        arrayCumSum(window_densities), arrayCumSum(baseline_densities))) AS cumulative"""


def logged_values(io: str) -> str:
    """Time and value of the monitored element in the logs of one model, over [lo, hi).

    Live traffic only: a replay's logs (pipelines replay) are not the pipeline's traffic.
    Rows whose field is missing or shorter than the index are left out: reading past the
    end of a ClickHouse array gives 0, which would be counted as a real value.
    """
    column = {"input": "inputs", "output": "outputs"}[io]
    return f"""
        SELECT time, {column}[{{field:String}}][{{element:UInt32}}] AS x
        FROM inference_logs
        WHERE workspace = {{workspace:String}}
          AND pipeline = {{pipeline:String}}
          AND model = {{model:String}}
          AND replay = ''
          AND time >= {{lo:DateTime64(6, 'UTC')}}
          AND time < {{hi:DateTime64(6, 'UTC')}}
          AND length({column}[{{field:String}}]) > {{index:UInt32}}"""


GIVEN_VALUES = "SELECT arrayJoin({baseline_values:Array(Float64)}) AS x"


def edges_expression(binning: str, bins: int, provided: int) -> str:
    """Edges from the baseline's non-NaN values `x`, as one aggregate expression.

    `provided` is how many edges were given (0 unless binning is 'provided'); the given
    edges arrive as the `provided_edges` parameter.
    """
    low, high = "minIf(x, NOT isNaN(x))", "maxIf(x, NOT isNaN(x))"
    if binning == "equal":
        # e_0 and e_k are min and max exactly, so the baseline max lands in bin k
        # (min + (max - min) can round to a neighbour of max).
        return (
            f"arrayMap(i -> multiIf(i = 0, {low}, i = {bins}, {high}, "
            f"{low} + ({high} - {low}) * i / {bins}), range({bins + 1}))"
        )
    if binning == "quantile":
        if bins == 1:
            return f"[{low}, {high}]"
        levels = ", ".join(repr(i / bins) for i in range(1, bins))
        inner = f"quantilesExactInclusiveIf({levels})(x, NOT isNaN(x))"
        return f"arrayConcat([{low}], {inner}, [{high}])"
    if provided == bins + 1:
        return "any({provided_edges:Array(Float64)})"  # an aggregate, like the others
    return f"arrayConcat([{low}], {{provided_edges:Array(Float64)}})"


def baseline_query(source: str, edges: str) -> str:
    """Edges, counts, densities and statistics of the baseline in one statement."""
    return f"""
        WITH (SELECT {edges} FROM ({source})) AS e
        SELECT e AS edges, counts, arrayMap(c -> c / n, counts) AS densities,
            n, numbers, min, max, mean, median, std
        FROM (SELECT {COUNTS} AS counts, {STATS} FROM ({source}))"""


def windows_query(source: str) -> str:
    """Counts, densities, scores and statistics of successive windows of the logs.

    Window j is [start + j * interval, start + j * interval + width); with interval < width
    a row belongs to several windows, with interval > width to none. Window indexes come
    from integer microseconds (intDiv floors only because its operands are >= 0 here).
    Windows without rows are absent; the caller fills them in.
    """
    return f"""
        WITH
            {{edges:Array(Float64)}} AS e,
            {{baseline_counts:Array(UInt64)}} AS bc,
            {{epsilon:Float64}} AS eps,
            {{width_us:Int64}} AS span,
            {{interval_us:Int64}} AS hop
        SELECT window_index, counts, {SCORES}, n, numbers, min, max, mean, median, std
        FROM
        (
            SELECT window_index, {COUNTS} AS counts, {STATS}
            FROM
            (
                SELECT x, arrayJoin(range(
                    if(d >= span, intDiv(d - span, hop) + 1, 0),
                    least(intDiv(d, hop), {{windows:Int64}} - 1) + 1)) AS window_index
                FROM
                (
                    SELECT x, toUnixTimestamp64Micro(time) - {{start_us:Int64}} AS d
                    FROM ({source})
                )
            )
            GROUP BY window_index
        )
        ORDER BY window_index"""
