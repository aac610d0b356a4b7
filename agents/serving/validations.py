"""A pipeline version's validations, evaluated over a whole micro-batch at once.

The registry judged each expression (control/registry/validations.py: allowed nodes, names,
limits); here simpleeval walks the same tree with its handlers replaced by numpy's
elementwise ones, so that a name is a column of the batch, one value a record, and
`x[i]` is element i of each record's x (flattened row-major), never row i of the batch.
A record is flagged when the expression is true for it (NaN compares false).

A check that cannot be evaluated for a batch (text compared with a number, a record whose `x`
has no element i, a name that is no single value) flags no record of it: its error is
reported once per batch (CheckReport.errors) and the results go out as they are.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from simpleeval import SimpleEval

from control.registry.state import Validation
from control.registry.validations import (
    CONSTANTS,
    INPUT_STEP,
    Outputs,
    Ref,
    operands,
    parse,
    resolve,
)
from schemas.errors import InferstreamError

# A Ref's values for the batch: a 2-D array (a row a record) or a list of each record's 1-D
# array when records hold different numbers of values.
Values = np.ndarray | list[np.ndarray]
Source = Callable[[Ref], Values]

_COMPARE = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
            ast.Gt: np.greater, ast.GtE: np.greater_equal}
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
               ast.Div: np.true_divide, ast.FloorDiv: np.floor_divide, ast.Mod: np.mod,
               ast.Pow: np.power}
_FUNCTIONS: Mapping[str, Callable[..., np.ndarray]] = {
    "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "exp": np.exp,
    "min": lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)),
    "max": lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)),
}


class CheckError(InferstreamError):
    """A check that cannot be evaluated over a batch's values."""


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    expression: str
    tree: ast.expr
    nodes: Mapping[int, Ref]  # by id() of the tree's Name/Attribute nodes


@dataclass(slots=True)
class CheckReport:
    """What a batch's checks found: each record's failed checks, in the batch's order of
    results; how many records each check flagged; the checks that could not be evaluated."""

    anomalies: list[tuple[str, ...]]
    flagged: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Checks:
    """The validations of one pipeline version, ready to run over batches."""

    def __init__(self, validations: Sequence[Validation], outputs: Outputs) -> None:
        """outputs: what each step gives (0: the inputs), as the registry's chain_outputs."""
        self.checks = tuple(_compile(v, outputs) for v in validations)
        self.names = tuple(c.name for c in self.checks)
        self.refs = frozenset(r for c in self.checks for r in c.nodes.values())
        self.steps = frozenset(r.step for r in self.refs if r.step > INPUT_STEP)

    def evaluate(self, source: Source, n: int) -> CheckReport:
        """Every check over n records whose values source gives."""
        columns = _Columns(source, n)
        flags = np.zeros((len(self.checks), n), dtype=bool)
        report = CheckReport([])
        for k, check in enumerate(self.checks):
            try:
                with np.errstate(all="ignore"):  # x / 0 is inf, as in ClickHouse; not an error
                    result = _Evaluator(check, columns).eval(check.expression, check.tree)
                flags[k] = np.broadcast_to(np.asarray(result, dtype=bool), (n,))
            except Exception as exc:  # numpy and simpleeval raise many types on bad data
                text = str(exc) if isinstance(exc, CheckError) else \
                    f"{type(exc).__name__}: {exc}"
                report.errors[check.name] = text[:500]
                continue
            report.flagged[check.name] = int(flags[k].sum())
        report.anomalies = self._named(flags)
        return report

    def _named(self, flags: np.ndarray) -> list[tuple[str, ...]]:
        """Each record's failed checks: a bit per check, one tuple per combination that
        occurs (a batch has few), not one per record."""
        codes = np.zeros(flags.shape[1], dtype=np.int64)
        for k, row in enumerate(flags):  # MAX_VALIDATIONS bits fit an int64
            codes |= row.astype(np.int64) << k
        combos = {int(code): tuple(name for k, name in enumerate(self.names) if code >> k & 1)
                  for code in np.unique(codes)}
        return [combos[code] for code in codes.tolist()]


def stacked(arrays: Sequence[np.ndarray]) -> Values:
    """Each record's values flattened row-major: a 2-D array when they have as many each."""
    flat = [np.ravel(a) for a in arrays]
    if flat and flat[0].dtype.kind == "S":  # bytes as the text they are, for == "de"
        flat = [np.char.decode(f, "utf-8", "replace") for f in flat]
    if flat and all(len(f) == len(flat[0]) for f in flat):
        return np.stack(flat)
    return flat


def texts(values: Sequence[str | bytes | None]) -> np.ndarray:
    """The record's own fields (id, key) as a column of text (None where absent)."""
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    return column


def _compile(v: Validation, outputs: Outputs) -> _Check:
    # Judged by the registry already; resolved again against the loaded runtimes' names.
    tree = parse(v.expression, v.name)
    nodes = {id(node): resolve(node, outputs, v.name) for node in operands(tree)}
    return _Check(v.name, v.expression, tree, nodes)


