"""Chain-of-image prompt templates, read from YAML data files.

A template says what to send to a vision-language model for one test image: a normal *template* image of
the same category and the *test* image, each preceded by its role label, then the step texts, then the final
instruction that asks for the verdict in the fixed form parsed by :func:`vlmad.coi.parse.parse_verdict`.

The packaged templates live in the repository's ``prompts/`` folder (``coi_p1``, ``coi_p2``, ``coi_p3``:
the published P1/P2/P3 of seeds/004_102cb39b65a4f1cc.txt; ``plain``: one step, no chain of reasoning).
:func:`load_prompt` takes one of their names or the path of a user's own file; :func:`list_prompts` lists
the names. The file format is documented at the top of ``prompts/coi_p1.yaml``.

Modes: ``single`` sends every step in one user message; ``multi_turn`` sends one user turn per step and the
model answers each in turn (the runner stores each step's reply separately). In both modes the first user
turn carries the two images (template first, then test, each after its label) and the last turn ends with
the final instruction.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vlmad.errors import ConfigError

__all__ = ["MODES", "PromptTemplate", "list_prompts", "load_prompt", "prompts_dir"]

PromptMode = Literal["single", "multi_turn"]
MODES: tuple[str, ...] = ("single", "multi_turn")

#: What ``{category}`` becomes when no category is given.
DEFAULT_CATEGORY = "product"

_REQUIRED = ("name", "version", "mode", "steps", "final_instruction", "template_label", "test_label")
_OPTIONAL = ("description", "citation")
_SUFFIXES = (".yaml", ".yml")
_CATEGORY = re.compile(r"\{category\}")


def prompts_dir() -> Path:
    """The repository's ``prompts/`` folder (next to the ``vlmad`` package); ConfigError when missing."""
    import vlmad

    path = Path(vlmad.__file__).resolve().parents[1] / "prompts"
    if not path.is_dir():
        raise ConfigError(
            f"{path}: prompts folder not found (vlmad looks for it next to the vlmad package); "
            "pass the path of a prompt file instead of a name"
        )
    return path


def _category_text(category: str | None) -> str:
    if category is None or not category.strip():
        return DEFAULT_CATEGORY
    return category.strip().replace("_", " ")


