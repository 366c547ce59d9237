"""Settings sections as frozen dataclasses, composed rather than copied.

A section (one TOML table) is a frozen dataclass whose fields are its keys. A section may *compose* a
shared settings dataclass — the fine-tuning recipe (``training.recipe.Recipe``) in ``[personalise]`` —
through a field made with :func:`inline`: the composed dataclass's keys are written in the section's own
table (``[personalise] lr = 1e-4``, not a sub-table), are declared once (in the composed class), and are
read by the code as ``section.recipe.lr``. :func:`section_keys` gives a section's TOML keys and their types,
:func:`build_section` makes the section from them, and :func:`section_dict` writes it back in the same
flat form (results files and stage records keep one level per section).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

INLINE = "fedp2eft.inline"


def inline(cls: type, **defaults: Any):
    """A field holding a composed settings dataclass ``cls`` (defaults ``defaults``) whose keys are
    written in the enclosing section's own table."""
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={INLINE: True})


def inline_fields(cls: type) -> dict[str, type]:
    """``{field name: composed class}`` for the inline fields of section ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get(INLINE)}


def section_keys(cls: type) -> dict[str, Any]:
    """Every TOML key of section ``cls`` and its type: its own fields and its inline classes' fields."""
    hints = typing.get_type_hints(cls)
    inlined = inline_fields(cls)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in inlined:
            keys.update(section_keys(inlined[f.name]))
        else:
            keys[f.name] = hints[f.name]
    return keys


def build_section(cls: type, values: dict[str, Any]):
    """Section ``cls`` from its flat keys (each inline class gets the keys it declares)."""
    inlined = {name: (inner, set(section_keys(inner))) for name, inner in inline_fields(cls).items()}
    composed = set().union(*(keys for _, keys in inlined.values()))
    own = {k: v for k, v in values.items() if k not in composed}
    for name, (inner, keys) in inlined.items():
        assert not inline_fields(inner), f"{inner.__name__}: one level of inline composition"
        mine = {k: v for k, v in values.items() if k in keys}
        default = _default(cls, name)  # the section's own defaults for the composed class, then the keys given
        own[name] = dataclasses.replace(default, **mine) if mine else default
    return cls(**own)


def _default(cls: type, name: str):
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def section_dict(obj) -> dict[str, Any]:
    """A section's flat form: its own keys and its inline classes' keys in one level."""
    inlined = inline_fields(type(obj))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in inlined:
            out.update(section_dict(value))
        else:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def with_keys(obj, **values: Any):
    """Section ``obj`` with some of its flat keys set (an inline class's keys included), validated."""
    return build_section(type(obj), {**section_dict(obj), **values})
