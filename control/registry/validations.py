"""The rules of a pipeline version's validations: named row-level checks whose expression,
when true, flags a record. Pure; fold.py judges new versions by them and the data plane
(agents/serving/validations.py) evaluates what was judged here.

An expression is one Python-syntax expression, parsed with `ast` (never compiled or run) and
allowed only a small set of nodes, so hostile text is refused here, at creation, with the
reason; what it may name:
- `x`: the last step's output `x`, else the pipeline's input `x` (what records hold);
- `step<N>.x`: step N's output `x` (`step0.x`: the input), as results name an earlier step's;
- `x[i]`: element i of a record's `x`, flattened row-major;
- `id`, `key`: the record's id and Kafka key (text), unless a tensor has that name.
Every process that folds the control topic must judge alike, so the limits below are rules
of the fold: changing one changes which old events are accepted.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from control.registry.chains import STEP_PREFIX, returned
from control.registry.state import ModelStep, ModelVersion, Step, Validation
from schemas.errors import Rejected

MAX_VALIDATIONS = 32  # per pipeline version
MAX_CHARS = 1000  # of an expression
MAX_NODES = 200  # of its syntax tree
MAX_DEPTH = 24  # of its syntax tree
MAX_STRING = 256  # characters of a text constant
MAX_INDEX = 1_000_000  # of x[i]
MAX_EXPONENT = 64  # of a ** b, which takes only a number constant as b
CHECK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_STEP = re.compile(rf"{STEP_PREFIX}(0|[1-9][0-9]{{0,3}})")
RECORD_FIELDS = ("id", "key")  # the record's own fields, as text
INPUT_STEP = 0  # step<0>: the pipeline's inputs
RECORD = -1  # the step of RECORD_FIELDS
CONSTANTS = {"nan": math.nan, "inf": math.inf}
# name -> (fewest, most) arguments; agents/serving/validations.py maps them to numpy.
FUNCTIONS: Mapping[str, tuple[int, int]] = {
    "abs": (1, 1), "min": (2, 8), "max": (2, 8), "sqrt": (1, 1), "log": (1, 1), "exp": (1, 1),
}
_BOOL_OPS = (ast.And, ast.Or)
_UNARY_OPS = (ast.Not, ast.USub, ast.UAdd)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot)
_INT64 = 2**63

Outputs = Mapping[int, frozenset[str]]  # step number (0: inputs) -> the names it gives


@dataclass(frozen=True, slots=True)
class Ref:
    """A value an expression reads: (step, name); step 0 the inputs, RECORD the record's own."""

    step: int
    name: str


def check_validations(given: Iterable[Mapping[str, str]], outputs: Outputs,
                      widths: Mapping[Ref, int | None] | None = None) -> tuple[Validation, ...]:
    """A new version's validations, judged: names unique and well-formed, expressions that
    parse, use only what is allowed and name only what the chain gives, and (widths: values
    a row of each, None when unknown) never use a tensor of several values a row without an
    index. Raises Rejected."""
    checks = tuple(Validation(v["name"], v["expression"]) for v in given)
    if len(checks) > MAX_VALIDATIONS:
        raise Rejected(f"{len(checks)} validations is more than {MAX_VALIDATIONS} a version may "
                       "have; combine checks with 'or'")
    seen: set[str] = set()
    for check in checks:
        if not isinstance(check.name, str) or not CHECK_NAME.fullmatch(check.name):
            raise Rejected(f"invalid validation name {check.name!r}: use 1-63 lowercase "
                           "letters, digits, '-' or '_', starting with a letter")
        if check.name in seen:
            raise Rejected(f"validation name {check.name!r} is given twice; name each check once")
        seen.add(check.name)
        try:
            tree = parse(check.expression, check.name)
            refs(tree, outputs, check.name)
            _check_widths(tree, outputs, widths or {}, check.name)
        except (RecursionError, MemoryError) as exc:  # the fold must refuse, never crash
            raise Rejected(f"validation {check.name!r}: the expression is too complex to judge "
                           f"({type(exc).__name__}); write a simpler one") from None
    return checks


def chain_outputs(version_of: Callable[[ModelStep], ModelVersion], steps: Sequence[Step]
                  ) -> dict[int, frozenset[str]]:
    """What each step gives a check: step 0 the records' inputs (the first model's), step N
    the outputs every model it returns from has (a split's routes may differ)."""
    first = returned(steps[0])[0]
    given = {INPUT_STEP: frozenset(s.name for s in version_of(first).inputs)}
    for n, step in enumerate(steps, 1):
        sets = [frozenset(o.name for o in version_of(m).outputs) for m in returned(step)]
        given[n] = frozenset.intersection(*sets)
    return given


