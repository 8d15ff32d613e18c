"""Generator replies -> items -> filtered sets -> the three output files. Pure logic, no models.

`pipelines.synth` runs the generator; everything after a reply comes back is here, so it can be
tested on hand-written replies:

    items = parse_generation(Generation(chunk, "qa", "Q: What does X treat?\\nA: Kelm fever."))
    sets = build_sets(generations, FilterSettings())   # SynthSets: kept items + drop counts
    write_sets(folder, sets)                            # sft.jsonl, qa_eval.jsonl, abstract_eval

Three sets, by the split of the chunk an item came from (the reference study: closed-book QA
from HELD-OUT documents for evaluation, instruction data from the training documents):
- sft: every kind from training chunks, as chat-messages JSONL (pipelines.sft reads it);
- qa_eval: QA pairs from held-out chunks, "Question: q\\nAnswer:" -> answer;
- abstract_eval: abstracts of held-out chunks, "Text: chunk\\nAbstract:" -> abstract.
Both eval sets are prompt -> reference JSONL, the Score tab's perplexity format. Every row keeps
doc_id, chunk and chunk_sha, so `check_held_out_absent` can prove no held-out document or chunk
reached the SFT set.

Filters (counts per set in `SynthSets.dropped`), in order:
1. empty: no question/instruction, or no answer/response/abstract with a letter or digit;
2. too_long: prompt + response over `max_words` words (abstract items: the abstract alone);
3. copies_question: the answer repeats the question (equal after normalising, contains it
   whole, or word-set Jaccard >= copy_jaccard with 3+ words each);
4. refers_to_passage: a question or answer that says "the passage" / "the text" (and the
   like): closed-book, and in training, there is no passage to refer to;
5. exact_duplicate: same prompt and response as a kept item (case and spacing ignored);
6. near_duplicate: word 3-gram shingle Jaccard >= near_duplicate_jaccard with a kept item
   (Broder 1997's resemblance; an inverted index keeps it near-linear);
7. overlaps_held_out (sft only): near-duplicate of a kept eval item, which would leak the
   closed-book answers into training.
Tests: tests/test_synth.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from studio.synth.config import FilterSettings, SynthError, TaskName

LOG = logging.getLogger(__name__)

Split: TypeAlias = Literal["train", "held_out"]
SetName: TypeAlias = Literal["sft", "qa_eval", "abstract_eval"]

SET_NAMES: tuple[SetName, ...] = ("sft", "qa_eval", "abstract_eval")
SET_FILES: dict[SetName, str] = {
    "sft": "sft.jsonl",
    "qa_eval": "qa_eval.jsonl",
    "abstract_eval": "abstract_eval.jsonl",
}
FILTER_NAMES: tuple[str, ...] = (
    "empty",
    "too_long",
    "copies_question",
    "refers_to_passage",
    "exact_duplicate",
    "near_duplicate",
    "overlaps_held_out",
)
# The user turn of an SFT abstract item: the request, not the generation template (whose
# format instructions are for the generator, not for the tuned model).
SUMMARY_REQUEST = "Write a short abstract of the following text.\n\n"
QA_PROMPT = "Question: {question}\nAnswer:"
ABSTRACT_PROMPT = "Text: {body}\nAbstract:"

# Labels a reply may use; numbering ("1.", "Q1:") and markdown bold ("**Q:**") are tolerated.
_LEAD = r"^[ \t>*_#-]*(?:\(?\d{1,2}[.)]\s*)?[*_]*"
_Q_LINE = re.compile(_LEAD + r"(?:q|questions?)\s*\d{0,2}\s*[*_]*\s*[:.)-][*_]*\s*(.*)$", re.I)
_A_LINE = re.compile(_LEAD + r"(?:a|answers?)\s*\d{0,2}\s*[*_]*\s*[:.)-][*_]*\s*(.*)$", re.I)
_I_LINE = re.compile(_LEAD + r"(?:instruction|request|task)\s*[*_]*\s*:[*_]*\s*(.*)$", re.I)
_R_LINE = re.compile(_LEAD + r"(?:response|reply|answer)\s*[*_]*\s*:[*_]*\s*(.*)$", re.I)
_SUMMARY_LABEL = re.compile(r"^\s*[*_#]*\s*(?:abstract|summary)\s*[*_]*\s*:[*_]*\s*", re.I)
_PASSAGE_REF = re.compile(
    r"\b(?:the|this|that|given|above)\s+(?:passage|text|article|document|excerpt|paragraph)s?\b",
    re.I,
)
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Chunk:
    """A piece of one document that fits the generator's context."""

    doc_id: str
    index: int  # position of the chunk in its document, from 0
    text: str
    split: Split

    @property
    def sha(self) -> str:
        """Content hash (16 hex): the same text under two documents is the same chunk."""
        return chunk_sha(self.text)


