"""Reading recipes: YAML files whose one top-level mapping (``synth:``, ``qa_build:``, ``coi:``, ``train:``)
holds the settings of one stage, validated by that stage's pydantic model.

Every stage's ``load_*_recipe`` goes through :func:`read_recipe` and :func:`validate_settings`, so a missing
file, bad YAML, a missing section and an invalid field give the same one-line :class:`ConfigError` naming the
file (and the field) everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from vlmad.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_recipe(
    path: str | Path,
    section: str,
    what: str,
    overrides: dict[str, Any] | None = None,
    *,
    optional: bool = False,
) -> dict[str, Any]:
    """The ``section:`` mapping of the YAML recipe at ``path``, with ``overrides`` whose value is not
    ``None`` laid over it. ``what`` names the recipe kind in messages ("a training recipe").

    With ``optional``, a file without the section is taken as the section itself (a bare mapping).
    Raises :class:`ConfigError` naming the file for a missing file, bad YAML or a missing section.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read recipe ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if optional and isinstance(data, dict) and section not in data:
        values = data
    elif isinstance(data, dict) and isinstance(data.get(section), dict):
        values = data[section]
    else:
        raise ConfigError(f"{path}: {what} needs a '{section}:' mapping of settings")
    return {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}


def validate_settings(model: type[M], values: dict[str, Any], source: str = "options") -> M:
    """``model.model_validate(values)``; the first validation error becomes a one-line :class:`ConfigError`
    ``"<source>: <field>: <problem>"``."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "recipe"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{source}: {loc}: {msg}") from None
