"""The child process of a Python step: loads the user's module, then runs its predict() on the
batches the worker sends, one at a time, until its input closes.

Run as a script (`python -I python_child.py ARTIFACT MEMORY_MB`), never imported by the
worker's own code paths: it needs only the standard library and numpy. Under -I the user's
code sees neither PYTHONPATH nor the current folder, but an installed inferstream is still
importable from site-packages: this is a process boundary, not a sandbox (docs/security.md).
It speaks the framing of `write_message`/`read_message` on two private file descriptors;
fd 1 is pointed at stderr so that print() cannot corrupt them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ENTRY = "step.py"  # the module a folder artifact must hold
TIMESTAMP = "datetime64[us]"  # the dtype a declared "timestamp" becomes
KINDS = "biufUM"  # booleans, ints, floats, text (numpy str), timestamps (datetime64)
_LENGTH = struct.Struct("<Q")
_MEMORY_MB = 0  # the child's RLIMIT_AS, for messages


# -- framing (the parent uses the same two functions) ----------------------------------------

def write_message(send: Callable[[memoryview], None], header: dict[str, Any],
                  arrays: dict[str, Any] | None = None) -> None:
    """One message: an 8-byte length, a JSON header naming each array's dtype and shape, then
    each array's raw bytes in order. No pickle: the reader never runs code to decode it."""
    import numpy as np

    parts: list[memoryview] = []
    if arrays:
        header = {**header, "arrays": []}
        for name, array in arrays.items():
            a = np.ascontiguousarray(array)
            header["arrays"].append([name, a.dtype.str, list(a.shape)])
            parts.append(memoryview(a.reshape(-1).view(np.uint8)))
    head = json.dumps(header).encode()
    send(memoryview(_LENGTH.pack(len(head)) + head))
    for part in parts:
        send(part)


def write_all(fd: int, data: memoryview) -> None:
    """Write all of data to a blocking file descriptor."""
    while data:
        data = data[os.write(fd, data):]


# -- the child -------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    global _MEMORY_MB
    artifact, memory_mb = Path(argv[1]), int(argv[2])
    _MEMORY_MB = memory_mb
    if memory_mb > 0:  # before anything allocates: numpy, the user's module and its load()
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Private copies of the pipes, then fd 0 from /dev/null and fd 1 onto stderr.
    inbox, outbox = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    send = partial(write_all, outbox)
    _watch_parent()
    try:
        step, folder = _import(artifact)
        inputs, outputs = _specs(step, "INPUTS"), _specs(step, "OUTPUTS")
        predict = getattr(step, "predict", None)
        if not callable(predict):
            raise TypeError("the module defines no function predict(batch) -> dict of arrays")
        if callable(getattr(step, "load", None)):
            step.load(folder)
    except BaseException as exc:  # anything the user's module does wrong is reported, not shown
        write_message(send, {"ok": False, "error": _describe(exc)})
        return 1
    write_message(send, {"ok": True, "inputs": inputs, "outputs": outputs, "pid": os.getpid()})
    return _serve(inbox, send, predict, outputs)


def _serve(inbox: int, send: Callable[[memoryview], None], predict: Any,
           outputs: dict[str, list]) -> int:
    import numpy as np

    reader = os.fdopen(inbox, "rb", buffering=0)
    while True:
        message = read_message(reader, None)
        if message is None:
            return 0  # the worker closed our input: it is done with us
        _, batch = message
        try:
            returned = predict(batch)
            if not isinstance(returned, dict):
                raise TypeError(f"predict returned {type(returned).__name__}, not a dict of "
                                f"arrays named {sorted(outputs)}")
            arrays = {}
            for name in outputs:
                if name not in returned:
                    raise KeyError(f"predict returned no {name!r}; it returned "
                                   f"{sorted(map(str, returned))}")
                a = np.asarray(returned[name])
                if a.dtype.kind == "O" and all(isinstance(v, str) for v in a.flat):
                    a = a.astype(str)  # text as Python str objects: numpy str instead
                if a.dtype.kind not in KINDS:
                    raise TypeError(f"output {name!r} has dtype {a.dtype}; return booleans, "
                                    "numbers, text or datetime64 values")
                arrays[name] = a
        except BaseException as exc:  # the step's own failure: the worker dead-letters its rows
            write_message(send, {"ok": False, "error": _describe(exc)})
            continue
        write_message(send, {"ok": True}, arrays)