class _Columns:
    """A batch's values of each Ref, read once and shaped a column per use."""

    def __init__(self, source: Source, n: int) -> None:
        self.source, self.n = source, n
        self._values: dict[Ref, Values] = {}

    def column(self, ref: Ref, index: int | None, text: str) -> np.ndarray:
        """The batch's values of ref: its only value a record (index None), or element index."""
        values = self._values.get(ref)
        if values is None:
            values = self._values[ref] = self.source(ref)
        if isinstance(values, np.ndarray):
            width = values.shape[1] if values.ndim == 2 else 1
            if index is None and width != 1:
                raise CheckError(f"{text!r} holds {width} values a record; index it, e.g. "
                                 f"{text}[0]")
            at = index or 0
            if at >= width:
                raise CheckError(f"{text}[{at}]: a record's {text!r} has only {width} values")
            return values.reshape(len(values), width)[:, at]
        # Ragged: records hold different numbers of values.
        at = index or 0
        short = [i for i, v in enumerate(values) if len(v) <= at or (index is None and len(v) != 1)]
        if short:
            got = len(values[short[0]])
            raise CheckError(f"{text!r}: {len(short)} records hold {got} values, not "
                             + (f"more than {at}" if index is not None else "one"))
        return np.array([v[at] for v in values])


class _Evaluator(SimpleEval):
    """simpleeval's walk of a judged tree, every operation elementwise over the batch."""

    def __init__(self, check: _Check, columns: _Columns) -> None:
        super().__init__(operators={}, functions={}, names={})
        self.check, self.columns = check, columns
        self.nodes.update({
            ast.Name: self._name, ast.Attribute: self._field, ast.Subscript: self._element,
            ast.BoolOp: self._bool, ast.UnaryOp: self._unary, ast.BinOp: self._arithmetic,
            ast.Compare: self._compare, ast.Call: self._call,
        })

    def _value(self, node: ast.expr, index: int | None) -> np.ndarray:
        ref = self.check.nodes[id(node)]
        return self.columns.column(ref, index, ast.unparse(node))

    def _name(self, node: ast.Name) -> Any:
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        return self._value(node, None)

    def _field(self, node: ast.Attribute) -> np.ndarray:
        return self._value(node, None)

    def _element(self, node: ast.Subscript) -> np.ndarray:
        index = node.slice
        assert isinstance(index, ast.Constant)  # the registry allows whole number constants
        return self._value(node.value, index.value)

    def _bool(self, node: ast.BoolOp) -> np.ndarray:
        reduce = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return reduce.reduce([_truth(self._eval(v)) for v in node.values])

    def _unary(self, node: ast.UnaryOp) -> np.ndarray:
        operand = self._eval(node.operand)
        if isinstance(node.op, ast.Not):
            return np.logical_not(_truth(operand))
        return np.negative(_number(operand)) if isinstance(node.op, ast.USub) else \
            np.positive(_number(operand))

    def _arithmetic(self, node: ast.BinOp) -> np.ndarray:
        left, right = _number(self._eval(node.left)), _number(self._eval(node.right))
        return _ARITHMETIC[type(node.op)](left, right)

    def _compare(self, node: ast.Compare) -> np.ndarray:
        left = self._eval(node.left)
        result: Any = True
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.Is | ast.IsNot):  # only 'is nan': the registry says so
                found = np.isnan(_number(left))
                result = np.logical_and(result, found if isinstance(op, ast.Is) else ~found)
                continue
            right = self._eval(comparator)
            result = np.logical_and(result, _compared(_COMPARE[type(op)], left, right))
            left = right
        return result

    def _call(self, node: ast.Call) -> np.ndarray:
        assert isinstance(node.func, ast.Name)
        return _FUNCTIONS[node.func.id](*(_number(self._eval(a)) for a in node.args))


def _number(value: Any) -> Any:
    """value as float64, if it is numbers (text is only ever compared): arithmetic is in
    float64, so a comparison counts as 0 or 1 (numpy's bool `+` would be `or`) and integers
    neither wrap (`x ** 64`) nor divide by zero into 0."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise CheckError(f"arithmetic on {_kind(array.dtype.kind)} values; only numbers can be "
                         "computed with")
    return array.astype(np.float64, copy=False)


def _truth(value: Any) -> Any:
    if np.asarray(value).dtype.kind != "b":
        raise CheckError("'and', 'or' and 'not' take comparisons, not values")
    return value


def _compared(op: np.ufunc, left: Any, right: Any) -> Any:
    a, b = np.asarray(left), np.asarray(right)
    numbers = a.dtype.kind in "biuf" and b.dtype.kind in "biuf"
    texts = a.dtype.kind in "USO" and b.dtype.kind in "USO"
    if not (numbers or texts) or (texts and op not in (np.equal, np.not_equal)):
        raise CheckError(f"cannot compare {_kind(a.dtype.kind)} with {_kind(b.dtype.kind)} by "
                         f"{op.__name__}; text is compared only with == and !=")
    if texts:  # object arrays compare item by item, as Python strings
        return op(a.astype(object), b.astype(object)).astype(bool)
    return op(a, b)


def _kind(kind: str) -> str:
    return "number" if kind in "biuf" else "text" if kind in "USO" else f"{kind!r}-kind"
