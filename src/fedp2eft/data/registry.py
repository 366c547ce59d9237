"""Datasets by name (issue 27): what a dataset is to the rest of the code.

A dataset declares, in one ``DatasetSpec`` registered with ``register_dataset``:

- ``task``: the name of the task its rows pose (``tasks.TASKS``: ``classification``, ``generation``, ...);
  ``data.task`` overrides it;
- ``load(data, partition)``: its reader and its partition in one: the ``[data]`` section and the
  ``FederationSpec`` in, the ``Federation`` (clients with their rows, seen and unseen pools) out;
- ``keys``: the ``[data]`` keys it reads beyond the common ones (languages, partition seed, caps, length):
  a config that sets one for a dataset that does not read it is refused, naming the datasets that do;
- ``group_size``: consecutive rows the pool split keeps whole (XNLI's premise groups: 3);
- ``source``: for a labelled-text dataset, its hub repository and columns (``sources.TextSource``).

Built in: ``masakhanews`` and ``xnli`` (``sources``), ``aya`` (``aya``). A name that is not registered is
the user's own labelled-text TSV folder (``<lang>/{train,dev,test}.tsv``, columns ``label``/``text`` unless
``data.label_column``/``text_columns`` say otherwise), classified, read from ``data.path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .partition import Federation, FederationSpec


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    load: Callable[[Any, FederationSpec], Federation]
    keys: tuple[str, ...] = ()
    group_size: int = 1
    source: Any = None  # sources.TextSource of a labelled-text dataset (hub repository, columns, languages)


_DATASETS: dict[str, DatasetSpec] = {}
_UNREGISTERED: list[Callable[[str], DatasetSpec]] = []  # the spec of a name nobody registered (sources: own TSV)


def register_unregistered(factory: Callable[[str], DatasetSpec]) -> None:
    """What a name that is not registered means (``sources`` sets it: the user's own TSV folder)."""
    _UNREGISTERED[:] = [factory]


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec.name`` a ``data.dataset`` value (a later registration under the same name replaces it)."""
    _DATASETS[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    _DATASETS.pop(name, None)


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset, or the user's own labelled-text TSV folder under that name."""
    return _DATASETS[name] if name in _DATASETS else _UNREGISTERED[0](name)


def specific_keys() -> dict[str, list[str]]:
    """``{[data] key: the datasets that read it}`` for every key some dataset declares as its own."""
    out: dict[str, list[str]] = {}
    for spec in [*_DATASETS.values(), *(f("<own TSV folder>") for f in _UNREGISTERED)]:
        for k in spec.keys:
            out.setdefault(k, []).append(spec.name)
    return out