@dataclass(frozen=True)
class PromptTemplate:
    """One chain-of-image prompt (immutable).

    - ``name`` / ``version``: identify the prompt; runs record both, and a cache key holds the version and
      :meth:`prompt_hash`.
    - ``description`` / ``citation``: for people (where the text comes from); not part of the hash.
    - ``mode``: ``single`` (all steps in one message) or ``multi_turn`` (one user turn per step).
    - ``steps``: the step texts in order (at least one).
    - ``final_instruction``: appended to the last turn; asks for the ``Answer: normal|anomalous`` line.
    - ``template_label`` / ``test_label``: the text placed just before the template image and the test
      image. ``{category}`` in the labels and steps is replaced by the category (underscores become spaces);
      every other brace is kept as written.
    - ``source``: the file the template was read from (``None`` when built in code); not compared or hashed.
    """

    name: str
    version: str
    mode: PromptMode
    steps: tuple[str, ...]
    final_instruction: str
    template_label: str
    test_label: str
    description: str = ""
    citation: str = ""
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = str(self.source) if self.source is not None else f"prompt {self.name!r}"
        if self.mode not in MODES:
            raise ConfigError(f"{where}: field 'mode': {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.steps or not all(isinstance(s, str) and s.strip() for s in self.steps):
            raise ConfigError(f"{where}: field 'steps': must be a non-empty list of non-empty texts")
        for key in ("name", "version", "final_instruction", "template_label", "test_label"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: field {key!r}: must be non-empty text")

    # ------------------------------------------------------------------------------------------ rendering
    def image_labels(self, category: str | None = None) -> tuple[str, str]:
        """``(template_label, test_label)`` with ``{category}`` filled in: the text placed just before the
        template image and just before the test image of the first turn."""
        cat = _category_text(category)
        return (_CATEGORY.sub(cat, self.template_label), _CATEGORY.sub(cat, self.test_label))

    def turns(self, category: str | None = None) -> list[str]:
        """The user texts to send, in order (one for ``single``, one per step for ``multi_turn``).

        The first turn is sent after the two images: template image first, then test image, each preceded
        by its label (:meth:`image_labels`); later turns carry no image. The last turn ends with
        :attr:`final_instruction`. ``{category}`` is replaced by ``category`` (``"product"`` when None).
        """
        cat = _category_text(category)
        steps = [_CATEGORY.sub(cat, s.strip()) for s in self.steps]
        final = _CATEGORY.sub(cat, self.final_instruction.strip())
        if self.mode == "single":
            return ["\n".join(steps) + "\n\n" + final]
        return [*steps[:-1], steps[-1] + "\n\n" + final]

    def first_turn_content(self, category: str | None = None) -> list[dict[str, str]]:
        """The first user turn as ordered parts, for backends that interleave text and images:
        ``[{"type": "text", "text": template_label}, {"type": "image", "role": "template"},
        {"type": "text", "text": test_label}, {"type": "image", "role": "test"},
        {"type": "text", "text": turns(category)[0]}]``."""
        template_label, test_label = self.image_labels(category)
        return [
            {"type": "text", "text": template_label},
            {"type": "image", "role": "template"},
            {"type": "text", "text": test_label},
            {"type": "image", "role": "test"},
            {"type": "text", "text": self.turns(category)[0]},
        ]

    # ---------------------------------------------------------------------------------------- identity
    def content(self) -> dict[str, Any]:
        """What the model is sent (mode, labels, steps, final instruction); :meth:`prompt_hash` hashes it."""
        return {
            "mode": self.mode,
            "template_label": self.template_label,
            "test_label": self.test_label,
            "steps": list(self.steps),
            "final_instruction": self.final_instruction,
        }

    def prompt_hash(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`content` (canonical JSON). Equal for templates that send
        the same text in the same mode, whatever their name, description or citation; use it in cache keys
        together with :attr:`version`."""
        blob = json.dumps(self.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def with_mode(self, mode: str) -> PromptTemplate:
        """The same template in another mode (``single`` or ``multi_turn``); its hash differs."""
        return replace(self, mode=mode)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The template as the YAML fields (JSON-ready), without ``source``."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "citation": self.citation,
            "mode": self.mode,
            "template_label": self.template_label,
            "test_label": self.test_label,
            "steps": list(self.steps),
            "final_instruction": self.final_instruction,
        }


# ------------------------------------------------------------------------------------------------- loading
def _text_field(path: Path, data: dict[str, Any], key: str) -> str:
    value = data[key]
    if key == "version" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        hint = " (quote it)" if key == "version" else ""
        raise ConfigError(f"{path}: field {key!r}: must be text, got {type(value).__name__}{hint}")
    if key in _REQUIRED and not value.strip():
        raise ConfigError(f"{path}: field {key!r}: must not be empty")
    return value


def _read(path: Path) -> PromptTemplate:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the prompt file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the prompt file is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the fields {', '.join(_REQUIRED)}")
    if "steps" not in data:
        raise ConfigError(f"{path}: field 'steps': missing (this is not a chain-of-image prompt template)")
    unknown = sorted(str(k) for k in data if k not in (*_REQUIRED, *_OPTIONAL))
    if unknown:
        known = ", ".join(sorted((*_REQUIRED, *_OPTIONAL)))
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {known}")
    missing = [k for k in _REQUIRED if data.get(k) is None]
    if missing:
        raise ConfigError(f"{path}: field {missing[0]!r}: missing")
    steps = data["steps"]
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{path}: field 'steps': must be a non-empty list of texts")
    for i, step in enumerate(steps, 1):
        if not isinstance(step, str) or not step.strip():
            raise ConfigError(f"{path}: field 'steps': item {i} must be non-empty text")
    mode = data["mode"]
    if mode not in MODES:
        raise ConfigError(f"{path}: field 'mode': {mode!r} is not one of {', '.join(MODES)}")
    values = {k: _text_field(path, data, k) for k in (*_REQUIRED, *_OPTIONAL) if k in data and k != "steps"}
    for key in _OPTIONAL:
        if data.get(key) is None:
            values[key] = ""
    return PromptTemplate(**values, steps=tuple(steps), source=path)


def _looks_like_path(name: str) -> bool:
    return name.endswith(_SUFFIXES) or "/" in name or "\\" in name or name.startswith(("~", "."))


def load_prompt(name_or_path: str | Path, *, mode: str | None = None) -> PromptTemplate:
    """Load a prompt template by packaged name (``coi_p1``, ``coi_p2``, ``coi_p3``, ``plain``; ``p1`` /
    ``P1`` are accepted for ``coi_p1``) or from a YAML file path (a user's own template).

    ``mode`` overrides the file's mode (``single`` / ``multi_turn``). Raises :class:`ConfigError` for an
    unknown name (listing the known ones), a missing file, invalid YAML, or a missing, unknown or invalid
    field (the message names the file and the field).
    """
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown prompt mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(name_or_path, Path) or _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: prompt file not found")
    else:
        name = name_or_path.strip()
        folder = prompts_dir()
        stems = (name, f"coi_{name.lower()}")
        found = [folder / f"{stem}{s}" for stem in stems for s in _SUFFIXES]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise ConfigError(
                f"unknown prompt {name_or_path!r}; packaged prompts: {', '.join(list_prompts()) or 'none'} "
                f"(in {folder}); or pass the path of a prompt YAML file"
            )
    template = _read(path)
    return template if mode is None else template.with_mode(mode)


def _packaged() -> dict[str, Path]:
    import yaml

    found: dict[str, Path] = {}
    for path in sorted(prompts_dir().iterdir()):
        if path.suffix not in _SUFFIXES or not path.is_file() or path.stem in found:
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # a broken file is reported when it is loaded by name or path
        if isinstance(data, dict) and "steps" in data:
            found[path.stem] = path
    return found


def list_prompts() -> list[str]:
    """Names of the packaged chain-of-image templates (the YAML files of ``prompts/`` that have ``steps``),
    sorted. Other prompt files there (e.g. the QA drafting prompt) are not listed. Raises
    :class:`ConfigError` when the ``prompts/`` folder is missing."""
    return list(_packaged())