@dataclass(frozen=True)
class Generation:
    """One generator reply for one chunk and one task."""

    chunk: Chunk
    task: TaskName
    output: str


@dataclass(frozen=True)
class SynthItem:
    """One parsed item; `prompt` is the question / instruction / body, `response` the answer."""

    kind: TaskName
    prompt: str
    response: str
    doc_id: str
    chunk: int
    chunk_sha: str
    split: Split


@dataclass
class SynthSets:
    """Kept items per set and, per set, how many items each filter dropped."""

    kept: dict[SetName, list[SynthItem]] = field(
        default_factory=lambda: {name: [] for name in SET_NAMES}
    )
    dropped: dict[SetName, dict[str, int]] = field(
        default_factory=lambda: {name: dict.fromkeys(FILTER_NAMES, 0) for name in SET_NAMES}
    )
    parsed: dict[SetName, int] = field(default_factory=lambda: dict.fromkeys(SET_NAMES, 0))

    def counts(self) -> dict[str, dict[str, int]]:
        """Per set: parsed, kept and each filter's drops (what report.json and the UI show)."""
        return {
            name: {"parsed": self.parsed[name], "kept": len(self.kept[name]), **self.dropped[name]}
            for name in SET_NAMES
        }


def chunk_sha(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------- parsing


def parse_generation(generation: Generation) -> list[SynthItem]:
    """The items in one reply (possibly none; empty fields are kept for the `empty` filter)."""
    chunk = generation.chunk
    if generation.task == "qa":
        pairs = parse_labelled_pairs(generation.output, _Q_LINE, _A_LINE)
    elif generation.task == "instruction":
        pairs = parse_labelled_pairs(generation.output, _I_LINE, _R_LINE)[:1]
    else:
        abstract = parse_summary(generation.output)
        pairs = [(chunk.text, abstract)] if abstract else []
    return [
        SynthItem(
            kind=generation.task,
            prompt=prompt,
            response=response,
            doc_id=chunk.doc_id,
            chunk=chunk.index,
            chunk_sha=chunk.sha,
            split=chunk.split,
        )
        for prompt, response in pairs
    ]


def parse_labelled_pairs(
    text: str, first: re.Pattern[str], second: re.Pattern[str]
) -> list[tuple[str, str]]:
    """(first, second) pairs from lines labelled like "Q: ..." then "A: ...".

    A label's text runs on over unlabelled lines until the next label. A question without an
    answer (the reply was cut off, or the model forgot the A: line) yields no pair.
    """
    pairs: list[tuple[str, str]] = []
    current: str | None = None  # "first" or "second": which field unlabelled lines extend
    prompt: list[str] = []
    answer: list[str] = []

    def flush() -> None:
        if prompt and answer:
            pairs.append((_clean(" ".join(prompt)), _clean(" ".join(answer))))

    for line in text.splitlines():
        if match := first.match(line):
            flush()
            prompt, answer, current = [match.group(1)], [], "first"
        elif prompt and (match := second.match(line)):
            if answer:  # a second answer line for one question: keep the first answer only
                current = None
                continue
            answer, current = [match.group(1)], "second"
        elif line.strip() and current == "first":
            prompt.append(line)
        elif line.strip() and current == "second":
            answer.append(line)
        elif not line.strip() and current == "second":
            current = None  # a blank line ends an answer
    flush()
    return pairs


def parse_summary(text: str) -> str:
    """The abstract in a reply: its text without an "Abstract:"/"Summary:" label."""
    return _clean(_SUMMARY_LABEL.sub("", text.strip(), count=1))


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("*_").strip()


# ---------------------------------------------------------------------------------- filters


def normalise(text: str) -> str:
    """Lower-case words only: what duplicates and copies are compared on."""
    return " ".join(_WORD.findall(text.lower()))


def shingles(text: str, size: int = 3) -> frozenset[str]:
    """The word `size`-grams of `text` (a shorter text is one shingle of all its words)."""
    words = normalise(text).split()
    if len(words) <= size:
        return frozenset({" ".join(words)}) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


class ShingleIndex:
    """Kept items' shingle sets with an inverted index: `max_similarity` only compares items
    that share at least one shingle, so n items cost far less than n^2 comparisons."""

    def __init__(self) -> None:
        self._sets: list[frozenset[str]] = []
        self._postings: dict[str, list[int]] = defaultdict(list)

    def add(self, items: frozenset[str]) -> None:
        index = len(self._sets)
        self._sets.append(items)
        for shingle in items:
            self._postings[shingle].append(index)

    def max_similarity(self, items: frozenset[str]) -> float:
        candidates = {i for s in items for i in self._postings.get(s, ())}
        return max((jaccard(items, self._sets[i]) for i in candidates), default=0.0)


def copies_question(question: str, answer: str, threshold: float) -> bool:
    """True when the answer only repeats the question (a common small-model failure)."""
    q, a = normalise(question), normalise(answer)
    if not q or not a:
        return False
    if q == a or q in a:
        return True
    q_words, a_words = set(q.split()), set(a.split())
    if len(q_words) < 3 or len(a_words) < 3:
        return False
    return len(q_words & a_words) / len(q_words | a_words) >= threshold


def item_set(item: SynthItem) -> SetName | None:
    """Which output an item belongs in (None: a held-out instruction item, never used)."""
    if item.split == "train":
        return "sft"
    if item.kind == "qa":
        return "qa_eval"
    if item.kind == "summary":
        return "abstract_eval"
    return None


def drop_reason(
    item: SynthItem,
    settings: FilterSettings,
    *,
    seen: set[str],
    index: ShingleIndex,
    held_out: ShingleIndex | None = None,
) -> str | None:
    """The first filter that drops `item` (None: keep it). Updates nothing."""
    if not normalise(item.prompt) or not normalise(item.response):
        return "empty"
    counted = item.response if item.kind == "summary" else f"{item.prompt} {item.response}"
    if len(counted.split()) > settings.max_words:
        return "too_long"
    if item.kind != "summary" and copies_question(
        item.prompt, item.response, settings.copy_jaccard
    ):
        return "copies_question"
    if item.kind != "summary" and _PASSAGE_REF.search(f"{item.prompt}\n{item.response}"):
        return "refers_to_passage"
    if _exact_key(item) in seen:
        return "exact_duplicate"
    grams = shingles(_dedupe_text(item), settings.shingle_words)
    if index.max_similarity(grams) >= settings.near_duplicate_jaccard:
        return "near_duplicate"
    if held_out is not None and held_out.max_similarity(grams) >= settings.near_duplicate_jaccard:
        return "overlaps_held_out"
    return None


def _exact_key(item: SynthItem) -> str:
    return " ".join(f"{item.prompt}\n{item.response}".lower().split())


def _dedupe_text(item: SynthItem) -> str:
    # An abstract's prompt is its whole chunk: compare abstracts by what was generated.
    return item.response if item.kind == "summary" else f"{item.prompt} {item.response}"


def build_sets(generations: Iterable[Generation], settings: FilterSettings) -> SynthSets:
    """Parse every reply, route items to their set, filter; eval sets first so the SFT set can
    be checked against them (overlaps_held_out)."""
    by_set: dict[SetName, list[SynthItem]] = {name: [] for name in SET_NAMES}
    for generation in generations:
        for item in parse_generation(generation):
            target = item_set(item)
            if target is not None:
                by_set[target].append(item)
    sets = SynthSets()
    held_out = ShingleIndex()
    for name in ("qa_eval", "abstract_eval", "sft"):
        seen: set[str] = set()
        index = ShingleIndex()
        sets.parsed[name] = len(by_set[name])
        for item in by_set[name]:
            reason = drop_reason(
                item,
                settings,
                seen=seen,
                index=index,
                held_out=held_out if name == "sft" else None,
            )
            if reason is not None:
                sets.dropped[name][reason] += 1
                continue
            grams = shingles(_dedupe_text(item), settings.shingle_words)
            seen.add(_exact_key(item))
            index.add(grams)
            if name != "sft":
                held_out.add(grams)
            sets.kept[name].append(item)
    return sets


# ---------------------------------------------------------------------------------- outputs


def sft_row(item: SynthItem) -> dict[str, Any]:
    """Chat-messages JSONL row (pipelines.sft.read_conversations) with its provenance."""
    user = SUMMARY_REQUEST + item.prompt if item.kind == "summary" else item.prompt
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": item.response},
        ],
        **_provenance(item),
    }


