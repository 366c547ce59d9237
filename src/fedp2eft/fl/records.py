"""Conversion between torch state dicts / plain dicts and Flower records."""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..setup.jobs import Job

# Flower's own ``.npy`` conversion (``Array.from_numpy_ndarray``, ``Array.numpy``) goes through ``np.save`` /
# ``np.load`` on a BytesIO, which copy in 256 KB-16 MB chunks with a Python loop: for the quickstart's e5-small
# Standard-FL job (22M parameters per message) that was ~2.5 of the engine's 5.6 s over the bare loop
# (benchmarks/engine_overhead.py). The functions below write and read the very same ``.npy`` bytes with one
# copy (or none), so every Flower component, strategy and transport reads them as its own.


def to_array(tensor: torch.Tensor) -> Array:
    """``Array(tensor)`` with the bytes ``np.save`` would write (format 1.0 header, C order), in one copy."""
    ndarray = tensor.detach().cpu().contiguous().numpy()
    if ndarray.dtype.hasobject:  # pragma: no cover - torch tensors never hold objects
        return Array(ndarray)
    shape = tuple(int(n) for n in ndarray.shape)
    body = memoryview(ndarray.reshape(-1)).cast("B") if ndarray.size else b""
    return Array(dtype=str(ndarray.dtype), shape=shape, stype="numpy.ndarray",
                 data=b"".join((_npy_header(ndarray.dtype.str, shape), body)))


@functools.lru_cache(maxsize=4096)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` 1.0 header ``np.save`` writes for a C-ordered array (the same few hundred every round)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue()


def array_view(array: Array) -> np.ndarray:
    """The array of an ``Array`` holding ``.npy`` bytes, as a read-only view of those bytes (no copy); never
    write to it. Anything else (Fortran order, another serialisation) is read by Flower's ``Array.numpy``."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:8] in _NPY_MAGIC:
        size = 4 if data[6] == 2 else 2  # the header's length: 2 bytes in format 1.0, 4 in 2.0
        end = 8 + size + int.from_bytes(data[8:8 + size], "little")
        parsed = _npy_layout(data[:end])
        if parsed is not None:
            dtype, shape = parsed
            return np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=end).reshape(shape)
    return array.numpy()


_NPY_MAGIC = (b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00")


@functools.lru_cache(maxsize=4096)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """``(dtype, shape)`` of a ``.npy`` header, parsed by numpy once per distinct header; None where the
    array is not a plain C-ordered one."""
    fp = io.BytesIO(header)
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fp)
    return None if fortran_order or dtype.hasobject else (dtype, shape)


def array_tensor(array: Array, copy: bool = True) -> torch.Tensor:
    """The tensor of an ``Array``: its own writable memory (one copy), or with ``copy=False`` a read-only view
    of the message's bytes for code that only reads it (e.g. an update's norm)."""
    view = array_view(array)
    if copy:
        return torch.from_numpy(view.copy() if not view.flags.writeable else view)
    with warnings.catch_warnings():  # torch warns that the view is not writable: callers only read it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(view)


def to_arrays(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: to_array(v) for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: array_tensor(v) for k, v in record.items()}


class RecordState(Mapping):
    """A received state, read-only, each tensor converted from the message when read: a client that
    copies the global state into its model (``load_state``, ``load_state_dict``) then never holds a
    second whole copy of it beside the message for the length of its training."""

    def __init__(self, record: ArrayRecord):
        self._record = record

    def __getitem__(self, key: str) -> torch.Tensor:
        return array_tensor(self._record[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._record.keys())

    def __len__(self) -> int:
        return len(self._record)


def job_config(job: Job) -> ConfigRecord:
    """The job travels as one JSON string (config records hold only scalars/lists)."""
    return ConfigRecord({"job": job.to_json()})


def read_job(content: RecordDict) -> Job:
    return Job.from_json(content.config_records["config"]["job"])


def train_reply(state: dict[str, torch.Tensor], num_examples: int, metrics: dict[str, float]) -> RecordDict:
    return RecordDict({
        "arrays": to_arrays(state),
        "metrics": MetricRecord({"num-examples": num_examples, **{k: float(v) for k, v in metrics.items()}}),
    })
