"""Training data: QA export records, their mapping onto a family's chat format, label-masked features,
batches.

Input: a QA export (:mod:`vlmad.qa.export`): ``messages/{split}.jsonl`` records
``{"messages": [user / assistant turns], "images": [template, test]}`` whose first user turn starts with one
``"<label>: <image>"`` line per image, and ``export.json`` (``image_root``, ``role_order``). Record ids,
sample ids, labels and categories come from the record itself when it has them, else from the export's ``hf/``
dataset (same records, same order; checked turn by turn), else they stay unknown (training works,
validation by label does not).

Mapping (:meth:`Encoder.conversation`): the exported ``<image>`` placeholders are never passed on as text.
The first turn's ``"<label>: <image>"`` lines become role-labelled image items through
:meth:`vlmad.vlm.Family.build_messages` (the family's own layout: labels before each image, or "Image 1
(the first image): <label>." after them), the rest of the turn is the question; later turns are plain
text turns. Images then go through :meth:`vlmad.vlm.Family.prepare_inputs` with per-role budgets.

Label masking (:meth:`Encoder.encode`): only answer tokens count in the loss: each assistant answer plus the
end-of-turn token the model must learn to emit (the chat template's own, e.g. ``<|im_end|>``; or the
tokenizer's EOS appended to the answer where the template writes none after it, as LLaVA-1.5's). System
and user text, image tokens, template markers and padding are ``-100``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmad.errors import DatasetError, VlmadError

if TYPE_CHECKING:
    import torch

    from vlmad.vlm import VLM, ImageBudget

IGNORE_INDEX = -100
PLACEHOLDER = "<image>"  # the exporter's image placeholder (vlmad.qa.export.IMAGE_TOKEN)
SEQUENCE_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "labels",
    "mm_token_type_ids",
    "token_type_ids",
)
_LABEL_LINE = re.compile(r"\s*(?P<label>[^\n]*?)\s*:?\s*" + re.escape(PLACEHOLDER) + r"\s*")
_DEFAULT_ROLES = ("template", "test")


class SampleError(VlmadError):
    """One record cannot become a training sample. ``kind`` names the problem for the pre-flight list:
    ``image_count``, ``missing_image``, ``bad_image``, ``no_answer``, ``bad_turns``, ``alignment``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class TrainRecord:
    """One exported conversation.

    ``index``: line number (from 0) in ``messages/{split}.jsonl``; ``messages``: the turns as exported;
    ``images``: absolute image paths in the export's role order; ``roles``: the role of each image
    (``template``, ``test``). ``id`` / ``sample_id`` / ``label`` / ``category``: from the record or the
    export's ``hf/`` dataset, ``None`` when the export does not say.
    """

    index: int
    split: str
    messages: tuple[dict[str, Any], ...]
    images: tuple[Path, ...]
    roles: tuple[str, ...]
    id: str | None = None
    sample_id: str | None = None
    label: str | None = None
    category: str | None = None

    @property
    def name(self) -> str:
        """How messages name the record: its id, else its line."""
        return self.id or f"{self.split}.jsonl line {self.index + 1}"


@dataclass(frozen=True)
class Conversation:
    """A record mapped onto the family's chat format: ``messages`` (image items carry ``image_role``),
    ``images`` by role, the first ``question`` and the role ``labels``, and the ``answers`` in order."""

    messages: list[dict[str, Any]]
    images: dict[str, Path]
    question: str
    labels: dict[str, str]
    answers: list[str]


@dataclass
class Encoded:
    """One encoded sample: model ``features`` (1-D sequence tensors and the image tensors) and its counts.

    ``length``: tokens before truncation; ``image_end``: the position after the last image token;
    ``answer_tokens``: tokens that count in the loss (after truncation); ``image_tokens``; ``truncated``:
    whether ``truncate_over_budget`` cut its end.
    """

    features: dict[str, Any]
    length: int
    image_end: int
    image_tokens: int
    answer_tokens: int
    truncated: bool = False
    slots: list[Any] = field(default_factory=list)


