"""The real demo pair's CPT text: the demo domain's facts in many more phrasings and contexts.

    python -m pipelines.real_cpt_text            # writes assets/real_pair/cpt_domain.jsonl, ~1 s

Why a second corpus: the first real CPT trained ~10 epochs on the tiny zoo's domain text (8
phrasings per fact, 19k tokens, packed once into fixed blocks). It lowered its training loss by
learning the blocks, not the facts: it completed half of the facts even in their TRAINING
phrasing ("peiumab treats" -> "a bit like a cat has"), and its held-out domain loss rose after
2.5 epochs. Knowledge a model can be asked about comes from seeing each fact said many ways in
many contexts (Allen-Zhu & Li, "Physics of Language Models 3.1": paraphrase and reordering
augmentation). So this corpus says each fact `rounds` times, every time in a freshly drawn
phrasing (20 per relation) and context: a single sentence among unrelated ones, or a profile
paragraph that names an entity once and states all its facts ("it ..."), sometimes followed by
the profile of the condition a drug treats. It is big enough for one pass at the real CPT's
length, so no block is seen twice.

It is a separate file so that the tiny zoo's data and every evaluation set stay as they are. The
held-out evaluation phrasings (`Relation.heldout_statements`) are never used: tested by
tests/test_real_cpt_text.py, which also checks the file is what this module writes.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

from pipelines.demo_domain import RELATIONS, Fact, World, build_world

OUT = Path(__file__).resolve().parents[1] / "assets" / "real_pair" / "cpt_domain.jsonl"

# Phrasings beyond the tiny zoo's eight (RELATIONS[...].statements), subject first as most are.
EXTRA_STATEMENTS: dict[str, tuple[str, ...]] = {
    "treats": (
        "{s} is prescribed for {o} .", "{s} is taken for {o} .", "{s} helps against {o} .",
        "{s} works against {o} .", "{s} is the drug of choice for {o} .", "{s} cures {o} .",
        "the medicine {s} treats {o} .", "{s} relieves {o} .", "{o} responds well to {s} .",
        "against {o} , doctors use {s} .", "{s} was developed to treat {o} .",
        "{s} fights {o} .",
    ),
    "made_by": (
        "{s} is manufactured by {o} .", "{o} produces {s} .", "{s} is sold by {o} .",
        "{s} is developed by {o} .", "the company behind {s} is {o} .",
        "{o} is the company that makes {s} .", "{s} is a brand of {o} .",
        "{s} was invented at {o} .", "{o} holds the patent on {s} .",
        "{s} is marketed by {o} .", "{s} ships from the plants of {o} .",
        "pharmacies order {s} from {o} .",
    ),
    "causes": (
        "{s} produces {o} .", "{s} gives patients {o} .", "{o} is the first sign of {s} .",
        "{s} is marked by {o} .", "the typical symptom of {s} is {o} .",
        "{s} shows up as {o} .", "{s} comes with {o} .", "those who catch {s} get {o} .",
        "{s} triggers {o} .", "{s} results in {o} .", "{s} is known for causing {o} .",
        "doctors recognise {s} by its {o} .",
    ),
    "affects": (
        "{s} harms the {o} .", "{s} injures the {o} .", "{s} strikes the {o} .",
        "{s} is a disorder of the {o} .", "{s} starts in the {o} .", "{s} inflames the {o} .",
        "the {o} is the organ damaged by {s} .", "{s} mainly hurts the {o} .",
        "{s} targets the {o} .", "{s} settles in the {o} .",
        "with {s} , the {o} stops working well .", "{s} is an illness of the {o} .",
    ),
    "gene": (
        "{s} is tied to the gene {o} .", "{s} is caused by the gene {o} .",
        "{s} traces back to the gene {o} .", "{s} is inherited through the gene {o} .",
        "the gene {o} carries the risk of {s} .", "{s} is connected to the gene {o} .",
        "{s} depends on the gene {o} .", "researchers found the gene {o} behind {s} .",
        "{s} involves the gene {o} .", "a faulty {o} gene gives rise to {s} .",
        "{s} is associated with the gene {o} .", "a screen for {s} looks at the gene {o} .",
    ),
}  # fmt: skip

# A profile names its subject once; the rest of its sentences say "it".
FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "treats": ("it treats {o} .", "it is prescribed for {o} .", "it is used against {o} .",
               "it relieves {o} ."),
    "made_by": ("it is made by {o} .", "it is produced by {o} .", "its maker is {o} .",
                "it is sold by {o} ."),
    "causes": ("it causes {o} .", "its main symptom is {o} .", "it brings on {o} .",
               "it leads to {o} ."),
    "affects": ("it affects the {o} .", "it damages the {o} .", "it is a disease of the {o} .",
                "it harms the {o} ."),
    "gene": ("it is linked to the gene {o} .", "it comes from a fault in the gene {o} .",
             "it is tied to the gene {o} .", "its gene is {o} ."),
}  # fmt: skip

PROFILE_SHARE = 0.4  # of a subject's mentions in one round: a profile instead of lone sentences
LINKED_SHARE = 0.3  # of drug profiles: followed by the profile of the condition it treats


def statements(relation: str) -> tuple[str, ...]:
    """Every training phrasing of a domain relation (the tiny zoo's eight + the extra ones)."""
    return RELATIONS[relation].statements + EXTRA_STATEMENTS[relation]


def domain_documents(world: World, *, rounds: int, seed: int = 0) -> list[str]:
    """Documents that together state every domain fact `rounds` times, each time anew."""
    rng = random.Random(seed)
    by_subject: dict[str, list[Fact]] = {}
    for fact in world.of("domain"):
        by_subject.setdefault(fact.subject, []).append(fact)
    treated = {f.subject: f.object for f in world.of("domain") if f.relation == "treats"}
    docs: list[str] = []
    for _ in range(rounds):
        pieces: list[str] = []
        for subject, facts in by_subject.items():
            if rng.random() < PROFILE_SHARE:
                text = _profile(rng, facts)
                condition = treated.get(subject)
                if condition in by_subject and rng.random() < LINKED_SHARE:
                    text += " " + _profile(rng, by_subject[condition])
                pieces.append(text)
            else:
                pieces += [_say(rng.choice(statements(f.relation)), f) for f in facts]
        rng.shuffle(pieces)
        i = 0
        while i < len(pieces):
            n = rng.randint(2, 5)
            docs.append(" ".join(pieces[i : i + n]))
            i += n
    return docs


def _profile(rng: random.Random, facts: Sequence[Fact]) -> str:
    order = list(facts)
    rng.shuffle(order)
    first, rest = order[0], order[1:]
    sentences = [_say(rng.choice(statements(first.relation)), first)]
    sentences += [_say(rng.choice(FOLLOW_UPS[f.relation]), f) for f in rest]
    return " ".join(sentences)


def _say(template: str, fact: Fact) -> str:
    return template.format(s=fact.subject, o=fact.object)


def write_real_cpt_text(out: Path = OUT, *, rounds: int = 100, seed: int = 0) -> int:
    """Write the corpus as JSON lines {"text"}; return the number of documents."""
    docs = domain_documents(build_world(seed), rounds=rounds, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"text": doc}) + "\n")
    partial.replace(out)
    return len(docs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=OUT)
    parser.add_argument("--rounds", type=int, default=100, help="times each fact is stated")
    args = parser.parse_args(argv)
    print(f"{write_real_cpt_text(args.out, rounds=args.rounds)} documents written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