def chain_widths(version_of: Callable[[ModelStep], ModelVersion], steps: Sequence[Step]
                 ) -> dict[Ref, int | None]:
    """How many values a row each step's tensors hold (None: unknown, or routes differ)."""
    found: dict[Ref, set[int | None]] = {}
    first = returned(steps[0])[0]
    for spec in version_of(first).inputs:
        found.setdefault(Ref(INPUT_STEP, spec.name), set()).add(_width(spec.shape))
    for n, step in enumerate(steps, 1):
        for m in returned(step):
            for spec in version_of(m).outputs:
                found.setdefault(Ref(n, spec.name), set()).add(_width(spec.shape))
    return {ref: next(iter(w)) if len(w) == 1 else None for ref, w in found.items()}


def _width(shape: Sequence[int]) -> int | None:
    row = shape[1:]  # the first axis holds a record's rows
    return math.prod(row) if all(d > 0 for d in row) else None


def _check_widths(tree: ast.expr, outputs: Outputs, widths: Mapping[Ref, int | None],
                  name: str) -> None:
    indexed = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    for node in _operands(tree):
        width = widths.get(resolve(node, outputs, name))
        if id(node) not in indexed and width is not None and width > 1:
            text = ast.unparse(node)
            raise Rejected(f"validation {name!r}: {text!r} holds {width} values a row; a check "
                           f"reads one of them, e.g. {text}[0]")


def parse(expression: str, name: str = "") -> ast.expr:
    """The expression's syntax tree, or Rejected saying what is wrong and where."""
    what = f"validation {name!r}" if name else "validation"
    if not isinstance(expression, str) or not expression.strip():
        raise Rejected(f"{what} has an empty expression; write one, e.g. 'score > 0.9'")
    if len(expression) > MAX_CHARS:
        raise Rejected(f"{what}: the expression has {len(expression)} characters, more than "
                       f"{MAX_CHARS}; split it into several checks")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise Rejected(f"{what}: {expression!r} is not an expression: {exc.msg} at column "
                       f"{exc.offset}") from None
    except (RecursionError, MemoryError, ValueError) as exc:  # e.g. deep nesting, a NUL
        raise Rejected(f"{what}: {expression[:80]!r} cannot be parsed "
                       f"({type(exc).__name__}); write a shallower expression") from None
    _check_size(tree, what)
    _check_nodes(tree, what, expression)
    if not _boolean(tree):
        raise Rejected(f"{what}: {expression!r} is not true or false; compare it, e.g. "
                       f"'{expression} > 0'")
    return tree


def refs(tree: ast.expr, outputs: Outputs, name: str = "") -> frozenset[Ref]:
    """Every value the expression reads, resolved against the chain (Rejected naming the
    unknown one and what there is)."""
    found = set()
    for node in _operands(tree):
        found.add(resolve(node, outputs, name))
    return frozenset(found)


def resolve(node: ast.expr, outputs: Outputs, name: str = "") -> Ref:
    """The value a Name, `step<N>.x` or the container of `x[i]` reads."""
    what = f"validation {name!r}" if name else "validation"
    last = max(outputs)
    if isinstance(node, ast.Attribute):
        step = int(node.value.id.removeprefix(STEP_PREFIX))  # type: ignore[attr-defined]
        if step not in outputs:
            raise Rejected(f"{what}: {ast.unparse(node)!r} names step {step}, but the version "
                           f"has steps 1..{last} (step0: its inputs)")
        if node.attr not in outputs[step]:
            kind = "inputs" if step == INPUT_STEP else f"step {step}'s outputs"
            raise Rejected(f"{what}: {ast.unparse(node)!r}: there is no {node.attr!r} among "
                           f"{kind} {sorted(outputs[step])}")
        return Ref(step, node.attr)
    assert isinstance(node, ast.Name)
    for step in (last, INPUT_STEP):
        if node.id in outputs[step]:
            return Ref(step, node.id)
    if node.id in RECORD_FIELDS:
        return Ref(RECORD, node.id)
    raise Rejected(
        f"{what}: unknown name {node.id!r}; it may read the last step's outputs "
        f"{sorted(outputs[last])}, the inputs {sorted(outputs[INPUT_STEP])}, an earlier step's "
        f"output as '{STEP_PREFIX}<N>.<name>', {' and '.join(RECORD_FIELDS)}")


def operands(tree: ast.expr) -> list[ast.expr]:
    """The nodes of tree that read a value (names, step outputs), in order."""
    return list(_operands(tree))


def _operands(tree: ast.expr) -> Iterable[ast.expr]:
    skip: set[int] = set()  # ast.walk visits parents first: a step's or function's name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            skip.add(id(node.value))
            yield node
        elif isinstance(node, ast.Call):
            skip.add(id(node.func))
        elif isinstance(node, ast.Name) and id(node) not in skip and node.id not in CONSTANTS:
            yield node


