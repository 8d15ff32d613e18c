"""Can these models be merged? A report made from `ModelInfo`s, before any weight is read.

    report = check_compatibility({"cpt": cpt_info, "chat": chat_info, "base": base_info},
                                 method="ties", tokenizer_source=None)
    report.problems   # sentences, each blocks the merge ("CPT model has 24 layers, ...")
    report.notes      # sentences worth knowing ("tied embeddings in all models")
    report.raise_if_blocked()

Checks, in order: the method's base rule; quantized checkpoints; architecture; layer count;
tensor names and shapes (naming the first tensor that differs); vocabularies, which a
`tokenizer_source` resolves. Roles are free labels; "cpt", "chat" and "base" read best.
Only `ModelInfo` fields are used, plus each model's tokenizer.json (to tell two tokenizers of the
same size apart); no weight is read.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel

from studio.catalog.inspect import ModelInfo, mergekit_architectures, tokenizer_vocab
from studio.errors import CompatibilityError

LOG = logging.getLogger(__name__)

BASE_ROLE = "base"
TOKENIZER_KEYWORDS = ("base", "union")
_ROLE_LABELS = {"cpt": "CPT model", "chat": "chat model", "base": "base model"}
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


class CompatibilityReport(BaseModel, frozen=True):
    """Problems block the merge; notes inform. `ok` means no problems."""

    ok: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    vocab_sizes: dict[str, int]
    tokenizer_choices: tuple[str, ...]

    def raise_if_blocked(self) -> None:
        if self.problems:
            raise CompatibilityError(" ".join(_sentence(p) for p in self.problems))


def check_compatibility(
    models: Mapping[str, ModelInfo],
    *,
    method: str | None = None,
    tokenizer_source: str | None = None,
) -> CompatibilityReport:
    """Check that `models` (role -> info) can be merged with `method` as chosen.

    An unknown `method` raises RecipeError (naming the methods there are); everything else is
    reported, never raised: call `raise_if_blocked()` to stop on problems.
    """
    problems: list[str] = []
    notes: list[str] = []
    roles = list(models)
    if len(roles) < 2:
        problems.append(
            f"a merge needs at least two models; got {len(roles)} ({', '.join(roles) or 'none'})"
        )
    first_is_base = _check_method(models, method, problems, notes)
    _check_formats(models, problems, notes)
    if len(roles) >= 2:
        if _check_architecture(models, problems, notes):
            _check_layers(models, problems)
            _check_tensors(models, problems)
        _check_embeddings(models, notes)
    choices = _check_vocab(
        models,
        tokenizer_source,
        problems,
        notes,
        base_available=first_is_base or BASE_ROLE in models,
    )
    _check_chat_templates(models, notes)
    return CompatibilityReport(
        ok=not problems,
        problems=tuple(problems),
        notes=tuple(notes),
        vocab_sizes={role: info.vocab_size for role, info in models.items()},
        tokenizer_choices=choices,
    )


# --------------------------------------------------------------------------- checks


def _check_method(
    models: Mapping[str, ModelInfo], method: str | None, problems: list[str], notes: list[str]
) -> bool:
    """Check the method's base rule; True if its first model is the base (slerp-like)."""
    if not method:
        return False
    # Imported here: recipes is a sibling package and the catalog must import without it.
    from studio.recipes import get_method

    spec = get_method(method)  # RecipeError naming the choices for an unknown method
    has_base = BASE_ROLE in models
    if spec.base == "required" and not has_base:
        problems.append(
            f"{method} needs a base model (the model the others were fine-tuned from, whose "
            "weights it subtracts to find each model's changes): choose one as 'base'"
        )
    elif spec.base == "forbidden" and has_base:
        notes.append(
            f"{method} takes no separate base model (its first model is the base): the base "
            "model chosen here will not be used"
        )
    elif spec.base == "ignored" and has_base:
        notes.append(f"{method} ignores the base model: only the other models are merged")
    return bool(getattr(spec, "base_is_first_model", spec.base == "forbidden"))


def _check_formats(models: Mapping[str, ModelInfo], problems: list[str], notes: list[str]) -> None:
    for role, info in models.items():
        label = _label(role)
        if info.quantization:
            problems.append(
                f"{label} {info.name} is quantized ({info.quantization}); mergekit merges "
                "full-precision weights only: use the unquantized checkpoint"
            )
        if info.weight_format == "pickle":
            notes.append(
                f"{label} {info.name} has pickle weights (read because STUDIO_ALLOW_PICKLE=1)"
            )
        if info.needs_remote_code:
            notes.append(f"{label} {info.name} runs its own code (STUDIO_TRUST_REMOTE_CODE=1)")


