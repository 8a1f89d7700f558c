"""A node's state in Flower records, so it survives between rounds in ``context.state``.

Tensors (model, momentum, a rule's centre, a generator's state) go into one ``ArrayRecord``;
everything else into a ``ConfigRecord`` as JSON. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from flwr_tempered.node import NodeState

ARRAYS_KEY = "tempered.arrays"
SCALARS_KEY = "tempered.scalars"
_SECTIONS = ("sampler", "rule", "attack")


def _split(prefix: str, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    scalars: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            arrays[f"{prefix}.{key}"] = value.detach().cpu().numpy()
            scalars[key] = {"__tensor__": str(value.dtype)}
        elif isinstance(value, np.ndarray):
            arrays[f"{prefix}.{key}"] = value
            scalars[key] = {"__array__": True}
        else:
            scalars[key] = value
    return scalars


def _join(prefix: str, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in scalars.items():
        if isinstance(value, dict) and "__tensor__" in value:
            values[key] = torch.from_numpy(np.array(arrays[f"{prefix}.{key}"]))
        elif isinstance(value, dict) and "__array__" in value:
            values[key] = np.array(arrays[f"{prefix}.{key}"])
        else:
            values[key] = value
    return values


def save_node_state(state: NodeState, records: RecordDict) -> None:
    """Write ``state`` into ``records`` (a ClientApp's ``context.state``)."""
    arrays: dict[str, np.ndarray] = {
        "params": state.params.detach().cpu().numpy(),
        "momentum": state.momentum.detach().cpu().numpy(),
    }
    if state.training_start is not None:
        arrays["training_start"] = state.training_start.detach().cpu().numpy()
    scalars = {name: _split(name, getattr(state, name), arrays) for name in _SECTIONS}
    records[ARRAYS_KEY] = _array_record(arrays)
    records[SCALARS_KEY] = ConfigRecord({"json": json.dumps(scalars)})


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def load_node_state(records: RecordDict) -> NodeState | None:
    """The state saved by :func:`save_node_state`, or ``None`` on a node's first round."""
    if ARRAYS_KEY not in records or SCALARS_KEY not in records:
        return None
    record = records[ARRAYS_KEY]
    assert isinstance(record, ArrayRecord)
    arrays = {key: record[key].numpy() for key in record}
    scalars_record = records[SCALARS_KEY]
    assert isinstance(scalars_record, ConfigRecord)
    scalars = json.loads(str(scalars_record["json"]))
    return NodeState(
        params=torch.from_numpy(np.array(arrays["params"])),
        momentum=torch.from_numpy(np.array(arrays["momentum"])),
        training_start=torch.from_numpy(np.array(arrays["training_start"]))
        if "training_start" in arrays else None,
        **{name: _join(name, scalars[name], arrays) for name in _SECTIONS},
    )


def _flatten(prefix: str, tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``tree`` with every tensor moved to ``arrays`` (under its path) and replaced by a
    marker, so the rest is plain JSON."""
    if isinstance(tree, torch.Tensor):
        arrays[prefix] = tree.detach().cpu().numpy()
        return {"__tensor__": str(tree.dtype)}
    if isinstance(tree, dict):
        return {str(k): _flatten(f"{prefix}/{k}", v, arrays) for k, v in tree.items()}
    return tree


def _unflatten(prefix: str, tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(tree, dict) and "__tensor__" in tree:
        return torch.from_numpy(np.array(arrays[prefix]))
    if isinstance(tree, dict):
        return {k: _unflatten(f"{prefix}/{k}", v, arrays) for k, v in tree.items()}
    return tree


def save_tree(tree: dict[str, Any], records: RecordDict, key: str, token: str = "") -> None:
    """Write a nested dict of tensors and plain values (a node group's state) into
    ``records`` under ``key``: tensors into one ``ArrayRecord``, the rest as JSON.
    ``token`` labels this version of the state (see :func:`tree_token`)."""
    arrays: dict[str, np.ndarray] = {}
    skeleton = _flatten("", tree, arrays)
    records[f"{key}.arrays"] = _array_record(arrays)
    records[f"{key}.json"] = ConfigRecord({"json": json.dumps(skeleton), "token": token})


def save_tree_to_directory(tree: dict[str, Any], records: RecordDict, key: str,
                           directory: Path, token: str) -> Path:
    """As :func:`save_tree`, with the tensors in a file of ``directory`` (the run's
    shared-memory store) instead of ``records``, which keep only the JSON part and the
    file's name.

    A node group's state is its nodes' parameters and momentum: hundreds of MB that a
    ``Context`` would carry through Ray on every message. A file on ``/dev/shm`` is
    written once per message and read only by a process that does not already hold the
    state. The file of the previous version is removed once the new one is in place.
    """
    arrays: dict[str, np.ndarray] = {}
    skeleton = _flatten("", tree, arrays)
    names = sorted(arrays)
    # Not ``parents``: once the relay has removed the run's store, a late message must
    # not bring it back.
    directory.mkdir(exist_ok=True)
    path = directory / f"{key}-{token}.npz"
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "wb") as stream:
        np.savez(stream, *[np.ascontiguousarray(arrays[name]) for name in names])
    os.replace(temporary, path)
    previous = _state_file(records, key)
    if f"{key}.arrays" in records:
        del records[f"{key}.arrays"]
    records[f"{key}.json"] = ConfigRecord({"json": json.dumps(skeleton), "token": token,
                                           "file": str(path), "names": json.dumps(names)})
    if previous is not None and previous != path:
        previous.unlink(missing_ok=True)
    return path


def _state_file(records: RecordDict, key: str) -> Path | None:
    skeleton = records.get(f"{key}.json")
    if not isinstance(skeleton, ConfigRecord) or not skeleton.get("file"):
        return None
    return Path(str(skeleton["file"]))


def tree_token(records: RecordDict, key: str) -> str | None:
    """The token :func:`save_tree` stored with the state under ``key`` (``""`` if none was
    given), or ``None`` when there is no state. A process that still holds the state it
    saved under that token can skip decoding it."""
    if f"{key}.json" not in records or (f"{key}.arrays" not in records
                                        and _state_file(records, key) is None):
        return None
    skeleton = records[f"{key}.json"]
    assert isinstance(skeleton, ConfigRecord)
    return str(skeleton.get("token", ""))


def load_tree(records: RecordDict, key: str) -> dict[str, Any] | None:
    """What :func:`save_tree` or :func:`save_tree_to_directory` wrote under ``key``, or
    ``None`` if nothing was. ``ValueError`` when the state's file is gone (the run's
    store was removed) or unreadable."""
    path = _state_file(records, key)
    if f"{key}.json" not in records or (f"{key}.arrays" not in records and path is None):
        return None
    skeleton = records[f"{key}.json"]
    assert isinstance(skeleton, ConfigRecord)
    if path is not None:
        names = json.loads(str(skeleton["names"]))
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[f"arr_{i}"] for i, name in enumerate(names)}
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"the saved state {path} cannot be read: {error}") from None
    else:
        record = records[f"{key}.arrays"]
        assert isinstance(record, ArrayRecord)
        arrays = {k: record[k].numpy() for k in record}
    tree: dict[str, Any] = _unflatten("", json.loads(str(skeleton["json"])), arrays)
    return tree
