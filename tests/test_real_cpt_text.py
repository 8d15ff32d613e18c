"""The real pair's CPT text: it is what the generator writes, it states every domain fact many
ways, and no held-out evaluation phrasing is in it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from pipelines.demo_domain import DOMAIN_RELATIONS, build_world
from pipelines.real_cpt_text import (
    FOLLOW_UPS,
    OUT,
    domain_documents,
    statements,
    write_real_cpt_text,
)


def test_shipped_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    again = tmp_path / "cpt_domain.jsonl"
    write_real_cpt_text(again)
    assert again.read_bytes() == OUT.read_bytes()


def test_every_relation_has_twenty_distinct_phrasings() -> None:
    for relation in DOMAIN_RELATIONS:
        phrasings = statements(relation.name)
        assert len(set(phrasings)) == len(phrasings) == 20
        assert all("{s}" in t and "{o}" in t for t in phrasings)
        assert all("{o}" in t and "{s}" not in t for t in FOLLOW_UPS[relation.name])


def test_no_heldout_phrasing_is_used() -> None:
    """No held-out sentence verbatim, and no 3+ word piece of a held-out phrasing in a template
    (the completion and perplexity sets use those phrasings; training must not)."""
    world = build_world(0)
    text = "\n".join(json.loads(line)["text"] for line in OUT.read_text("utf-8").splitlines())
    for relation in DOMAIN_RELATIONS:
        templates = statements(relation.name) + FOLLOW_UPS[relation.name]
        for heldout in relation.heldout_statements:
            pieces = [p.strip(" .") for p in re.split(r"\{[so]\}", heldout)]
            assert not [p for p in pieces if len(p.split()) >= 3 and any(p in t for t in templates)]
            for fact in (f for f in world.facts if f.relation == relation.name):
                assert heldout.format(s=fact.subject, o=fact.object) not in text


def test_each_fact_is_stated_once_per_round_in_fresh_words() -> None:
    world = build_world(0)
    rounds = 6
    docs = domain_documents(world, rounds=rounds, seed=3)
    text = f" {' '.join(docs)} "
    facts_with = Counter(f.object for f in world.of("domain"))
    for obj, count in facts_with.items():  # each fact names its object once per round
        assert len(re.findall(f" {re.escape(obj)} ", text)) >= rounds * count, obj
    sentences = [s for d in docs for s in d.split(" . ")]
    assert len(set(sentences)) > 0.8 * len(sentences)  # fresh phrasings, not the same few lines
    assert domain_documents(world, rounds=rounds, seed=3) == docs
    assert domain_documents(world, rounds=rounds, seed=4) != docs