def _check_architecture(
    models: Mapping[str, ModelInfo], problems: list[str], notes: list[str]
) -> bool:
    """True if every model has the same architecture (so tensors are worth comparing)."""
    archs = {role: info.architecture for role, info in models.items()}
    if len(set(archs.values())) > 1:
        listed = ", ".join(f"{_label(r)} is {a}" for r, a in archs.items())
        problems.append(
            f"the models have different architectures ({listed}): they cannot be merged"
        )
        return False
    arch = next(iter(archs.values()))
    if arch not in mergekit_architectures():
        notes.append(
            f"mergekit has no built-in definition for {arch}: it will infer the weight layout "
            "from the checkpoints' tensor names"
        )
    return True


def _check_layers(models: Mapping[str, ModelInfo], problems: list[str]) -> None:
    layers = {role: info.num_layers for role, info in models.items()}
    if len(set(layers.values())) <= 1:
        return
    if len(layers) == 2:
        (a, na), (b, nb) = layers.items()
        text = f"{_label(a)} has {na} layers, {_label(b)} has {nb}"
    else:
        text = (
            "layer counts differ (" + ", ".join(f"{_label(r)} {n}" for r, n in layers.items()) + ")"
        )
    problems.append(f"{text}: models must have the same number of layers to be merged")


def _check_tensors(models: Mapping[str, ModelInfo], problems: list[str]) -> None:
    """Same tensor names and shapes as the reference (the base, else the first model).

    Differences already explained elsewhere are skipped: tensors of layers past the smallest
    layer count (said in layers), a tied model's missing output layer, and vocab-sized rows
    (the vocabulary check explains those with the tokenizer choices).
    """
    ref_role = BASE_ROLE if BASE_ROLE in models else next(iter(models))
    ref = models[ref_role]
    min_layers = min(info.num_layers for info in models.values())
    for role, info in models.items():
        if role == ref_role:
            continue
        for name in sorted(set(ref.tensor_shapes) | set(info.tensor_shapes), key=_natural_key):
            if _beyond_layers(name, min_layers):
                continue
            ref_shape, shape = ref.tensor_shapes.get(name), info.tensor_shapes.get(name)
            if ref_shape is None or shape is None:
                owner, lacking = (ref_role, role) if shape is None else (role, ref_role)
                if _is_output_layer(name) and models[lacking].tied_embeddings:
                    continue
                problems.append(
                    f"tensor {name} is in {_label(owner)} but not in {_label(lacking)}: "
                    "the models do not have the same layout"
                )
                break
            if ref_shape != shape and not _vocab_rows_only(ref_shape, shape, ref, info):
                problems.append(
                    f"tensor {name} has shape {_shape(ref_shape)} in {_label(ref_role)} but "
                    f"{_shape(shape)} in {_label(role)}{_size_hint(ref, info)}"
                )
                break


def _size_hint(ref: ModelInfo, other: ModelInfo) -> str:
    if ref.hidden_size != other.hidden_size:
        return f" (hidden size {ref.hidden_size} vs {other.hidden_size}): they are different model sizes"
    return ": the models are not the same size"


