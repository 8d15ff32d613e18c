"""Task vectors of a live merge, sparsified once per density and reused while weights change.

For task arithmetic, TIES and DARE the expensive part is the per-parent task vector
(parent - base) after trimming (TIES) or random dropping (DARE); the weights, lambda and the sign
election are cheap and applied per merge by `fast_methods.combine_into`. `TaskVectorStore` keeps
one sparsified row per (output tensor, parent) and rebuilds a row only when what it depends on
changes (method family, density, rescale, DARE seed and stream position). A weight or lambda move
therefore rebuilds nothing.

DARE's random stream (see fast_methods' docstring) is replayed in mergekit's executor order:

- with a seed and enough memory, once per (seed, set of dropped tensors) into integer codes, so
  any later density is decided without drawing again;
- otherwise inline, in plan order, on every merge that needs a new mask (always without a seed).

Used by studio.merging.live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from studio.merging import fast_methods as fm
from studio.merging.live_plan import PlannedTensor, ResolvedParameters

LOG = logging.getLogger(__name__)

RANDOM_METHODS = frozenset({"dare_ties", "dare_linear"})
CONSENSUS_METHODS = frozenset({"ties", "dare_ties"})


@dataclass
class RowReport:
    """What building the rows of one merge did."""

    rebuilt: int = 0  # sparsified task-vector rows recomputed
    tensors_with_ties: int = 0  # rows whose TIES threshold is tied (see MagnitudeThreshold)
    tied_elements: int = 0


@dataclass(frozen=True)
class RandomStream:
    """How this merge obtains DARE's uniforms, in mergekit's order."""

    generator: torch.Generator | None  # inline replay; None when codes are used or nothing is drawn
    draws: frozenset[tuple[str, int]]  # (tensor, row) pairs that draw, i.e. density < 1
    order: tuple[tuple[str, int, int], ...]  # (tensor, row, numel) in mergekit's draw order
    token: object  # one object per (seed, order): part of every DARE row's key
    seed: int | None


@dataclass
class TaskVectorStore:
    """Sparsified task vectors for one (base, parents) choice."""

    key: tuple[str, tuple[str, ...]]
    can_hold: Callable[[int], bool]  # whether `n` more bytes fit the memory budget
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N, *shape)
    row_keys: dict[tuple[str, int], tuple] = field(default_factory=dict)
    row_ties: dict[tuple[str, int], int] = field(default_factory=dict)
    indices: dict[tuple[str, int], fm.MagnitudeIndex] = field(default_factory=dict)
    codes: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    stream_key: tuple | None = None  # (seed, order) the codes and token belong to
    stream_token: object = None
    before_scales: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        held = sum(t.numel() * t.element_size() for t in self.rows.values())
        return held + sum(c.numel() * c.element_size() for c in self.codes.values())

    # -- DARE stream ---------------------------------------------------------------------------

    def prepare_stream(
        self,
        method: str,
        tensors: Sequence[PlannedTensor],
        params: Sequence[ResolvedParameters],
        *,
        dtype: torch.dtype,
        seed: int | None,
        numels: Mapping[str, int],
    ) -> RandomStream | None:
        """Decide how DARE's uniforms are obtained for this merge (None for other methods).

        `numels` gives each output tensor's element count (what one mask draws).
        """
        if method not in RANDOM_METHODS:
            return None
        order = tuple(
            (tensor.name, row, numels[tensor.name])
            for tensor, values in zip(tensors, params, strict=True)
            for row, model in enumerate(tensor.parents)
            if values.per_input[model]["density"] < 1
        )
        draws = frozenset((name, row) for name, row, _ in order)
        if seed is None:
            generator = torch.Generator()
            generator.seed()
            return RandomStream(generator, draws, order, token=object(), seed=None)
        if (seed, order) != self.stream_key:
            self.stream_key, self.stream_token = (seed, order), object()
            self.codes.clear()  # the codes belong to the old stream positions
        if not self.codes and order:
            work = fm.random_work_dtype(dtype)
            itemsize = 2 if work == torch.bfloat16 else 4
            if self.can_hold(sum(numel for _, _, numel in order) * itemsize):
                generator = torch.Generator().manual_seed(seed)
                for name, row, numel in order:
                    self.codes[(name, row)] = fm.uniform_codes(numel, generator, work)
            else:
                LOG.info("DARE stream replayed per merge: no memory to keep its codes")
        if self.codes or not order:
            return RandomStream(None, draws, order, token=self.stream_token, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        return RandomStream(generator, draws, order, token=self.stream_token, seed=seed)

    # -- rows ----------------------------------------------------------------------------------

    def build(
        self,
        method: str,
        tensor: PlannedTensor,
        *,
        base: torch.Tensor,
        parents: Sequence[torch.Tensor],
        values: ResolvedParameters,
        stream: RandomStream | None,
        exact_ties: bool,
        report: RowReport,
    ) -> torch.Tensor:
        """The (N, *shape) sparsified task vectors of `tensor`, rebuilding only stale rows."""
        models = tensor.parents
        rows = self.rows.get(tensor.name)
        if rows is None or rows.shape[1:] != base.shape or rows.dtype != base.dtype:
            rows = self.rows[tensor.name] = base.new_empty((len(parents), *base.shape))
        for row, (model, parent) in enumerate(zip(models, parents, strict=True)):
            density = values.per_input[model]["density"] if method != "task_arithmetic" else 1.0
            rescale = bool(values.shared.get("rescale", False))
            key = self._row_key(method, density, rescale, exact_ties, stream)
            where = (tensor.name, row)
            draws = stream is not None and where in stream.draws
            if self.row_keys.get(where) == key and (stream is None or stream.seed is not None):
                if draws and stream.generator is not None:
                    fm.skip_stream(base.numel(), stream.generator)
            else:
                self._sparsify_into(
                    rows[row],
                    method,
                    where,
                    parent=parent,
                    base=base,
                    density=density,
                    rescale=rescale,
                    exact_ties=exact_ties,
                    stream=stream,
                )
                self.row_keys[where] = key
                report.rebuilt += 1
            if self.row_ties.get(where):
                report.tensors_with_ties += 1
                report.tied_elements += self.row_ties[where]
        return rows

    @staticmethod
    def _row_key(
        method: str, density: float, rescale: bool, exact_ties: bool, stream: RandomStream | None
    ) -> tuple:
        if density >= 1:
            return ("raw",)
        if method == "ties":
            return ("magnitude", density, rescale, exact_ties)
        assert stream is not None
        return ("random", density, rescale, stream.token)

    def _sparsify_into(
        self,
        out: torch.Tensor,
        method: str,
        where: tuple[str, int],
        *,
        parent: torch.Tensor,
        base: torch.Tensor,
        density: float,
        rescale: bool,
        exact_ties: bool,
        stream: RandomStream | None,
    ) -> None:
        """mergekit's sparsify(parent - base) for one row, written into `out` (base's dtype)."""
        self.row_ties.pop(where, None)
        if density >= 1:
            torch.sub(parent, base, out=out)  # mergekit: `entry.tensor - base`, untouched
            return
        if method == "ties":
            if density <= 0 or out.numel() == 0:
                out.zero_()
                return
            if exact_ties:
                delta = parent - base
                keep = fm.mergekit_keep_mask(delta, density)
                out.copy_(fm.sparsify_with_mask(delta, keep, rescale=rescale, work=delta.dtype))
                return
            index = self.indices.get(where)
            if index is None:
                index = self.indices[where] = fm.MagnitudeIndex(parent - base)
            threshold = index.threshold(parent - base if index.needs_delta else None, density)
            self.row_ties[where] = threshold.ambiguous
            fm.trim_into(
                out,
                parent,
                base,
                threshold,
                rescale=rescale,
                before_scale=self._before_scale(where, parent, base) if rescale else None,
            )
            return
        assert stream is not None
        work = fm.random_work_dtype(base.dtype)
        keep = (
            fm.CodesKeep.create(self.codes[where], density, work) if where in self.codes else None
        )
        if keep is None:
            generator = (
                stream.generator if where not in self.codes else self._replay_to(where, stream)
            )
            assert generator is not None
            keep = fm.StreamKeep(generator, density, work)
        if work == base.dtype:
            before = self._before_scale(where, parent, base) if rescale else None
            fm.drop_into(out, parent, base, keep, rescale=rescale, before_scale=before)
            return
        # float16/float64 models: mergekit masks and rescales in float32, then casts back
        mask = torch.empty(out.numel(), dtype=work)
        for start, stop in fm.chunks(out.numel()):
            mask[start:stop] = keep(None, start, stop)
        out.copy_(fm.sparsify_with_mask(parent - base, mask, rescale=rescale, work=work))

    def _before_scale(
        self, where: tuple[str, int], parent: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """sum |parent - base| over the whole tensor (mergekit's L1 `before_scale`), cached."""
        if where not in self.before_scales:
            self.before_scales[where] = (parent - base).abs().sum()
        return self.before_scales[where]

    def _replay_to(self, where: tuple[str, int], stream: RandomStream) -> torch.Generator:
        """A generator positioned at `where`'s draws, by replaying the seeded stream (rare: codes
        too coarse for a tiny density)."""
        assert stream.seed is not None
        generator = torch.Generator().manual_seed(stream.seed)
        for name, row, size in stream.order:
            if (name, row) == where:
                return generator
            fm.skip_stream(size, generator)
        raise KeyError(where)
