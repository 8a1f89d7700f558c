"""Model records as vectors: the layout of a global model's ``ArrayRecord``, the checks a
client's training reply must pass before its model may reach an aggregation rule, and the
conversions between replies and one ``Tensor[k, d]``.

A server-side robust rule sees every client's model as one row of a matrix. Building that
matrix is where a malformed reply (a missing record, a wrong shape, a NaN, a non-numeric
dtype) must be caught: each check below returns the reason a reply is refused, so that the
strategy can drop it, log why, and go on with the round.

Decoding reads each array's bytes in place (``numpy.frombuffer`` behind the ``.npy``
header) and copies it once, into its slice of the matrix.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from flwr_tempered.aggregators.base import finite_rows

__all__ = [
    "ArrayLayout",
    "ModelLayout",
    "ScreenedReplies",
    "decode_array",
    "screen_replies",
]


@dataclass(frozen=True)
class ArrayLayout:
    """One named array of a model: where it sits in the flat vector."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def size(self) -> int:
        """Number of scalars."""
        return math.prod(self.shape)


class ModelLayout:
    """The named arrays of a model (keys, shapes, dtypes) and their place in a vector.

    The vector's dtype is float64 if any array is float64, else float32, so float32 models
    (almost all) are aggregated in float32 like Flower's numpy strategies do. Integer
    arrays (e.g. BatchNorm's ``num_batches_tracked``) travel in the same vector and come
    back rounded to their dtype: in a float32 model they are exact up to ``2**24`` and
    rounded to the nearest float32 beyond (keeping such counters out of float64 halves the
    memory and time of aggregating a BatchNorm model).
    """

    def __init__(self, arrays: Sequence[tuple[str, tuple[int, ...], np.dtype]]) -> None:
        entries: list[ArrayLayout] = []
        offset = 0
        for key, shape, dtype in arrays:
            entry = ArrayLayout(key, tuple(int(s) for s in shape), np.dtype(dtype), offset)
            entries.append(entry)
            offset += entry.size
        self.entries: tuple[ArrayLayout, ...] = tuple(entries)
        self.dim = offset
        wide = any(e.dtype == np.float64 for e in self.entries)
        self.vector_dtype = np.dtype(np.float64 if wide else np.float32)

    @classmethod
    def of(cls, record: ArrayRecord) -> ModelLayout:
        """The layout of ``record`` (``ValueError`` if an array cannot be decoded)."""
        arrays = []
        for key, array in record.items():
            header = _npy_header(array)
            arrays.append((key, header[0], header[1]))
        return cls(arrays)

    def signature(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """Keys, shapes and dtypes, for comparing layouts."""
        return tuple((e.key, e.shape, e.dtype.str) for e in self.entries)

    def mismatch(self, record: ArrayRecord) -> str | None:
        """Why ``record`` does not have this layout, or ``None`` when it does."""
        keys = list(record.keys())
        expected = [e.key for e in self.entries]
        if set(keys) != set(expected):
            missing = sorted(set(expected) - set(keys))
            extra = sorted(set(keys) - set(expected))
            parts = []
            if missing:
                parts.append(f"missing arrays {missing}")
            if extra:
                parts.append(f"unexpected arrays {extra}")
            return "; ".join(parts)
        for entry in self.entries:
            try:
                shape, dtype, _ = _npy_header(record[entry.key])
            except ValueError as error:
                return f"array {entry.key!r} cannot be decoded: {error}"
            if shape != entry.shape:
                return (f"array {entry.key!r} has shape {shape}, the global model's has "
                        f"{entry.shape}")
            if dtype.kind not in "fiub":
                return f"array {entry.key!r} has non-numeric dtype {dtype}"
        return None

    def fill_row(self, row: np.ndarray, record: ArrayRecord) -> None:
        """Decode ``record`` (already checked with :meth:`mismatch`) into ``row``."""
        for entry in self.entries:
            row[entry.offset:entry.offset + entry.size] = decode_array(
                record[entry.key]
            ).reshape(-1)

    def to_vector(self, record: ArrayRecord) -> torch.Tensor:
        """``record`` as a ``Tensor[d]`` in :attr:`vector_dtype`."""
        row = np.empty(self.dim, dtype=self.vector_dtype)
        self.fill_row(row, record)
        return torch.from_numpy(row)

    def to_record(self, vector: torch.Tensor) -> ArrayRecord:
        """``vector`` cut back into the named arrays, each in its own shape and dtype
        (integer arrays are rounded)."""
        flat = vector.detach().cpu().numpy()
        arrays = {}
        for entry in self.entries:
            part = flat[entry.offset:entry.offset + entry.size].reshape(entry.shape)
            if entry.dtype.kind in "iub":
                part = np.rint(part)
            arrays[entry.key] = Array(np.ascontiguousarray(part.astype(entry.dtype)))
        return ArrayRecord(arrays)


def _npy_header(array: Array) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a Flower ``Array`` holding ``.npy`` bytes."""
    if not isinstance(array, Array):
        raise ValueError(f"expected a flwr Array, got {type(array).__name__}")
    if array.stype != "numpy.ndarray":
        raise ValueError(f"unsupported serialization {array.stype!r}")
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception as error:  # numpy raises ValueError or others on garbage
        raise ValueError(f"not a valid .npy payload ({error})") from None
    if dtype.hasobject:
        raise ValueError("object arrays are refused")
    offset = stream.tell()
    needed = math.prod(shape) * dtype.itemsize
    if len(array.data) - offset < needed:
        raise ValueError(f"payload holds {len(array.data) - offset} bytes, shape {shape} "
                         f"needs {needed}")
    if fortran and len(shape) > 1:
        raise ValueError("Fortran-ordered arrays are not supported")
    return tuple(int(s) for s in shape), dtype, offset


def decode_array(array: Array) -> np.ndarray:
    """The values of ``array`` as a read-only view on its bytes (no copy)."""
    shape, dtype, offset = _npy_header(array)
    values = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=offset)
    return values.reshape(shape)


# --------------------------------------------------------------------------- screening
@dataclass
class ScreenedReplies:
    """The outcome of checking a round's training replies.

    Attributes:
        accepted: indices (into the replies given) of the replies that passed.
        dropped: ``(index, reason)`` for each refused reply.
        models: ``Tensor[len(accepted), d]``, the accepted clients' models.
        weights: ``Tensor[len(accepted)]``, their ``weighted_by_key`` values.
        layout: the layout the models were checked against.
    """

    accepted: list[int]
    dropped: list[tuple[int, str]]
    models: torch.Tensor
    weights: torch.Tensor
    layout: ModelLayout


def _single_record(content: RecordDict, kind: type, name: str) -> tuple[object, str | None]:
    records = [value for value in content.values() if isinstance(value, kind)]
    if len(records) != 1:
        return None, f"{len(records)} {name}s in the reply, expected exactly one"
    return records[0], None


def _weight_of(metrics: MetricRecord, key: str) -> tuple[float, str | None]:
    if key not in metrics:
        return 0.0, f"the MetricRecord lacks the weight key {key!r}"
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0, f"weight {key!r} is not a number: {value!r}"
    if not math.isfinite(value) or value < 0:
        return 0.0, f"weight {key!r} must be finite and >= 0, got {value!r}"
    return float(value), None


def majority_layout(contents: Sequence[RecordDict]) -> ModelLayout | None:
    """The most common layout among the replies' ArrayRecords (used when the strategy has
    not seen the global model), or ``None`` when no reply holds a decodable one."""
    layouts: dict[tuple[object, ...], ModelLayout] = {}
    votes: Counter[tuple[object, ...]] = Counter()
    for content in contents:
        record, problem = _single_record(content, ArrayRecord, "ArrayRecord")
        if problem is not None:
            continue
        try:
            layout = ModelLayout.of(record)  # type: ignore[arg-type]
        except ValueError:
            continue
        signature = layout.signature()
        layouts.setdefault(signature, layout)
        votes[signature] += 1
    if not votes:
        return None
    return layouts[votes.most_common(1)[0][0]]


def screen_replies(
    contents: Sequence[RecordDict], layout: ModelLayout | None, weighted_by_key: str
) -> ScreenedReplies:
    """Check every reply and stack the models of those that pass.

    A reply passes when it holds exactly one ``ArrayRecord`` with ``layout`` (same keys and
    shapes, numeric dtypes, decodable bytes), exactly one ``MetricRecord`` with a finite
    non-negative ``weighted_by_key``, and only finite values. ``layout=None`` takes the
    majority layout of the replies.
    """
    if layout is None:
        layout = majority_layout(contents)
    if layout is None:
        return ScreenedReplies(
            [], [(i, "no decodable ArrayRecord in the reply") for i in range(len(contents))],
            torch.empty(0, 0), torch.empty(0), ModelLayout([]),
        )
    passed: list[tuple[int, ArrayRecord, float]] = []
    dropped: list[tuple[int, str]] = []
    for index, content in enumerate(contents):
        record, problem = _single_record(content, ArrayRecord, "ArrayRecord")
        if problem is None:
            problem = layout.mismatch(record)  # type: ignore[arg-type]
        metrics, metric_problem = _single_record(content, MetricRecord, "MetricRecord")
        problem = problem or metric_problem
        weight = 0.0
        if problem is None:
            weight, problem = _weight_of(metrics, weighted_by_key)  # type: ignore[arg-type]
        if problem is not None:
            dropped.append((index, problem))
        else:
            passed.append((index, record, weight))  # type: ignore[arg-type]
    matrix = np.empty((len(passed), layout.dim), dtype=layout.vector_dtype)
    for row, (_, record, _) in enumerate(passed):
        layout.fill_row(matrix[row], record)
    models = torch.from_numpy(matrix)
    finite = finite_rows(models)
    for row in (~finite).nonzero().flatten().tolist():
        dropped.append((passed[row][0], "the model holds non-finite values (NaN or Inf)"))
    keep = finite.nonzero().flatten()
    accepted = [passed[row][0] for row in keep.tolist()]
    weights = torch.tensor([passed[row][2] for row in keep.tolist()], dtype=models.dtype)
    dropped.sort()
    return ScreenedReplies(accepted, dropped, models[keep] if len(keep) < len(passed)
                           else models, weights, layout)