def _check_embeddings(models: Mapping[str, ModelInfo], notes: list[str]) -> None:
    tied = [role for role, info in models.items() if info.tied_embeddings]
    if len(tied) == len(models):
        notes.append("tied embeddings in all models (the output layer is the embedding matrix)")
    elif tied:
        untied = [role for role in models if role not in tied]
        notes.append(
            f"tied embeddings in {_join(_label(r) for r in tied)} but not in "
            f"{_join(_label(r) for r in untied)}: mergekit uses a tied model's embedding matrix "
            "as its output layer"
        )
    dtypes = {role: info.dtype for role, info in models.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{_label(r)} {d}" for r, d in dtypes.items())
        notes.append(f"dtypes differ ({listed}): the merge computes in the recipe's dtype")


def _check_vocab(
    models: Mapping[str, ModelInfo],
    tokenizer_source: str | None,
    problems: list[str],
    notes: list[str],
    *,
    base_available: bool,
) -> tuple[str, ...]:
    """Problems when vocabularies differ and no tokenizer source is chosen; the choices offered."""
    for role, info in models.items():
        notes.extend(_tokenizer_size_notes(role, info))
    all_choices = _tokenizer_choices(models)
    source_role = _resolve_source(models, tokenizer_source)
    if tokenizer_source and source_role is None:
        problems.append(
            f"tokenizer_source '{tokenizer_source}' is not one of the choices: "
            f"{_join(all_choices, 'or')} (or one model's folder)"
        )
    if tokenizer_source == "base" and not base_available:
        problems.append("tokenizer_source 'base' needs a base model: choose one, or another source")
    mismatch = _vocab_mismatch(models)
    if mismatch is None:
        return ()
    if tokenizer_source and source_role is not None:
        notes.append(f"{mismatch}; tokenizer_source '{tokenizer_source}' resolves it")
    elif not tokenizer_source:
        problems.append(f"{mismatch}: choose a tokenizer source: {_join(all_choices, 'or')}")
    return all_choices


def _tokenizer_size_notes(role: str, info: ModelInfo) -> list[str]:
    tokens, rows = info.tokenizer_vocab_size, info.vocab_size
    if tokens is None or tokens == rows:
        return []
    if tokens < rows:
        return [
            f"{_label(role)} has {rows} embedding rows and {tokens} tokenizer tokens (padded "
            "embeddings are common; the extra rows are never used)"
        ]
    return [
        f"{_label(role)} has {tokens} tokenizer tokens but only {rows} embedding rows: token ids "
        f"from {rows} up would fail in that model; a tokenizer_source of 'union' gives the merge "
        "a row for every token"
    ]


def _vocab_mismatch(models: Mapping[str, ModelInfo]) -> str | None:
    """A sentence saying how the vocabularies differ, or None if they are the same."""
    sizes = {role: info.vocab_size for role, info in models.items()}
    if len(set(sizes.values())) > 1:
        if len(sizes) == 2:
            (a, na), (b, nb) = sizes.items()
            return f"{_label(a)} has vocab {na}, {_label(b)} has {nb}"
        return (
            "vocab sizes differ (" + ", ".join(f"{_label(r)} {n}" for r, n in sizes.items()) + ")"
        )
    prints = {role: _tokenizer_fingerprint(info.path) for role, info in models.items()}
    if None not in prints.values() and len(set(prints.values())) > 1:
        return (
            f"the models have the same vocab size ({next(iter(sizes.values()))}) but their "
            "tokenizers map tokens to different ids"
        )
    return None


def _tokenizer_choices(models: Mapping[str, ModelInfo]) -> tuple[str, ...]:
    ordered = ([BASE_ROLE] if BASE_ROLE in models else []) + [r for r in models if r != BASE_ROLE]
    return (*ordered, "union")


def _resolve_source(models: Mapping[str, ModelInfo], source: str | None) -> str | None:
    """The role (or keyword) a tokenizer_source names: a keyword, a role or a model's folder."""
    if not source:
        return None
    if source in models or source in TOKENIZER_KEYWORDS:
        return source
    target = _path_key(source)
    return next((role for role, info in models.items() if _path_key(info.path) == target), None)


def _check_chat_templates(models: Mapping[str, ModelInfo], notes: list[str]) -> None:
    having = [role for role, info in models.items() if info.has_chat_template]
    lacking = [role for role in models if role not in having]
    if not having:
        notes.append(
            "no model has a chat template: set the recipe's chat_template (e.g. chatml) to chat "
            "with the merge"
        )
    elif lacking and len(having) == 1:
        source = _label(having[0])
        notes.append(
            f"{source} has a chat template, {_join(_label(r) for r in lacking)} "
            f"{'has' if len(lacking) == 1 else 'have'} none: the merge will use the "
            f"{source}'s (chat_template: auto)"
        )


# --------------------------------------------------------------------------- helpers


def _label(role: str) -> str:
    return _ROLE_LABELS.get(role, f"model '{role}'")


def _join(items: Iterable[str], word: str = "and") -> str:
    parts = list(items)
    if len(parts) <= 1:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} {word} {parts[-1]}"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _natural_key(name: str) -> list[object]:
    """model.layers.2 before model.layers.10, so 'first differing tensor' reads naturally."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _beyond_layers(name: str, count: int) -> bool:
    match = _LAYER_INDEX.search(name)
    return match is not None and int(match.group(1)) >= count


def _is_output_layer(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith(".lm_head.weight")


def _vocab_rows_only(
    a: tuple[int, ...], b: tuple[int, ...], info_a: ModelInfo, info_b: ModelInfo
) -> bool:
    """Shapes differ only along a vocab-sized first axis (embeddings / output layer)."""
    return (
        len(a) == len(b)
        and a[1:] == b[1:]
        and a[0] == info_a.vocab_size
        and b[0] == info_b.vocab_size
    )


def _path_key(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _tokenizer_fingerprint(path: str) -> str | None:
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    stat = file.stat()
    return _fingerprint(str(file.parent), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, mtime_ns: int, size: int) -> str | None:
    """A hash of token -> id (mtime/size in the key so an edited tokenizer is re-read)."""
    vocab = tokenizer_vocab(Path(folder))
    if vocab is None:
        return None
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items()):
        digest.update(f"{index}\t{token}\n".encode())
    return digest.hexdigest()
