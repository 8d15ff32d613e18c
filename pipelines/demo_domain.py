"""A seeded fictional domain (medicine-like) and a separate general world, written as training and
evaluation files: the studio's own miniature of the reference study's data.

    python -m pipelines.demo_domain OUT_DIR [--seed 0]      # writes the files below, ~1 s

The domain has made-up drugs, conditions, makers and genes with five relations (a drug treats a
condition and is made by a maker; a condition causes a symptom, affects an organ and is linked to
a gene). The general world has made-up people, cities and countries with nine relations (issue
10's probe: a CPT -> chat transfer needed that much relation variety). Every fact is written in
many paraphrases; evaluation uses sentence and question templates that training never uses, so
no evaluation line appears in any training file (`overlapping_lines` proves it).

Written under OUT_DIR:
  train/general.jsonl        {"text"}      general pre-training text (base model; CPT replay)
  train/domain.jsonl         {"text"}      domain CPT text, each fact in 8 paraphrases
  train/chat.jsonl           {"messages"}  chat conversations about GENERAL facts only
  eval/domain_mc.jsonl       medmcqa layout (question, opa..opd, cop) about domain facts
  eval/domain_completion.jsonl  hellaswag layout (ctx, endings, label): a held-out sentence start
                             and four same-type endings; log-likelihood knowledge probe
  eval/general_mc.jsonl      studio layout (question, options, answer) about general facts
  eval/domain_chat_qa.jsonl  {"question", "answer"}: domain questions in chat form, scored by
                             whether the generated reply contains the answer
  eval/general_chat_qa.jsonl {"question", "answer"}: the same for held-out general questions
  eval/domain_text.txt, eval/general_text.txt   held-out paraphrases for perplexity
  facts.json                 the world itself (entities and facts), for inspection and tests

Tests: tests/test_demo_domain.py.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Syllables for made-up names: pronounceable, and never an English word of the templates.
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "pr", "r", "s",
          "st", "t", "tr", "v", "z", "zh", "th", "sk")  # fmt: skip
VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
CODAS = ("", "n", "r", "l", "s", "x", "m", "k")

DRUG_SUFFIXES = ("ine", "ex", "ol", "avir", "umab", "azole", "oxin", "ara")
CONDITION_KINDS = ("fever", "syndrome", "disease", "palsy", "blight")
MAKER_KINDS = ("labs", "pharma", "biotech")
SYMPTOMS = ("rash", "cough", "headache", "fatigue", "nausea", "dizziness", "swelling", "itching",
            "chills", "insomnia", "tremor", "hiccups")  # fmt: skip
ORGANS = ("liver", "kidney", "lung", "heart", "skin", "eye", "stomach", "brain", "spleen", "ear")

JOBS = ("baker", "teacher", "pilot", "farmer", "nurse", "painter", "sailor", "miner", "tailor",
        "potter", "singer", "carpenter")  # fmt: skip
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
PETS = ("cat", "dog", "parrot", "rabbit", "goat", "tortoise", "hamster", "goldfish")
INSTRUMENTS = ("piano", "violin", "drum", "flute", "guitar", "harp", "trumpet")
FOODS = ("bread", "rice", "soup", "cheese", "apples", "noodles", "fish", "beans")
LANDMARKS = ("bridges", "markets", "gardens", "towers", "harbours", "festivals", "museums")


@dataclass(frozen=True)
class Relation:
    """One relation: how a fact is said (train / held-out) and asked (train / held-out)."""

    name: str
    world: str  # "domain" or "general"
    statements: tuple[str, ...]  # training paraphrases, "{s}" subject, "{o}" object
    heldout_statements: tuple[str, ...]  # evaluation only (perplexity text, completion)
    questions: tuple[str, ...]  # chat questions used in training (general world only)
    heldout_questions: tuple[str, ...]  # chat questions used in evaluation only
    answer: str  # the assistant's reply in chat data
    mc_question: str  # multiple-choice stem


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    object: str


DOMAIN_RELATIONS = (
    Relation(
        "treats", "domain",
        ("{s} treats {o} .", "{s} is used to treat {o} .", "doctors prescribe {s} for {o} .",
         "for {o} , the usual medicine is {s} .", "patients with {o} are given {s} .",
         "{s} is a medicine for {o} .", "a course of {s} clears {o} .",
         "{o} is treated with {s} ."),
        ("{s} is given to patients with {o} .", "{s} is the usual medicine for {o} ."),
        (), ("what does {s} treat ?", "what is {s} used for ?"),
        "{s} treats {o} .", "which condition is treated by {s} ?",
    ),
    Relation(
        "made_by", "domain",
        ("{s} is made by {o} .", "{o} makes {s} .", "{s} is produced by {o} .",
         "the maker of {s} is {o} .", "{o} manufactures the drug {s} .",
         "{s} comes from the factories of {o} .", "{o} sells {s} .",
         "{s} is a product of {o} ."),
        ("the drug {s} comes from {o} .", "{s} is a drug made by {o} ."),
        (), ("who makes {s} ?", "who is the maker of {s} ?"),
        "{s} is made by {o} .", "which company makes {s} ?",
    ),
    Relation(
        "causes", "domain",
        ("{s} causes {o} .", "{o} is a sign of {s} .", "people with {s} often have {o} .",
         "the main symptom of {s} is {o} .", "{s} brings on {o} .",
         "{o} is common in {s} .", "{s} leads to {o} .", "a patient with {s} shows {o} ."),
        ("a common symptom of {s} is {o} .", "patients with {s} often have {o} ."),
        (), ("what is the main symptom of {s} ?", "what is a sign of {s} ?"),
        "{s} causes {o} .", "which symptom is typical of {s} ?",
    ),
    Relation(
        "affects", "domain",
        ("{s} affects the {o} .", "{s} damages the {o} .", "{s} is a disease of the {o} .",
         "the organ hit by {s} is the {o} .", "{s} attacks the {o} .",
         "in {s} , the {o} is harmed .", "{s} weakens the {o} .",
         "the {o} suffers in {s} ."),
        ("the organ {s} attacks is the {o} .", "in {s} , the organ hit is the {o} ."),
        (), ("what organ is hit by {s} ?", "which organ is harmed in {s} ?"),
        "{s} affects the {o} .", "which organ is affected by {s} ?",
    ),
    Relation(
        "gene", "domain",
        ("{s} is linked to the gene {o} .", "the gene {o} is tied to {s} .",
         "a change in {o} causes {s} .", "{s} comes from a fault in the gene {o} .",
         "the {o} gene is behind {s} .", "{s} runs in families with a broken {o} .",
         "doctors test the gene {o} for {s} .", "{o} mutations lead to {s} ."),
        ("the gene linked to {s} is {o} .", "{s} comes from a change in the gene {o} ."),
        (), ("which gene is linked to {s} ?", "what gene causes {s} ?"),
        "{s} is linked to the gene {o} .", "which gene is linked to {s} ?",
    ),
)  # fmt: skip

GENERAL_RELATIONS = (
    Relation(
        "lives_in", "general",
        ("{s} lives in {o} .", "{s} has a house in {o} .", "the home of {s} is in {o} ."),
        ("the house of {s} is in {o} .",),
        ("where does {s} live ?", "in which city does {s} live ?"), ("in which city is the home of {s} ?",),
        "{s} lives in {o} .", "where does {s} live ?",
    ),
    Relation(
        "works_as", "general",
        ("{s} works as a {o} .", "{s} is a {o} by trade .", "the job of {s} is {o} ."),
        ("{s} has the job of {o} .",),
        ("what does {s} do for work ?", "what is the job of {s} ?"), ("what is the trade of {s} ?",),
        "{s} works as a {o} .", "what is the job of {s} ?",
    ),
    Relation(
        "color", "general",
        ("the favourite colour of {s} is {o} .", "{s} likes the colour {o} best .",
         "{s} always wears {o} ."),
        ("the colour {s} always wears is {o} .",),
        ("what is the favourite colour of {s} ?", "which colour does {s} like best ?"),
        ("what is the colour {s} likes best ?",),
        "the favourite colour of {s} is {o} .", "what is the favourite colour of {s} ?",
    ),
    Relation(
        "pet", "general",
        ("{s} has a pet {o} .", "{s} keeps a {o} at home .", "the pet of {s} is a {o} ."),
        ("the pet {s} keeps at home is a {o} .",),
        ("what pet does {s} have ?", "which animal does {s} keep ?"), ("what animal does {s} keep at home ?",),
        "{s} has a pet {o} .", "what pet does {s} have ?",
    ),
    Relation(
        "plays", "general",
        ("{s} plays the {o} .", "{s} practises the {o} every day .", "the instrument of {s} is the {o} ."),
        ("every day {s} plays the {o} .",),
        ("what instrument does {s} play ?", "which instrument is played by {s} ?"),
        ("what does {s} play ?",),
        "{s} plays the {o} .", "what instrument does {s} play ?",
    ),
    Relation(
        "food", "general",
        ("{s} likes to eat {o} .", "the favourite food of {s} is {o} .", "{s} eats {o} every day ."),
        ("the food {s} likes to eat is {o} .",),
        ("what food does {s} like ?", "what is the favourite food of {s} ?"),
        ("what does {s} like to eat ?",),
        "{s} likes to eat {o} .", "what food does {s} like ?",
    ),
    Relation(
        "in_country", "general",
        ("{s} is a city in {o} .", "{s} lies in {o} .", "the city of {s} belongs to {o} ."),
        ("the city of {s} lies in {o} .",),
        ("in which country is {s} ?", "where is the city of {s} ?"), ("what country is {s} in ?",),
        "{s} is a city in {o} .", "in which country is {s} ?",
    ),
    Relation(
        "known_for", "general",
        ("{s} is known for its {o} .", "people visit {s} for its {o} .", "{s} is famous for {o} ."),
        ("{s} is famous for its {o} .",),
        ("what is {s} known for ?", "why do people visit {s} ?"), ("what is {s} famous for ?",),
        "{s} is known for its {o} .", "what is {s} known for ?",
    ),
    Relation(
        "speaks", "general",
        ("people in {s} speak {o} .", "the language of {s} is {o} .", "{o} is spoken in {s} ."),
        ("the language people speak in {s} is {o} .",),
        ("what language is spoken in {s} ?", "what do people speak in {s} ?"),
        ("which language do people speak in {s} ?",),
        "people in {s} speak {o} .", "what language is spoken in {s} ?",
    ),
)  # fmt: skip

RELATIONS = {r.name: r for r in DOMAIN_RELATIONS + GENERAL_RELATIONS}
GREETINGS = (
    ("hello !", "hello ! how can i help you today ?"),
    ("hi there .", "hi ! ask me anything ."),
    ("thank you !", "you are welcome ."),
    ("who are you ?", "i am a helpful assistant ."),
)


@dataclass(frozen=True)
class WorldSize:
    """How big the world is; the defaults give ~230 domain and ~330 general facts."""

    drugs: int = 60
    conditions: int = 30
    makers: int = 8
    genes: int = 30
    people: int = 40
    cities: int = 16
    countries: int = 6


@dataclass
class World:
    seed: int
    entities: dict[str, list[str]]
    facts: list[Fact]

    def of(self, world: str) -> list[Fact]:
        return [f for f in self.facts if RELATIONS[f.relation].world == world]


def _names(rng: random.Random, count: int, taken: set[str], *, suffixes: Sequence[str] = ("",),
           syllables: int = 2) -> list[str]:  # fmt: skip
    """`count` new made-up single words (never one already in `taken`)."""
    out: list[str] = []
    while len(out) < count:
        word = "".join(
            rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)
        )
        word += rng.choice(suffixes)
        if word not in taken and len(word) <= 12:
            taken.add(word)
            out.append(word)
    return out


def build_world(seed: int = 0, size: WorldSize = WorldSize()) -> World:
    """The entities and facts for `seed` (the same seed gives the same world)."""
    rng = random.Random(seed)
    taken: set[str] = set()
    drugs = _names(rng, size.drugs, taken, suffixes=DRUG_SUFFIXES, syllables=1)
    roots = _names(rng, size.conditions, taken)
    conditions = [f"{root} {rng.choice(CONDITION_KINDS)}" for root in roots]
    makers = [f"{n} {rng.choice(MAKER_KINDS)}" for n in _names(rng, size.makers, taken)]
    genes = [f"{n[:3]}{rng.randint(1, 9)}" for n in _names(rng, size.genes, taken, syllables=1)]
    genes = list(dict.fromkeys(genes))  # a 3-letter stem + digit may repeat: keep first
    people = _names(rng, size.people, taken)
    cities = _names(rng, size.cities, taken, suffixes=("ton", "ville", "burg", "port"), syllables=1)
    countries = _names(rng, size.countries, taken, suffixes=("ia", "land", "stan"), syllables=1)
    languages = [c.removesuffix("ia").removesuffix("land").removesuffix("stan") + "ish"
                 for c in countries]  # fmt: skip

    facts: list[Fact] = []
    for i, drug in enumerate(drugs):  # every condition gets at least one drug
        condition = (
            conditions[i % len(conditions)] if i < len(conditions) else rng.choice(conditions)
        )
        facts.append(Fact("treats", drug, condition))
        facts.append(Fact("made_by", drug, rng.choice(makers)))
    for condition in conditions:
        facts.append(Fact("causes", condition, rng.choice(SYMPTOMS)))
        facts.append(Fact("affects", condition, rng.choice(ORGANS)))
        facts.append(Fact("gene", condition, rng.choice(genes)))
    for person in people:
        facts.append(Fact("lives_in", person, rng.choice(cities)))
        facts.append(Fact("works_as", person, rng.choice(JOBS)))
        facts.append(Fact("color", person, rng.choice(COLORS)))
        facts.append(Fact("pet", person, rng.choice(PETS)))
        facts.append(Fact("plays", person, rng.choice(INSTRUMENTS)))
        facts.append(Fact("food", person, rng.choice(FOODS)))
    for i, city in enumerate(cities):
        facts.append(Fact("in_country", city, countries[i % len(countries)]))
        facts.append(Fact("known_for", city, rng.choice(LANDMARKS)))
    for country, language in zip(countries, languages, strict=True):
        facts.append(Fact("speaks", country, language))
    entities = {
        "drug": drugs, "condition": conditions, "maker": makers, "gene": genes,
        "person": people, "city": cities, "country": countries, "language": languages,
    }  # fmt: skip
    return World(seed, entities, facts)


def _say(template: str, fact: Fact) -> str:
    return template.format(s=fact.subject, o=fact.object)


def _documents(rng: random.Random, sentences: list[str], per_doc: tuple[int, int]) -> list[str]:
    """Shuffle sentences into documents of a few sentences each (multi-fact paragraphs)."""
    rng.shuffle(sentences)
    docs, i = [], 0
    while i < len(sentences):
        n = rng.randint(*per_doc)
        docs.append(" ".join(sentences[i : i + n]))
        i += n
    return docs


def _objects_of(world: World, relation: str) -> list[str]:
    return sorted({f.object for f in world.facts if f.relation == relation})


def _distractors(rng: random.Random, world: World, fact: Fact, k: int = 3) -> list[str]:
    """k wrong objects of the same type; never another true object of the same subject."""
    true = {
        f.object for f in world.facts if (f.relation, f.subject) == (fact.relation, fact.subject)
    }
    pool = [o for o in _objects_of(world, fact.relation) if o not in true]
    return rng.sample(pool, k)


def _options(rng: random.Random, world: World, fact: Fact) -> tuple[list[str], int]:
    options = _distractors(rng, world, fact) + [fact.object]
    rng.shuffle(options)
    return options, options.index(fact.object)


def _subjects_unique(world: World, relation: str) -> set[str]:
    """Subjects with exactly one object for `relation` (a question then has one right answer)."""
    seen: dict[str, int] = {}
    for f in world.facts:
        if f.relation == relation:
            seen[f.subject] = seen.get(f.subject, 0) + 1
    return {s for s, n in seen.items() if n == 1}


def write_demo_domain(out_dir: Path, *, seed: int = 0, size: WorldSize = WorldSize()) -> World:
    """Write every training and evaluation file for `seed` under `out_dir`; return the world."""
    out_dir = Path(out_dir)
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    (out_dir / "eval").mkdir(parents=True, exist_ok=True)
    world = build_world(seed, size)
    rng = random.Random(seed + 1)

    domain, general = world.of("domain"), world.of("general")
    domain_sentences = [_say(t, f) for f in domain for t in RELATIONS[f.relation].statements]
    general_sentences = [_say(t, f) for f in general for t in RELATIONS[f.relation].statements]
    _write_jsonl(out_dir / "train/domain.jsonl",
                 ({"text": d} for d in _documents(rng, domain_sentences, (3, 6))))  # fmt: skip
    _write_jsonl(out_dir / "train/general.jsonl",
                 ({"text": d} for d in _documents(rng, general_sentences, (3, 6))))  # fmt: skip
    _write_jsonl(out_dir / "train/chat.jsonl", _chat_conversations(rng, general))

    _write_jsonl(out_dir / "eval/domain_mc.jsonl", _medmcqa_rows(rng, world, domain))
    _write_jsonl(out_dir / "eval/domain_completion.jsonl", _completion_rows(rng, world, domain))
    _write_jsonl(out_dir / "eval/general_mc.jsonl", _studio_mc_rows(rng, world, general))
    _write_jsonl(out_dir / "eval/domain_chat_qa.jsonl", _chat_qa_rows(rng, world, domain))
    _write_jsonl(out_dir / "eval/general_chat_qa.jsonl", _chat_qa_rows(rng, world, general))
    for name, facts in (("domain", domain), ("general", general)):
        held = [_say(rng.choice(RELATIONS[f.relation].heldout_statements), f) for f in facts]
        rng.shuffle(held)
        paragraphs = [" ".join(held[i : i + 5]) for i in range(0, len(held), 5)]
        (out_dir / f"eval/{name}_text.txt").write_text("\n\n".join(paragraphs) + "\n", "utf-8")
    (out_dir / "facts.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "size": asdict(size),
                "entities": world.entities,
                "facts": [asdict(f) for f in world.facts],
            },
            indent=1,
        ),  # fmt: skip
        encoding="utf-8",
    )
    return world


def _chat_conversations(rng: random.Random, facts: Sequence[Fact]) -> Iterable[dict]:
    """One to three question/answer turns about general facts, with an occasional greeting."""
    turns = [
        (_say(q, f), _say(RELATIONS[f.relation].answer, f))
        for f in facts
        for q in RELATIONS[f.relation].questions
    ]
    rng.shuffle(turns)
    i = 0
    while i < len(turns):
        n = rng.randint(1, 3)
        messages = []
        if rng.random() < 0.1:
            user, reply = rng.choice(GREETINGS)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        for user, reply in turns[i : i + n]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        i += n
        yield {"messages": messages}


def _medmcqa_rows(rng: random.Random, world: World, facts: Sequence[Fact]) -> Iterable[dict]:
    for f in facts:
        if f.subject not in _subjects_unique(world, f.relation):
            continue
        options, gold = _options(rng, world, f)
        stem = _say(RELATIONS[f.relation].mc_question, f)
        yield {"question": stem, "opa": options[0], "opb": options[1], "opc": options[2],
               "opd": options[3], "cop": gold}  # fmt: skip


def _completion_rows(rng: random.Random, world: World, facts: Sequence[Fact]) -> Iterable[dict]:
    """A held-out sentence cut before its object; the four endings are same-type objects."""
    for f in facts:
        template = rng.choice(RELATIONS[f.relation].heldout_statements)
        if not template.rstrip(" .").endswith("{o}") or f.subject not in _subjects_unique(
            world, f.relation
        ):
            continue
        ctx = template.format(s=f.subject, o="\0").split("\0")[0].rstrip()
        options, gold = _options(rng, world, f)
        yield {"ctx": ctx, "endings": [f"{o} ." for o in options], "label": gold}


def _studio_mc_rows(rng: random.Random, world: World, facts: Sequence[Fact]) -> Iterable[dict]:
    for f in facts:
        if f.subject not in _subjects_unique(world, f.relation):
            continue
        options, gold = _options(rng, world, f)
        yield {"question": _say(RELATIONS[f.relation].mc_question, f), "options": options,
               "answer": gold}  # fmt: skip


def _chat_qa_rows(rng: random.Random, world: World, facts: Sequence[Fact]) -> Iterable[dict]:
    for f in facts:
        if f.subject not in _subjects_unique(world, f.relation):
            continue
        question = _say(rng.choice(RELATIONS[f.relation].heldout_questions), f)
        yield {"question": question, "answer": f.object}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def overlapping_lines(out_dir: Path) -> list[str]:
    """Evaluation sentences/questions that also occur verbatim in a training file (should be [])."""
    out_dir = Path(out_dir)
    train_text = "\n".join(
        (out_dir / "train" / name).read_text("utf-8") for name in ("general.jsonl", "domain.jsonl")
    )
    chat_text = (out_dir / "train/chat.jsonl").read_text("utf-8")
    probes: list[str] = []
    for name in ("domain_text.txt", "general_text.txt"):
        text = (out_dir / "eval" / name).read_text("utf-8")
        probes += [s.strip() + " ." for s in text.replace("\n", " ").split(" .") if s.strip()]
    for name in ("domain_chat_qa.jsonl", "general_chat_qa.jsonl"):
        for line in (out_dir / "eval" / name).read_text("utf-8").splitlines():
            probes.append(json.loads(line)["question"])
    for line in (out_dir / "eval/domain_completion.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        probes.append(f"{row['ctx']} {row['endings'][row['label']]}")
    return [p for p in probes if p in train_text or json.dumps(p)[1:-1] in chat_text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = write_demo_domain(args.out_dir, seed=args.seed)
    print(f"{len(world.of('domain'))} domain and {len(world.of('general'))} general facts "
          f"written under {args.out_dir}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