# ---- reading the export --------------------------------------------------------------------------------
def export_info(export_dir: str | Path) -> dict[str, Any]:
    """``export.json`` of a QA export. Raises :class:`DatasetError` when missing or not an export."""
    path = Path(export_dir) / "export.json"
    if not path.is_file():
        raise DatasetError(
            path, "not a QA export (no export.json): make one with `vlmad qa build --out DIR` first"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DatasetError(path, f"not JSON ({e})") from None
    if not isinstance(info, dict) or info.get("vlmad") != "qa_export":
        raise DatasetError(path, "not a vlmad QA export description")
    return info


def read_export(export_dir: str | Path, split: str) -> list[TrainRecord]:
    """The records of ``messages/{split}.jsonl`` with absolute image paths and what is known of each.

    Raises :class:`DatasetError` naming the file and line for a missing export, a missing split file (with
    the splits that exist) or a malformed line. Missing image files are not checked here (the pre-flight
    check lists them all).
    """
    export_dir = Path(export_dir)
    info = export_info(export_dir)
    path = export_dir / "messages" / f"{split}.jsonl"
    if not path.is_file():
        have = sorted(p.stem for p in (export_dir / "messages").glob("*.jsonl"))
        hint = f"; the export has {', '.join(have)}" if have else "; export the 'messages' format"
        raise DatasetError(path, f"no {split!r} split in this export{hint}")
    root = Path(info["image_root"]) if info.get("image_root") else None
    role_order = tuple(info.get("role_order") or _DEFAULT_ROLES)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(path, f"line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise DatasetError(path, f"line {n}: expected {{'messages': [...], 'images': [...]}}")
            rows.append(row)
    meta = _hf_metadata(export_dir, split, rows)
    out = []
    for i, row in enumerate(rows):
        images = [str(p) for p in row.get("images") or []]
        paths = tuple(_image_path(p, root, export_dir) for p in images)
        roles = (
            role_order[-len(paths) :]
            if 0 < len(paths) <= len(role_order)
            else tuple(f"image{k + 1}" for k in range(len(paths)))
        )
        m = {**meta[i], **{k: row[k] for k in ("id", "sample_id", "label", "category") if row.get(k)}}
        out.append(
            TrainRecord(
                index=i,
                split=split,
                messages=tuple(dict(x) for x in row["messages"]),
                images=paths,
                roles=tuple(roles),
                id=m.get("id"),
                sample_id=m.get("sample_id"),
                label=m.get("label"),
                category=m.get("category"),
            )
        )
    return out


def _image_path(p: str, root: Path | None, export_dir: Path) -> Path:
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    return (root if root is not None else export_dir) / path


def _hf_metadata(export_dir: Path, split: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-row ``{id, sample_id, label, category}`` from the export's ``hf/`` dataset when it holds the same
    records in the same order; empty dicts otherwise."""
    empty: list[dict[str, Any]] = [{} for _ in rows]
    hf_dir = export_dir / "hf"
    if not rows or not (hf_dir / "dataset_dict.json").is_file():
        return empty
    if all(r.get("label") and r.get("id") for r in rows):
        return empty
    try:
        import datasets

        ds = datasets.load_from_disk(str(hf_dir))[split]
        cols = [c for c in ("id", "sample_id", "label", "category", "messages") if c in ds.column_names]
        table = ds.select_columns(cols).to_dict()
    except Exception:  # an unreadable or foreign dataset just gives no metadata
        return empty
    if len(table.get("messages", [])) != len(rows):
        return empty
    for row, msgs in zip(rows, table["messages"], strict=True):
        mine = [(m.get("role"), m.get("content")) for m in row["messages"]]
        theirs = [(m.get("role"), m.get("content")) for m in msgs]
        if mine != theirs:
            return empty
    keys = [c for c in cols if c != "messages"]
    return [{k: table[k][i] for k in keys} for i in range(len(rows))]


# ---- mapping onto the family's chat format -------------------------------------------------------------
def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # already item-style content: join its text items
        return "".join(str(c.get("text", "")) for c in content if isinstance(c, Mapping))
    return "" if content is None else str(content)


def map_conversation(
    vlm: VLM | Any,
    record: TrainRecord,
    role_labels: Mapping[str, str] | None = None,
    *,
    append_eos: str | None = None,
) -> Conversation:
    """Map an exported record onto the family's chat format (see the module docstring).

    ``vlm`` needs ``family`` and ``layout`` (a :class:`vlmad.vlm.VLM` or an :class:`Encoder`).
    ``role_labels`` replaces the exported labels; ``append_eos`` is added to every answer. Raises
    :class:`SampleError` (``image_count``, ``bad_turns``, ``no_answer``).
    """
    turns = [dict(m) for m in record.messages]
    system = None
    if turns and turns[0].get("role") == "system":
        system = _text(turns.pop(0).get("content"))
    roles = [t.get("role") for t in turns]
    if not turns or any(r != ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(roles)):
        raise SampleError(
            "bad_turns", f"{record.name}: turns must alternate user, assistant, ... (got {roles})"
        )
    if len(turns) % 2:
        raise SampleError("bad_turns", f"{record.name}: the last user turn has no answer")
    texts = [_text(t.get("content")) for t in turns]
    answers = texts[1::2]
    if not answers or any(not a.strip() for a in answers):
        raise SampleError("no_answer", f"{record.name}: an assistant turn is empty")
    n_placeholders = sum(t.count(PLACEHOLDER) for t in texts)
    if n_placeholders != len(record.images):
        raise SampleError(
            "image_count",
            f"{record.name}: {n_placeholders} image placeholder(s) {PLACEHOLDER!r} in the turns but "
            f"{len(record.images)} image(s)",
        )
    if any(PLACEHOLDER in t for t in texts[1:]):
        raise SampleError(
            "image_count", f"{record.name}: image placeholders outside the first user turn are not supported"
        )
    # the first turn: "<label>: <image>" lines, then the question
    lines = texts[0].split("\n")
    labels: dict[str, str] = {}
    k = 0
    while k < len(lines) and PLACEHOLDER in lines[k] and len(labels) < len(record.images):
        m = _LABEL_LINE.fullmatch(lines[k])
        if m is None or not m["label"] or lines[k].count(PLACEHOLDER) != 1:
            break
        labels[record.roles[len(labels)]] = m["label"].rstrip(":").strip()
        k += 1
    if len(labels) != len(record.images):
        raise SampleError(
            "image_count",
            f"{record.name}: the first user turn must start with one '<label>: {PLACEHOLDER}' line per image",
        )
    question = "\n".join(lines[k:]).strip()
    if role_labels:
        labels.update({r: v for r, v in role_labels.items() if r in labels})
    eos = append_eos or ""
    messages = vlm.family.build_messages(
        question,
        list(record.roles),
        labels,
        answer=answers[0] + eos,
        system=system,
        layout=vlm.layout,
    )
    for q, a in zip(texts[2::2], answers[1:], strict=True):
        messages.append({"role": "user", "content": [{"type": "text", "text": q}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": a + eos}]})
    images = dict(zip(record.roles, record.images, strict=True))
    return Conversation(messages, images, question, labels, [a + eos for a in answers])


# ---- encoding ------------------------------------------------------------------------------------------
class Encoder:
    """Turns records into label-masked features for one model (its processor, family and layout): a loaded
    :class:`vlmad.vlm.VLM` or a :class:`vlmad.train.modeling.ProcessorBundle` (no weights).

    Holds no model weights, so data loader workers can use it. ``budgets``: per-role
    :class:`vlmad.vlm.ImageBudget`; ``max_length``: the token budget (``None``: none); ``truncate``: cut
    over-budget samples at ``max_length`` when their images and an answer token survive (else
    :meth:`encode` reports them through :attr:`Encoded.length` and the caller decides).
    """

    def __init__(
        self,
        vlm: VLM | Any,
        budgets: Mapping[str, ImageBudget] | None = None,
        max_length: int | None = None,
        *,
        role_labels: Mapping[str, str] | None = None,
        truncate: bool = False,
    ) -> None:
        self.processor = vlm.processor
        self.family = vlm.family
        self.layout = vlm.layout
        self.budgets = dict(budgets or {})
        self.max_length = max_length
        self.role_labels = dict(role_labels or {})
        self.truncate = truncate
        self.eos_tokens = _eos_tokens(vlm)
        self.append_eos = self._needs_eos()

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def _needs_eos(self) -> str | None:
        """The EOS text to append to answers when the chat template writes no end-of-turn token after an
        answer (LLaVA-1.5), else ``None``."""
        probe = "VLMADANSWERPROBE"
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": probe}]},
        ]
        text = self.family.render(self.processor, messages, add_generation_prompt=False)
        after = text[text.index(probe) + len(probe) :]
        if any(after.startswith(e) for e in self.eos_tokens):
            return None
        eos = self.tokenizer.eos_token or (self.eos_tokens[0] if self.eos_tokens else None)
        if eos is None:
            raise VlmadError("the tokenizer has no EOS token and the chat template ends no answer with one")
        return eos

    def conversation(self, record: TrainRecord) -> Conversation:
        """:func:`map_conversation` with this encoder's labels and EOS rule."""
        return map_conversation(self, record, self.role_labels, append_eos=self.append_eos)

    def encode(self, record: TrainRecord) -> Encoded:
        """Features of one record: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` except answer
        tokens), the family's image tensors. Raises :class:`SampleError` for a record that cannot be encoded
        (missing or unreadable image, placeholder mismatch, ...)."""
        conv = self.conversation(record)
        for role, path in conv.images.items():
            if not Path(path).is_file():
                raise SampleError("missing_image", f"{record.name}: {role} image {path}: file not found")
        try:
            prepared = self.family.prepare_inputs(
                self.processor,
                [conv.messages],
                [conv.images],
                self.budgets,
                add_generation_prompt=False,
                padding_side="right",
            )
        except (OSError, ValueError, DatasetError) as e:
            raise SampleError("bad_image", f"{record.name}: {e}") from e
        text = prepared.texts[0]
        ids = prepared.tensors["input_ids"][0]
        labels, image_end = self._labels(record, conv, text, ids.tolist())
        features: dict[str, Any] = {}
        for k, v in prepared.tensors.items():
            features[k] = v[0] if k in SEQUENCE_KEYS else v
        features["labels"] = labels
        length = int(ids.shape[0])
        image_tokens = sum(s.tokens for s in prepared.slots)
        truncated = False
        if self.max_length is not None and length > self.max_length and self.truncate:
            kept = labels[: self.max_length]
            if image_end <= self.max_length and bool((kept != IGNORE_INDEX).any()):
                for k in SEQUENCE_KEYS:
                    if k in features:
                        features[k] = features[k][: self.max_length]
                truncated = True
        answer_tokens = int((features["labels"] != IGNORE_INDEX).sum())
        return Encoded(features, length, image_end, image_tokens, answer_tokens, truncated, prepared.slots)

    def _answer_starts(self, record: TrainRecord, conv: Conversation, text: str) -> list[int]:
        """Where each answer starts in ``text`` (the rendered conversation).

        One extra render with each answer replaced by a marker finds them (an answer's words may also occur in
        a question before it); where the template changes an answer's text, each answer is looked for after
        its own prompt (rendered up to the generation prompt) instead.
        """
        markers = [f"VLMADANSWER{k}MARK" for k in range(len(conv.answers))]
        marked, k = [], 0
        for m in conv.messages:
            if m["role"] == "assistant":
                m = {**m, "content": [{"type": "text", "text": markers[k]}]}
                k += 1
            marked.append(m)
        mtext = self.family.render(self.processor, marked, add_generation_prompt=False)
        starts, shift = [], 0
        for marker, answer in zip(markers, conv.answers, strict=True):
            at = mtext.find(marker)
            a = at + shift
            if at < 0 or text[a : a + len(answer)] != answer:
                return self._answer_starts_slow(record, conv, text)
            starts.append(a)
            shift += len(answer) - len(marker)
        return starts

    def _answer_starts_slow(self, record: TrainRecord, conv: Conversation, text: str) -> list[int]:
        starts, pos = [], 0
        turns = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
        for upto, answer in zip(turns, conv.answers, strict=True):
            prompt = self.family.render(self.processor, conv.messages[:upto], add_generation_prompt=True)
            if text.startswith(prompt):
                pos = max(pos, len(prompt))
            a = text.find(answer, pos)
            if a < 0:
                raise SampleError(
                    "alignment", f"{record.name}: the chat template changed an answer's text; cannot mask it"
                )
            starts.append(a)
            pos = a + len(answer)
        return starts

    def _labels(
        self, record: TrainRecord, conv: Conversation, text: str, ids: list[int]
    ) -> tuple[torch.Tensor, int]:
        """Labels over ``ids`` (the expanded sequence) from the answers' character spans in ``text`` (the
        rendered prompt before image expansion), and the position after the last image token."""
        import torch

        tok = self.tokenizer
        placeholder = self.processor.image_token
        spans = []
        for a, answer in zip(self._answer_starts(record, conv, text), conv.answers, strict=True):
            b = a + len(answer)
            for e in self.eos_tokens:  # the template's own end-of-turn token counts with the answer
                if text.startswith(e, b):
                    b += len(e)
                    break
            spans.append((a, b))
        last = text.rfind(placeholder)
        tail_start = last + len(placeholder) if last >= 0 else 0
        if spans and spans[0][0] < tail_start:
            raise SampleError("alignment", f"{record.name}: an answer comes before an image")
        add_special = not (tok.bos_token is not None and text.startswith(tok.bos_token))
        enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
        u_ids, offsets = enc["input_ids"], enc["offset_mapping"]
        # tokens after the last image placeholder are the same in the expanded sequence (the expansion ends
        # in special tokens, which split the text for the tokenizer): align on that tail
        n_tail = sum(1 for s, _ in offsets if s >= tail_start)
        if n_tail > len(ids) or (n_tail and ids[len(ids) - n_tail :] != u_ids[len(u_ids) - n_tail :]):
            raise SampleError(
                "alignment", f"{record.name}: the tokens after the images differ once images are expanded"
            )
        base = len(ids) - n_tail
        out = [IGNORE_INDEX] * len(ids)
        k = 0  # spans are in order: walk them with the tokens
        for j in range(len(u_ids) - n_tail, len(u_ids)):
            s, e = offsets[j]
            while k < len(spans) and spans[k][1] <= s:
                k += 1
            if k < len(spans) and e > spans[k][0]:  # the token overlaps an answer span
                out[base + j - (len(u_ids) - n_tail)] = u_ids[j]
        labels = torch.tensor(out, dtype=torch.long)
        if not bool((labels != IGNORE_INDEX).any()):
            raise SampleError("no_answer", f"{record.name}: no answer token to train on")
        return labels, base


def _eos_tokens(vlm: VLM | Any) -> list[str]:
    """Token strings of the model's end-of-sequence ids (generation config, else the tokenizer's)."""
    if getattr(vlm, "eos_tokens", None) is not None:  # a ProcessorBundle
        return list(vlm.eos_tokens)
    eos: Any = getattr(getattr(vlm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = vlm.tokenizer.eos_token_id
    ids = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]
    out = [vlm.tokenizer.convert_ids_to_tokens(i) for i in ids]
    return [t for t in out if isinstance(t, str) and t]


def encode_sample(
    vlm: VLM,
    record: TrainRecord,
    budgets: Mapping[str, ImageBudget] | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Label-masked features of one record for ``vlm`` (see :class:`Encoder`; no truncation)."""
    return Encoder(vlm, budgets, max_length).encode(record).features


# ---- datasets and batches ------------------------------------------------------------------------------
class TrainDataset:
    """A map-style dataset of encoded records (encoded on access, so images are read by the loader)."""

    def __init__(self, encoder: Encoder, records: Sequence[TrainRecord]) -> None:
        self.encoder = encoder
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.encoder.encode(self.records[i]).features


@dataclass
class Collator:
    """Batches features: sequence tensors right-padded (``pad_token_id``, mask 0, labels ``-100``), image
    tensors concatenated along their first dimension (images / tiles / patches in batch order)."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(int(f["input_ids"].shape[0]) for f in features)
        pads = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key in SEQUENCE_KEYS:
                fill = pads.get(key, 0)
                out = torch.full((len(values), width), fill, dtype=values[0].dtype)
                for i, v in enumerate(values):
                    out[i, : v.shape[0]] = v
                batch[key] = out
            elif all(isinstance(v, torch.Tensor) for v in values):
                batch[key] = torch.cat(values, dim=0)
            else:
                batch[key] = [x for v in values for x in (v if isinstance(v, list) else [v])]
        return batch