def eval_row(item: SynthItem, number: int) -> dict[str, Any]:
    """Prompt -> reference JSONL row (the Score tab's perplexity format) with its provenance."""
    if item.kind == "qa":
        prompt = QA_PROMPT.format(question=item.prompt)
        row_id = f"qa{number}"
    else:
        prompt = ABSTRACT_PROMPT.format(body=item.prompt)
        row_id = f"abstract{number}"
    return {"id": row_id, "prompt": prompt, "reference": item.response, **_provenance(item)}


def _provenance(item: SynthItem) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "doc_id": item.doc_id,
        "chunk": item.chunk,
        "chunk_sha": item.chunk_sha,
    }


def set_rows(sets: SynthSets) -> dict[SetName, list[dict[str, Any]]]:
    return {
        "sft": [sft_row(i) for i in sets.kept["sft"]],
        "qa_eval": [eval_row(i, n) for n, i in enumerate(sets.kept["qa_eval"])],
        "abstract_eval": [eval_row(i, n) for n, i in enumerate(sets.kept["abstract_eval"])],
    }


def write_sets(folder: str | Path, sets: SynthSets) -> dict[SetName, Path]:
    """Write the three JSONL files into `folder` (which must exist); their paths by set."""
    folder = Path(folder)
    paths: dict[SetName, Path] = {}
    for name, rows in set_rows(sets).items():
        path = folder / SET_FILES[name]
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[name] = path
    return paths


def check_held_out_absent(sft_rows: Sequence[dict[str, Any]], held_out: Sequence[Chunk]) -> None:
    """Refuse SFT rows that come from a held-out document or carry a held-out chunk's text.

    Checked on the rows about to be written (document ids and chunk content hashes), so a
    routing bug anywhere upstream stops the run instead of leaking evaluation data. A training
    chunk whose text equals a held-out chunk is dropped before generation (pipelines.synth).
    """
    ids = {c.doc_id for c in held_out}
    shas = {c.sha for c in held_out}
    for number, row in enumerate(sft_rows, start=1):
        if row["doc_id"] in ids or row["chunk_sha"] in shas:
            raise SynthError(
                f"SFT item {number} (document {row['doc_id']}, chunk {row['chunk']}) comes from "
                "a held-out document; nothing was written. This is a bug in the studio: report it"
            )


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of an output JSONL file (all when None)."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def chunk_dict(chunk: Chunk) -> dict[str, Any]:
    return asdict(chunk) | {"sha": chunk.sha}