def _check_size(tree: ast.expr, what: str) -> None:
    count = 0
    stack = [(tree, 1)]
    while stack:  # not recursive: a deep tree must be refused, not overflow the stack
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise Rejected(f"{what}: the expression has more than {MAX_NODES} parts; split it "
                           "into several checks")
        if depth > MAX_DEPTH:
            raise Rejected(f"{what}: the expression nests deeper than {MAX_DEPTH} at column "
                           f"{getattr(node, 'col_offset', 0) + 1}; write it flatter")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_nodes(tree: ast.expr, what: str, expression: str) -> None:
    compared = {id(n) for c in ast.walk(tree) if isinstance(c, ast.Compare)
                for n in (c.left, *c.comparators)}
    for node in ast.walk(tree):
        problem = _problem(node)
        if (problem is None and isinstance(node, ast.Constant) and type(node.value) is str
                and id(node) not in compared):
            problem = "text may only be compared ('country == \"de\"'), not computed with"
        if problem:
            at = getattr(node, "col_offset", None)
            where = f" at column {at + 1}" if at is not None else ""
            raise Rejected(f"{what}: {problem}{where} of {expression[:120]!r}; a check may "
                           "hold names, numbers, text, arithmetic, comparisons, and/or/not, "
                           f"'is nan', x[i] and {', '.join(FUNCTIONS)}")


def _problem(node: ast.AST) -> str | None:
    """Why node may not be in a check, or None."""
    match node:
        case ast.BoolOp(op=op) if isinstance(op, _BOOL_OPS):
            return None
        case ast.UnaryOp(op=op) if isinstance(op, _UNARY_OPS):
            return None
        case ast.BinOp(op=ast.Pow(), right=right):
            if not (_number(right) and abs(_value(right)) <= MAX_EXPONENT):
                return f"'**' takes a number constant of at most {MAX_EXPONENT} as exponent"
            return None
        case ast.BinOp(op=op) if isinstance(op, _BIN_OPS):
            return None
        case ast.Compare(left=first, ops=ops, comparators=comparators):
            for op, left, right in zip(ops, (first, *comparators[:-1]), comparators,
                                       strict=True):
                if not isinstance(op, _COMPARE_OPS):
                    return f"the comparison {type(op).__name__} is not allowed"
                if isinstance(op, ast.Is | ast.IsNot) and not (
                        isinstance(right, ast.Name) and right.id == "nan"):
                    return "'is' only tests 'is nan' or 'is not nan'"
                if not isinstance(op, ast.Eq | ast.NotEq) and (_text(left) or _text(right)):
                    return "text may only be compared with '==' and '!='"
            return None
        case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in FUNCTIONS:
            fewest, most = FUNCTIONS[fn]
            if not fewest <= len(args) <= most or any(isinstance(a, ast.Starred) for a in args):
                return f"{fn}() takes {fewest}..{most} arguments, got {len(args)}"
            return None
        case ast.Call():
            return f"only the functions {', '.join(FUNCTIONS)} may be called"
        case ast.Name(id=name):
            return _bad_identifier(name)
        case ast.Attribute(value=ast.Name(id=step), attr=attr) if _STEP.fullmatch(step):
            return _bad_identifier(attr)
        case ast.Attribute():
            return ("attribute access is not allowed (only 'step<N>.<name>', N a step "
                    "number)")
        case ast.Subscript(value=value, slice=index):
            if not isinstance(value, ast.Name | ast.Attribute):
                return "only a name or 'step<N>.<name>' may be indexed"
            if not (isinstance(index, ast.Constant) and type(index.value) is int
                    and 0 <= index.value <= MAX_INDEX):
                return f"an index is a whole number constant in 0..{MAX_INDEX}"
            return None
        case ast.Constant(value=value):
            return _bad_constant(value)
        case ast.Load() | ast.operator() | ast.boolop() | ast.unaryop() | ast.cmpop():
            return None
    return f"{type(node).__name__} is not allowed"


def _text(node: ast.expr) -> bool:
    """Whether node is text for sure: a text constant, or the record's own id or key."""
    return ((isinstance(node, ast.Constant) and type(node.value) is str)
            or (isinstance(node, ast.Name) and node.id in RECORD_FIELDS))


def _bad_identifier(name: str) -> str | None:
    if name.startswith("_"):
        return f"the name {name!r} starts with '_', which is not allowed"
    return None


def _bad_constant(value: object) -> str | None:
    if type(value) is bool:
        return None
    if type(value) is int:
        return None if -_INT64 <= value < _INT64 else f"the number {value} is out of 64 bits"
    if type(value) is float:
        return None
    if type(value) is str:
        return (None if len(value) <= MAX_STRING else
                f"a text constant of {len(value)} characters is longer than {MAX_STRING}")
    return f"the constant {value!r} is not a number or text"


def _number(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _value(node: ast.expr) -> float:
    if isinstance(node, ast.UnaryOp):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        return sign * _value(node.operand)
    assert isinstance(node, ast.Constant)
    return float(node.value)


def _boolean(node: ast.expr) -> bool:
    """Whether node is true or false for each record (a comparison, and/or/not of them)."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_boolean(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _boolean(node.operand)
    return isinstance(node, ast.Constant) and type(node.value) is bool
