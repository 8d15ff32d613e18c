"""Synthetic instruction and QA data from domain documents, written by a chat model from the catalog.

    python -m pipelines.synth pipelines/configs/synth/demo.yml
    python -m pipelines.synth CONFIG.yml --events EVENTS.jsonl      # as the job runner starts it

The reference study had no instruction data and no benchmark for its domain: it generated
closed-book question-answer pairs from held-out documents with a strong model (scored by answer
perplexity) and instruction-tuned on a synthetic instruction set. This pipeline does both for a
user's own documents:

1. read the documents (txt, JSONL, Parquet; folders are searched), each with an id;
2. hold some out (`held_out_inputs`, plus a seeded `held_out_fraction` of `inputs`);
3. cut each document into chunks that fit the generator's context with the longest template
   and its reply (token counts from the generator's own tokenizer, cut at sentence ends);
   a training chunk whose text equals a held-out chunk is dropped;
4. ask the generator, chunk by chunk, for QA pairs, an instruction + response and an abstract
   (training chunks) or QA pairs and an abstract (held-out chunks), with the editable
   templates; one request at a time through the studio's engine (vLLM on a GPU, transformers
   on CPU), the reply started with the format's first label ("Q:", "Instruction:"; `prefill`):
   SmolLM2-135M's QA replies parsed 2 times in 6 without it, 6 in 6 with it;
5. parse and filter (studio.synth.items: empty, too long, answer copies question, refers to
   "the passage", exact and near duplicates, SFT items overlapping the eval sets), check that
   no held-out document or chunk reached the SFT set, and write into `<output_dir>.partial/`,
   renamed to `output_dir` when complete (a cancelled run leaves nothing):
   sft.jsonl (chat messages), qa_eval.jsonl and abstract_eval.jsonl (prompt -> reference, the
   Score tab's perplexity tasks), generations.jsonl (every raw reply), report.json.

Tests: tests/test_synth.py (tiny model end to end, parsing and filters on written replies;
a slow one with SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.data import read_documents, read_jsonl
from studio.jobs.events import EventWriter, report_failure
from studio.synth.config import (
    REPLY_PREFIX,
    SynthConfig,
    SynthError,
    TaskName,
    load_synth_config,
    resolve_synth_paths,
)
from studio.synth.items import (
    Chunk,
    Generation,
    build_sets,
    check_held_out_absent,
    set_rows,
    write_sets,
)

LOG = logging.getLogger(__name__)

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".parquet")
PARTIAL_SUFFIX = ".partial"
REPORT_FILE = "report.json"
GENERATIONS_FILE = "generations.jsonl"
CONFIG_FILE = "synth_config.yml"
# Tokens kept free besides prompt and reply: a chunk cut from the whole document may tokenize a
# few tokens longer on its own (merges at its edges).
SAFETY_TOKENS = 8
MIN_CHUNK_TOKENS = 16
HELD_OUT_TASKS: frozenset[TaskName] = frozenset({"qa", "summary"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")

Progress = Callable[[int, int, str], None]
Generate = Callable[[str, int, str], str]  # (prompt, seed, reply prefix) -> reply text


@dataclass(frozen=True)
class SourceDocument:
    doc_id: str
    text: str


# ---------------------------------------------------------------------------------- documents


def expand_inputs(paths: Sequence[str | Path], field: str = "inputs") -> list[Path]:
    """Files named, and the document files inside folders named (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in DOCUMENT_SUFFIXES)
            if not found:
                raise SynthError(
                    f"{field}: folder {path} holds no .txt, .jsonl or .parquet files; choose "
                    "a folder of documents"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SynthError(f"{field}: {path} does not exist; choose a documents file or folder")
    return files


def read_source_documents(
    paths: Sequence[str | Path],
    *,
    text_field: str = "text",
    id_field: str = "id",
    field: str = "inputs",
) -> list[SourceDocument]:
    """Documents with ids: the JSONL `id_field`, else `file#line` (JSONL), `file#row`
    (Parquet, counting non-empty rows) or the file name (.txt)."""
    docs: list[SourceDocument] = []
    for path in expand_inputs(paths, field):
        if path.suffix == ".jsonl":
            for number, row in read_jsonl(path):
                text = row.get(text_field)
                if not isinstance(text, str):
                    raise SynthError(
                        f"{path} line {number} has no text under '{text_field}'; set text_field "
                        "to the key that holds each document's text"
                    )
                if text.strip():
                    doc_id = row.get(id_field)
                    docs.append(SourceDocument(str(doc_id or f"{path.name}#{number}"), text))
        elif path.suffix == ".parquet":
            texts = read_documents([path], format="parquet", text_field=text_field)
            docs.extend(SourceDocument(f"{path.name}#{i}", t) for i, t in enumerate(texts))
        else:
            docs.extend(SourceDocument(path.name, t) for t in read_documents([path], format="txt"))
    seen: set[str] = set()
    for doc in docs:
        if doc.doc_id in seen:
            raise SynthError(
                f"{field}: document id '{doc.doc_id}' appears twice; give each document a unique "
                f"'{id_field}' (or rename one of the files)"
            )
        seen.add(doc.doc_id)
    return docs


def split_documents(
    docs: Sequence[SourceDocument],
    held_out_docs: Sequence[SourceDocument],
    *,
    fraction: float,
    seed: int,
) -> tuple[list[SourceDocument], list[SourceDocument]]:
    """(training, held-out) documents. Which of `docs` are held out depends only on the seed
    and each document's id (a hash order), so adding documents does not reshuffle the rest."""
    held_ids = {d.doc_id for d in held_out_docs}
    pool = [d for d in docs if d.doc_id not in held_ids]
    count = round(fraction * len(pool))
    if fraction > 0 and len(pool) >= 2:
        count = min(max(count, 1), len(pool) - 1)  # at least one each way
    ranked = sorted(pool, key=lambda d: hashlib.sha256(f"{seed}:{d.doc_id}".encode()).hexdigest())
    chosen = {d.doc_id for d in ranked[:count]}
    train = [d for d in pool if d.doc_id not in chosen]
    held = list(held_out_docs) + [d for d in pool if d.doc_id in chosen]
    return train, held


# ---------------------------------------------------------------------------------- chunking


def chunk_text(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    """`text` cut into pieces of at most `max_tokens` tokens of `tokenizer`, each ending at a
    sentence end (or a blank line) when one falls in the second half of the window."""
    if not getattr(tokenizer, "is_fast", False):  # no offset mapping: pack whole words
        return _chunk_words(text, tokenizer, max_tokens)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = encoded["offset_mapping"]
    chunks: list[str] = []
    start_token, start_char = 0, 0
    while start_token < len(offsets):
        end_token = min(start_token + max_tokens, len(offsets))
        cut = offsets[end_token - 1][1] if end_token < len(offsets) else len(text)
        if end_token < len(offsets):
            window = text[start_char:cut]
            ends = [m.end() for m in _SENTENCE_END.finditer(window)]
            good = [e for e in ends if e >= len(window) // 2]
            if good:
                cut = start_char + good[-1]
                end_token = next(
                    (i for i in range(start_token, end_token) if offsets[i][0] >= cut), end_token
                )
        piece = text[start_char:cut].strip()
        if piece:
            chunks.append(piece)
        start_token, start_char = end_token, cut
    return chunks


def _chunk_words(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    """Words packed while their summed token counts fit (a word longer than the budget is a
    chunk of its own; the generator's prompt check still guards it)."""
    chunks: list[str] = []
    words: list[str] = []
    used = 0
    for word in text.split():
        size = len(tokenizer(" " + word, add_special_tokens=False)["input_ids"])
        if words and used + size > max_tokens:
            chunks.append(" ".join(words))
            words, used = [], 0
        words.append(word)
        used += size
    if words:
        chunks.append(" ".join(words))
    return chunks


def chunk_budget(config: SynthConfig, tokenizer: Any, context: int | None) -> int:
    """Longest chunk (tokens) that fits `context` with the longest prompt and the reply."""
    from studio.inference.chat_format import chat_prompt

    if context is None:
        return config.chunk_tokens
    overhead = 0
    for task in config.tasks:
        text = config.templates.render(task, "", config.qa_per_chunk)
        rendered = chat_prompt(tokenizer, [{"role": "user", "content": text}]).text
        overhead = max(overhead, len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    budget = min(config.chunk_tokens, context - overhead - config.max_new_tokens - SAFETY_TOKENS)
    if budget < MIN_CHUNK_TOKENS:
        raise SynthError(
            f"the generator reads {context} tokens, the longest template takes {overhead} and "
            f"max_new_tokens is {config.max_new_tokens}: that leaves {budget} for a chunk; "
            "lower max_new_tokens, shorten the templates or choose a generator with a longer context"
        )
    return budget


def make_chunks(
    train: Sequence[SourceDocument],
    held: Sequence[SourceDocument],
    tokenizer: Any,
    max_tokens: int,
    max_chunks: int | None = None,
) -> tuple[list[Chunk], int]:
    """Chunks of both splits (held-out first, then training, in document order), and how many
    training chunks were dropped for repeating a held-out chunk's text."""
    held_chunks = [
        Chunk(doc.doc_id, i, text, "held_out")
        for doc in held
        for i, text in enumerate(chunk_text(doc.text, tokenizer, max_tokens))
    ]
    held_shas = {c.sha for c in held_chunks}
    train_chunks = [
        Chunk(doc.doc_id, i, text, "train")
        for doc in train
        for i, text in enumerate(chunk_text(doc.text, tokenizer, max_tokens))
    ]
    kept = [c for c in train_chunks if c.sha not in held_shas]
    chunks = _interleave(held_chunks, kept) if max_chunks else held_chunks + kept
    return chunks[:max_chunks] if max_chunks else chunks, len(train_chunks) - len(kept)


def _interleave(held: list[Chunk], train: list[Chunk]) -> list[Chunk]:
    """Both splits merged in proportion (by relative position), so a `max_chunks` sample
    still holds each split in its share."""
    keyed = [((i + 0.5) / len(held), 0, c) for i, c in enumerate(held)]
    keyed += [((i + 0.5) / len(train), 1, c) for i, c in enumerate(train)]
    return [c for _, _, c in sorted(keyed, key=lambda k: (k[0], k[1]))]


# ---------------------------------------------------------------------------------- generation


def chunk_tasks(config: SynthConfig, chunk: Chunk) -> list[TaskName]:
    """What to ask for a chunk: held-out chunks feed only the eval sets (qa, summary)."""
    if chunk.split == "held_out":
        return [t for t in config.tasks if t in HELD_OUT_TASKS]
    return list(config.tasks)


def load_generator(config: SynthConfig) -> tuple[Any, Generate]:
    """The engine (loaded) and a function (prompt, seed, reply prefix) -> reply, one chat turn
    each. As studio.inference.engine.chat, plus the prefix: the assistant turn is started with
    it (prefilled) and the returned reply includes it."""
    from studio.catalog.registry import model_folder
    from studio.inference.chat_format import chat_prompt
    from studio.inference.engine import (
        ModelSpec,
        create_engine,
        generation_settings,
        settings_for_prompt,
    )

    spec = ModelSpec.from_path(model_folder(config.generator))
    engine = create_engine(spec, engine=config.engine)
    engine.load()

    def generate(prompt: str, seed: int, prefix: str = "") -> str:
        settings = generation_settings(
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            repetition_penalty=config.repetition_penalty,
            seed=seed,
        )
        rendered = chat_prompt(engine.tokenizer, [{"role": "user", "content": prompt}])
        full = settings_for_prompt(settings, rendered)
        # The rendered text carries its own BOS where the template wants one.
        result = engine.generate(rendered.text + prefix, full, add_special_tokens=False)
        return prefix + result.text

    return engine, generate


def run_synth(config: SynthConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole pipeline; the report (also written to report.json in the output)."""
    started = time.perf_counter()
    config = resolve_synth_paths(config)
    final = Path(config.output_dir)
    if final.exists():
        raise SynthError(
            f"output_dir {final} already exists; choose a new output_dir or delete that folder"
        )
    # 1) documents and the held-out split
    docs = read_source_documents(
        config.inputs, text_field=config.text_field, id_field=config.id_field
    )
    extra = (
        read_source_documents(
            config.held_out_inputs,
            text_field=config.text_field,
            id_field=config.id_field,
            field="held_out_inputs",
        )
        if config.held_out_inputs
        else []
    )
    if not docs:
        raise SynthError("inputs: no non-empty documents found; check the paths and text_field")
    train, held = split_documents(docs, extra, fraction=config.held_out_fraction, seed=config.seed)
    if not held:
        LOG.warning("no held-out documents: the QA and abstract eval sets will be empty")
    # 2) the generator, and chunks that fit its context
    engine, generate = load_generator(config)
    tokenizer = engine.tokenizer
    budget = chunk_budget(config, tokenizer, getattr(engine, "max_length", None))
    chunks, dropped_copies = make_chunks(train, held, tokenizer, budget, config.max_chunks)
    requests = [(chunk, task) for chunk in chunks for task in chunk_tasks(config, chunk)]
    LOG.info(
        "%d training + %d held-out documents -> %d chunks (<= %d tokens) -> %d requests",
        len(train),
        len(held),
        len(chunks),
        budget,
        len(requests),
    )
    # 3) generate, writing every raw reply as it comes (into the partial folder)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    generations: list[Generation] = []
    gen_started = time.perf_counter()
    with (partial / GENERATIONS_FILE).open("w", encoding="utf-8") as raw:
        for number, (chunk, task) in enumerate(requests):
            if progress is not None:
                progress(number, len(requests), f"{task} for {chunk.doc_id} chunk {chunk.index}")
            prompt = config.templates.render(task, chunk.text, config.qa_per_chunk)
            prefix = REPLY_PREFIX[task] if config.prefill else ""
            reply = generate(prompt, config.seed + number, prefix)
            generations.append(Generation(chunk, task, reply))
            record = {"doc_id": chunk.doc_id, "chunk": chunk.index, "split": chunk.split}
            raw.write(json.dumps(record | {"task": task, "output": reply}) + "\n")
            raw.flush()  # readable while the job runs
    gen_seconds = time.perf_counter() - gen_started
    # 4) parse, filter, prove the held-out split is absent from training, write, rename
    sets = build_sets(generations, config.filters)
    held_chunks = [c for c in chunks if c.split == "held_out"]
    check_held_out_absent(set_rows(sets)["sft"], held_chunks)
    write_sets(partial, sets)
    kept = sum(len(items) for items in sets.kept.values())
    report = {
        "output_dir": str(final),
        "generator": config.generator,
        "engine": getattr(engine, "engine_name", ""),
        "documents": {"train": len(train), "held_out": len(held)},
        "held_out_doc_ids": sorted(d.doc_id for d in held),
        "chunks": {
            "train": sum(c.split == "train" for c in chunks),
            "held_out": len(held_chunks),
            "max_tokens": budget,
            "train_dropped_as_held_out_copies": dropped_copies,
        },
        "requests": len(requests),
        "parse": parse_stats(generations),
        "sets": sets.counts(),
        "kept_items": kept,
        "generation_seconds": round(gen_seconds, 3),
        "requests_per_second": round(len(requests) / gen_seconds, 4) if gen_seconds else None,
        "kept_items_per_second": round(kept / gen_seconds, 4) if gen_seconds else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (partial / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    from studio.synth.config import dump_synth_config

    (partial / CONFIG_FILE).write_text(
        dump_synth_config(config, command=f"python -m pipelines.synth {CONFIG_FILE}"),
        encoding="utf-8",
    )
    os.replace(partial, final)
    if progress is not None:
        progress(len(requests), len(requests), "done")
    return report


def parse_stats(generations: Sequence[Generation]) -> dict[str, dict[str, float]]:
    """Per task: replies, replies that gave at least one item, and that share (parse rate)."""
    from studio.synth.items import parse_generation

    stats: dict[str, dict[str, float]] = {}
    for generation in generations:
        entry = stats.setdefault(generation.task, {"replies": 0, "parsed": 0, "items": 0})
        items = parse_generation(generation)
        entry["replies"] += 1
        entry["parsed"] += bool(items)
        entry["items"] += len(items)
    for entry in stats.values():
        entry["rate"] = round(entry["parsed"] / entry["replies"], 4) if entry["replies"] else 0.0
    return stats


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synth", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="synthetic-data config YAML")
    parser.add_argument("--events", default=None, help="job-runner events file (JSON lines)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    events = EventWriter(args.events) if args.events else None
    try:
        config = load_synth_config(args.config)
        report = run_synth(config, progress=events.progress if events else None)
    except Exception as error:  # a StudioError is a sentence; anything else names its type
        code = report_failure(events, "synthetic data", error)
        if events is not None:
            events.close()
        return code
    summary = _summary(report)
    if events is not None:
        events.result(output_path=report["output_dir"], summary=summary)
        events.close()
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")  # the CLI's answer, not a log line
    return 0


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "kept": {name: counts["kept"] for name, counts in report["sets"].items()},
        "requests": report["requests"],
        "seconds": report["seconds"],
    }


if __name__ == "__main__":
    sys.exit(main())