def read_message(reader: Any, limit_bytes: int | None) -> tuple[dict, dict[str, Any]] | None:
    """The next message from a blocking binary reader, or None at end of input; arrays whose
    total size passes limit_bytes are refused before anything is allocated."""
    import numpy as np

    raw = _read_exact(reader, _LENGTH.size)
    if raw is None:
        return None
    (length,) = _LENGTH.unpack(raw)
    if limit_bytes is not None and length > 1 << 20:
        raise ValueError(f"message header of {length} bytes")
    head = _read_exact(reader, length)
    if head is None:
        raise EOFError("input ended inside a message")
    header = json.loads(head)  # the parent turns a RecursionError (deep nesting) into a refusal
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ValueError(f"message header {head[:80]!r} is not an object")
    specs = [(n, np.dtype(d), tuple(s)) for n, d, s in header.pop("arrays", [])]
    sizes = []
    for name, dtype, shape in specs:
        # Python ints, never numpy's: a product of int64 sizes wraps, and a wrapped (negative)
        # size would pass the limit below.
        if (dtype.kind not in KINDS or dtype.hasobject
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"array {name!r} of dtype {dtype} and shape {list(shape)}")
        sizes.append(math.prod(shape) * dtype.itemsize)
    if limit_bytes is not None and sum(sizes) > limit_bytes:
        raise ValueError(f"arrays of {sum(sizes)} bytes, over the limit of {limit_bytes}")
    arrays = {}
    for (name, dtype, shape), size in zip(specs, sizes, strict=True):
        data = _read_exact(reader, size)
        if data is None:
            raise EOFError("input ended inside a message")
        arrays[name] = np.frombuffer(data, dtype).reshape(shape)
    return header, arrays


def _read_exact(reader: Any, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = reader.readinto(view[got:])
        if not n:
            if got:
                raise EOFError("input ended inside a message")
            return None
        got += n
    return buffer


def _import(artifact: Path) -> tuple[Any, Path]:
    source = artifact / ENTRY if artifact.is_dir() else artifact
    folder = artifact if artifact.is_dir() else artifact.parent
    if not source.is_file():
        raise FileNotFoundError(f"the artifact folder has no {ENTRY}; put the step's "
                                "INPUTS, OUTPUTS and predict() in it")
    sys.path.insert(0, str(folder))  # the step may import helper modules beside it
    spec = importlib.util.spec_from_file_location("step", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step"] = module
    spec.loader.exec_module(module)
    return module, folder


def _specs(step: Any, name: str) -> dict[str, list]:
    """INPUTS or OUTPUTS as {name: [dtype, shape]}, checked for form."""
    import numpy as np

    declared = getattr(step, name, None)
    if not isinstance(declared, dict) or not declared:
        raise TypeError(f"the module defines no {name}: declare {name} = {{'name': (dtype, "
                        "shape)}} at module level, e.g. {'x': ('float32', (-1, 4))}")
    specs: dict[str, list] = {}
    for key, value in declared.items():
        try:
            dtype, shape = value
            shape = [int(d) for d in shape]
            if dtype in ("timestamp", "datetime64[us]"):
                dtype = TIMESTAMP
            elif dtype != "string":
                dtype = np.dtype(dtype).name
                if np.dtype(dtype).kind not in "biuf":
                    raise TypeError(dtype)
            if not isinstance(key, str) or not shape or shape[0] != -1:
                raise ValueError(shape)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{key!r}] = {value!r}: give (dtype, shape) with dtype a "
                            "numpy number or bool name, 'string' or 'timestamp' (datetime64[us], "
                            "UTC), and a shape whose first axis is -1 (the batch)") from None
        specs[key] = [dtype, shape]
    return specs


def _describe(exc: BaseException) -> str:
    # The user's frame nearest the error says where to look; our own frames do not.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""
    text = str(exc)
    if isinstance(exc, MemoryError) and _MEMORY_MB:
        text = f"over the memory limit of {_MEMORY_MB} MiB {text}".rstrip()
    return f"{type(exc).__name__}: {text}{where}"[:2000]


def _watch_parent() -> None:
    # A worker killed with -9 cannot stop its children; one that loops in predict() would run
    # on forever, so a thread ends the process once the parent is gone.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
