"""Fast in-memory merge kernels that reproduce mergekit 0.1.5's arithmetic for one output tensor.

mergekit's graph executes every output tensor as a batch of one (`ExecuteMergeMethodTask` ->
`method._execute_resolved((group,), ...)`), so each function here follows that layout: the same
dtype promotions, float32 work dtype, chunking of reductions and rounding steps. What differs:

- the parameter-independent parts are split out so a live merger computes them once and reuses
  them while a user drags a slider (SLERP's dot, TIES thresholds, sparsified task vectors, DARE's
  random stream);
- element-wise work runs in cache-sized chunks written straight into the destination (a model's
  parameter), and uses arithmetic on 0/1 masks instead of boolean tensors, which torch's CPU
  kernels handle far more slowly. Element-wise results do not depend on chunking, and every
  substitution below gives the same values (at most the sign of an exact zero differs).

Methods (paper behind each): linear (Wortsman et al. 2022, https://arxiv.org/abs/2203.05482),
SLERP, task arithmetic (Ilharco et al. 2022, https://arxiv.org/abs/2212.04089), TIES (Yadav et
al. 2023, https://arxiv.org/abs/2306.01708), DARE (Yu et al. 2023, https://arxiv.org/abs/2311.03099).

Where exactness stops:

- Magnitude trimming keeps exactly k = max(1, int(density * n)) elements per tensor, as mergekit
  does. mergekit picks them with an unstable argsort, so when elements tie at the k-th largest
  magnitude the sort decides which tied ones survive; here the lowest flat indices do. Every
  difference from mergekit is confined to those tied elements, and `MagnitudeThreshold.ambiguous`
  counts them (bf16 task vectors tie often: 8 bits of mantissa). `mergekit_keep_mask` is
  mergekit's own argsort (slow, equal), used with `LiveMerger.merge(..., exact_ties=True)`.
- The threshold: for 16-bit floats an exact 32768-bin histogram of the magnitude bit patterns
  (built once per task vector; then any density is a search in it); for 32/64-bit floats
  `torch.kthvalue`, linear time instead of mergekit's full argsort.
- DARE: `run_merge(..., MergeOptions(random_seed=s))` seeds torch once and draws one
  `torch.bernoulli` mask per (tensor, non-base model) in its executor's order. On CPU that kernel
  draws one float32 uniform u per element and keeps it when u < p, which is the stream
  `torch.rand` yields on the same generator, chunk by chunk. The live merger replays that stream
  on a private `torch.Generator` in mergekit's order, so the masks are identical for the same seed
  (tests/test_live_merge.py asserts it against run_merge). It can keep the stream as integer codes
  (`uniform_codes`) so a density change needs no new draws. With no seed the masks are random on
  every merge, as in mergekit.

Used by studio.merging.live; the proofs run with `python -m pytest tests/test_live_merge.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from studio.merging import native

LOG = logging.getLogger(__name__)

FAST_METHODS = frozenset({"linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"})

# Element-wise work is done this many elements at a time, so temporaries stay in the L2 cache
# and no big tensor is allocated (and page-faulted in) per operation.
CHUNK_ELEMENTS = 1 << 17
# mergekit.merge_methods.slerp._CHUNK_ELEMENTS: its reductions are summed per chunk of this
# many elements, so the same chunking gives bit-identical norms and dots.
SLERP_CHUNK_ELEMENTS = 1024 * 1024
# mergekit.merge_methods.slerp.slerp defaults.
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8
# mergekit.sparsify.rescaled_masked_tensor: no L1 rescale when either norm is below this.
RESCALE_EPS = 1e-7
# generalized_task_arithmetic: without sign consensus, |sum of weights| below this is taken as 1.
WEIGHT_SUM_EPS = 1e-8

_HALF_DTYPES = (torch.bfloat16, torch.float16)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """mergekit's float work dtype for batched kernels: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunks(numel: int, size: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering range(numel)."""
    for start in range(0, numel, size):
        yield start, min(numel, start + size)


def store(dest: torch.Tensor, value: torch.Tensor, via: Sequence[torch.dtype]) -> None:
    """Write `value` into `dest`, rounding through each dtype of `via` as mergekit's casts do."""
    for dtype in via[:-1]:
        value = value.to(dtype)
    if via and via[-1] != dest.dtype:
        value = value.to(via[-1])
    dest.copy_(value)


# -- linear ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearTarget:
    """One output tensor of a linear merge: its inputs in mergekit's model order (promoted to
    one dtype), their weights, and the dtypes the result is rounded through after the inputs'."""

    out: torch.Tensor
    tensors: Sequence[torch.Tensor]
    weights: Sequence[float]
    via: Sequence[torch.dtype] = ()


def linear_into(
    out: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    normalize: bool,
    via: Sequence[torch.dtype] = (),
) -> None:
    """Weighted average as mergekit.merge_methods.linear.linear_merge computes it, into `out`."""
    linear_many_into([LinearTarget(out, tensors, weights, tuple(via))], normalize=normalize)


def linear_many_into(targets: Sequence[LinearTarget], *, normalize: bool) -> None:
    """Every tensor of a linear merge: one native pass over those the kernel handles (see
    native.py), eager torch for the rest; the results are the same either way."""
    jobs: list[native.LinearJob] = []
    eager: list[LinearTarget] = []
    # (1, N) weights and their sum, made once per distinct weights (usually one for the model).
    weight_rows: dict[tuple[torch.dtype, tuple[float, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
    for target in targets:
        first = target.tensors[0]
        key = (work_dtype(first.dtype), tuple(target.weights))
        if key not in weight_rows:
            weight = torch.tensor([key[1]], dtype=key[0])
            weight_rows[key] = weight, weight.sum(dim=1)
        job = native.LinearJob(target.out, target.tensors, *weight_rows[key])
        fits = (
            tuple(target.via) in {(), (first.dtype,)}
            and job.handled()
            and (not jobs or (first.dtype, len(target.tensors)) == _linear_kind(jobs[0]))
        )
        (jobs if fits else eager).append(job if fits else target)
    if not native.linear(jobs, normalize=normalize):
        eager = list(targets)
    for target in eager:
        _linear_eager(target, normalize=normalize)


def _linear_kind(job: native.LinearJob) -> tuple[torch.dtype, int]:
    return job.tensors[0].dtype, len(job.tensors)


def _linear_eager(target: LinearTarget, *, normalize: bool) -> None:
    """Per element: start from +0 in float32, add input * weight (one addcmul_ per input, in
    order), divide by the float32 sum of the weights, round to the inputs' dtype (then through
    `via`) -- mergekit's arithmetic, in L2-sized chunks."""
    tensors, first = target.tensors, target.tensors[0]
    dtype = work_dtype(first.dtype)
    weight = torch.tensor([list(target.weights)], dtype=dtype)  # (1, N): one group, N inputs
    coefficients = [c.reshape(1, 1) for c in weight.unbind(1)]
    denominator = weight.sum(dim=1).reshape(1, 1)
    flats = [t.reshape(1, -1) for t in tensors]  # (1, n)
    dest = target.out.reshape(1, -1)
    scratch = torch.empty((1, min(CHUNK_ELEMENTS, first.numel())), dtype=dtype)
    for start, stop in chunks(first.numel()):
        acc = scratch[:, : stop - start].zero_()
        for flat, coefficient in zip(flats, coefficients, strict=True):
            acc.addcmul_(flat[:, start:stop], coefficient)  # float32 += x * w
        if normalize:
            acc.div_(denominator)
        store(dest[:, start:stop], acc, (first.dtype, *target.via))


# -- slerp -----------------------------------------------------------------------------------


def slerp_dot(v0: torch.Tensor, v1: torch.Tensor, *, eps: float = SLERP_EPS) -> torch.Tensor | None:
    """The clamped cosine between the flattened tensors, reduced in mergekit's chunks. (1, 1).

    This is the only part of SLERP that reads both tensors twice and it does not depend on t, so
    a live merger computes it once per tensor. None for empty tensors (SLERP is then linear).
    """
    dtype = work_dtype(v0.dtype)
    a = v0.reshape(1, -1)  # (1, n)
    b = v1.reshape(1, -1)
    if not a.shape[1]:
        return None
    chunk = SLERP_CHUNK_ELEMENTS
    norm_a_parts, norm_b_parts = [], []
    for start in range(0, a.shape[1], chunk):
        x = a[:, start : start + chunk].to(dtype)
        y = b[:, start : start + chunk].to(dtype)
        norm_a_parts.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norm_b_parts.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
    norm_a = torch.linalg.vector_norm(torch.stack(norm_a_parts), dim=0)  # (1, 1)
    norm_b = torch.linalg.vector_norm(torch.stack(norm_b_parts), dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot_parts = []
    for start in range(0, a.shape[1], chunk):
        x = a[:, start : start + chunk].to(dtype) / norm_a
        y = b[:, start : start + chunk].to(dtype) / norm_b
        dot_parts.append((x * y).sum(dim=1, keepdim=True))
    return torch.stack(dot_parts).sum(dim=0).clamp(-1, 1)


def slerp_into(
    out: torch.Tensor,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    t: float,
    dot: torch.Tensor | None,
    via: Sequence[torch.dtype] = (),
    dot_threshold: float = SLERP_DOT_THRESHOLD,
) -> None:
    """Spherical interpolation from v0 (the base) to v1 given `slerp_dot(v0, v1)`, into `out`.

    Near-collinear pairs (|cos| > 0.9995) fall back to linear interpolation, as in mergekit; for
    fine-tunes of one base that is most tensors, which is why SLERP ~ linear there.
    """
    dtype = work_dtype(v0.dtype)
    t_tensor = torch.tensor([t], dtype=dtype).reshape(-1, 1)  # (1, 1)
    a = v0.reshape(1, -1)  # (1, n)
    b = v1.reshape(1, -1)
    dest = out.reshape(1, -1)
    if dot is None:
        store(dest, ((1 - t_tensor) * a + t_tensor * b).to(v0.dtype), via)
        return
    linear_pair = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear_pair, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear_pair, 1 - t_tensor, torch.sin((1 - t_tensor) * theta) / sin_theta)
    coef_b = torch.where(linear_pair, t_tensor, torch.sin(t_tensor * theta) / sin_theta)
    if dtype == torch.float32 and tuple(via) in {(), (v0.dtype,)}:
        if native.pair_sum(out, v0, v1, float(coef_a), float(coef_b)):
            return
    for start, stop in chunks(a.shape[1]):
        x = a[:, start:stop].to(dtype)
        y = b[:, start:stop].to(dtype)
        # mergekit assigns the float32 result into a tensor of v0's dtype: one rounding
        store(dest[:, start:stop], coef_a * x + coef_b * y, (v0.dtype, *via))


# -- magnitude trimming (TIES) -----------------------------------------------------------------


def keep_count(density: float, numel: int) -> int:
    """mergekit.sparsify.magnitude's k: how many elements survive trimming."""
    return max(1, int(density * numel))


@dataclass(frozen=True)
class MagnitudeThreshold:
    """Which elements of one task vector survive magnitude trimming at one density."""

    k: int  # elements kept
    value: float  # magnitude of the k-th largest element
    greater: int  # elements strictly above `value` (all kept)
    equal: int  # elements equal to `value`; the first k - greater of them (flat order) are kept

    @property
    def straddles(self) -> bool:
        """Whether only some of the tied elements are kept."""
        return self.greater + self.equal > self.k

    @property
    def ambiguous(self) -> int:
        """Tied elements among which the sort, not the magnitude, decides (0 if none)."""
        return self.equal if self.straddles else 0


def _magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """What mergekit ranks, flattened: |delta| compared in float32 (float64 is rounded first).

    For 16- and 32-bit floats the conversion to float32 is exact and order-preserving, so we rank
    the values in their own dtype and save the copy.
    """
    flat = delta.abs().reshape(-1)
    return flat.float() if delta.dtype == torch.float64 else flat


class MagnitudeIndex:
    """Thresholds of one task vector for any density, computed once and reused per slider move.

    16-bit floats: non-negative floats order like their bit patterns, so a 32768-bin histogram of
    the magnitude bits gives the exact k-th largest value and its tie count in one pass; only the
    occupied bins are kept. Other dtypes: torch.kthvalue per density.
    """

    def __init__(self, delta: torch.Tensor) -> None:
        self.numel = delta.numel()
        self._dtype = delta.dtype
        self._bins: torch.Tensor | None = None  # occupied bins, largest magnitude first
        self._counts: torch.Tensor | None = None
        self._cumulative: torch.Tensor | None = None  # elements at or above each bin
        if delta.dtype in _HALF_DTYPES and self.numel:
            bits = delta.reshape(-1).view(torch.int16) & 0x7FFF  # (n,) magnitude bit patterns
            histogram = torch.bincount(bits.to(torch.int32), minlength=1 << 15)  # (32768,)
            self._bins = histogram.nonzero().squeeze(1).flip(0)
            self._counts = histogram[self._bins]
            self._cumulative = self._counts.cumsum(0)

    @property
    def needs_delta(self) -> bool:
        """Whether `threshold` reads the task vector (kthvalue) or only the histogram."""
        return self._bins is None

    def threshold(self, delta: torch.Tensor | None, density: float) -> MagnitudeThreshold:
        """The threshold keeping k = max(1, int(density * n)) elements (0 < density < 1)."""
        k = keep_count(density, self.numel)
        if self._bins is not None:
            position = int(torch.searchsorted(self._cumulative, k))
            bits = int(self._bins[position])
            equal = int(self._counts[position])
            greater = int(self._cumulative[position]) - equal
            value = float(torch.tensor([bits], dtype=torch.int16).view(self._dtype)[0])
        else:
            assert delta is not None, "kthvalue thresholds need the task vector"
            magnitudes = _magnitudes(delta)
            value = float(torch.kthvalue(magnitudes, self.numel - k + 1).values)
            greater = int((magnitudes > value).sum())
            equal = int((magnitudes == value).sum())
        return MagnitudeThreshold(k=k, value=value, greater=greater, equal=equal)


class ThresholdKeep:
    """Chunk-by-chunk 0/1 keep mask for one threshold, in flat order (ties: lowest index first).

    Built with arithmetic: sign(|d| - thr) is exact for floats of one dtype (zero only when
    equal), and cheaper on CPU than comparisons producing boolean tensors.
    """

    def __init__(self, threshold: MagnitudeThreshold) -> None:
        self.threshold = threshold
        self.ties_left = threshold.k - threshold.greater if threshold.straddles else None

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        """Mask of the next chunk of the (flat) task vector, in delta's dtype."""
        magnitudes = delta.abs() if delta.dtype != torch.float64 else delta.abs().float()
        step = magnitudes.sub_(self.threshold.value).sign_()  # -1 below, 0 at, +1 above
        if self.ties_left is None:
            keep = step.add_(1).clamp_(max=1)  # at or above
        else:
            tied = (step == 0).nonzero().squeeze(1)[: self.ties_left] if self.ties_left else None
            keep = step.clamp_(min=0)  # strictly above, then the first tied elements
            if tied is not None and tied.numel():
                keep[tied] = 1
                self.ties_left -= tied.numel()
        return keep.to(delta.dtype)


def magnitude_keep_mask(delta: torch.Tensor, threshold: MagnitudeThreshold) -> torch.Tensor:
    """0/1 mask in delta's dtype keeping the k largest magnitudes (mergekit's `mask`)."""
    return ThresholdKeep(threshold)(delta.reshape(-1)).reshape(delta.shape)


def mergekit_keep_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit.sparsify.magnitude's own mask (its argsort decides ties): slow, the reference."""
    k = keep_count(density, delta.numel())
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    magnitudes = delta.abs().reshape(-1).float()
    mask[torch.argsort(magnitudes, descending=True)[:k]] = 1
    return mask.reshape(delta.shape)


# -- random dropping (DARE) --------------------------------------------------------------------


def random_work_dtype(dtype: torch.dtype) -> torch.dtype:
    """mergekit.sparsify.bernoulli on CPU: bfloat16 stays, every other dtype works in float32."""
    return dtype if dtype == torch.bfloat16 else torch.float32


def _probability(density: float, work: torch.dtype) -> float:
    """The keep probability torch.bernoulli compares against: density rounded to the work dtype."""
    return float(torch.tensor(density, dtype=work))


def uniform_codes(numel: int, generator: torch.Generator, work: torch.dtype) -> torch.Tensor:
    """The next `numel` uniforms of the stream as integers, enough to decide u < p exactly.

    torch.rand's float32 uniforms are u = m / 2**24 with m a 24-bit integer. With a bfloat16
    work dtype p has 8 significant bits, so m >> 8 decides u < p (for p >= 2**-9): int16 codes
    (offset by 2**15). With a float32 work dtype the full m is kept: int32 codes.
    """
    half = work == torch.bfloat16
    codes = torch.empty(numel, dtype=torch.int16 if half else torch.int32)
    for start, stop in chunks(numel, 1 << 20):
        u = torch.rand(stop - start, generator=generator, dtype=torch.float32)
        if half:
            codes[start:stop] = (u * 65536).to(torch.int32) - 32768
        else:
            codes[start:stop] = (u * 16777216).to(torch.int32)
    return codes


class CodesKeep:
    """Chunk-by-chunk 0/1 keep mask u < p from `uniform_codes` (no new draws)."""

    def __init__(self, codes: torch.Tensor, cutoff: int, work: torch.dtype) -> None:
        self.codes, self.cutoff, self.work = codes, cutoff, work

    @classmethod
    def create(cls, codes: torch.Tensor, density: float, work: torch.dtype) -> CodesKeep | None:
        """None when the codes cannot decide u < p (int16 codes and p below 2**-9)."""
        cutoff = math.ceil(_probability(density, work) * 2**24)  # u < p  <=>  m < cutoff
        if codes.dtype == torch.int16:
            if cutoff % 256:
                return None  # the dropped low 8 bits would matter
            cutoff = cutoff // 256 - 32768
        return cls(codes, cutoff, work)

    def __call__(self, delta: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # integers are exact in float32: cutoff - code >= 1 exactly when code < cutoff
        return (self.cutoff - self.codes[start:stop].float()).clamp_(0, 1).to(self.work)


class StreamKeep:
    """Chunk-by-chunk 0/1 keep mask drawn from the stream as torch.bernoulli would (in order)."""

    def __init__(self, generator: torch.Generator, density: float, work: torch.dtype) -> None:
        self.generator, self.p, self.work = generator, _probability(density, work), work

    def __call__(self, delta: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        u = torch.rand(stop - start, generator=self.generator, dtype=torch.float32)
        return torch.rsub(u, self.p).sign_().clamp_(min=0).to(self.work)  # 1 exactly when u < p


def skip_stream(numel: int, generator: torch.Generator) -> None:
    """Advance the stream past `numel` draws (a tensor whose mask is already known)."""
    for start, stop in chunks(numel, 1 << 20):
        torch.rand(stop - start, generator=generator, dtype=torch.float32)


# -- sparsified task vectors -----------------------------------------------------------------


def sparsify_with_mask(
    delta: torch.Tensor, keep: torch.Tensor, *, rescale: bool, work: torch.dtype
) -> torch.Tensor:
    """mergekit's `rescaled_masked_tensor(tensor.to(work), mask, l1 or None).to(dtype)`.

    `keep` is the 0/1 mask (work dtype); the L1 rescale multiplies the kept entries by
    sum|delta| / sum|kept|, both summed over the whole tensor as mergekit does.
    """
    tensor = delta.to(work)
    masked = tensor * keep.reshape(delta.shape)
    if rescale:
        before_scale = tensor.abs().sum()
        after_scale = masked.abs().sum()
        if not (before_scale < RESCALE_EPS or after_scale < RESCALE_EPS):
            masked = masked * (before_scale / after_scale)
    return masked.to(delta.dtype)


def sparsify_into(
    out: torch.Tensor,
    parent: torch.Tensor,
    base: torch.Tensor,
    *,
    keep: Callable[[torch.Tensor | None, int, int], torch.Tensor],
    rescale: bool,
    before_scale: torch.Tensor | None = None,
) -> None:
    """`sparsify_with_mask(parent - base, mask)` written chunk by chunk into `out` (one dtype).

    `keep(delta_chunk, start, stop)` gives the 0/1 mask of each chunk in order. The L1 rescale
    needs sums over the whole tensor in mergekit's order, so it runs after the chunks, on `out`
    (`before_scale`: the cached sum |parent - base|).
    """
    flat_out = out.reshape(-1)
    flat_parent = parent.reshape(-1)
    flat_base = base.reshape(-1)
    for start, stop in chunks(flat_out.numel()):
        delta = flat_parent[start:stop] - flat_base[start:stop]  # mergekit: entry.tensor - base
        torch.mul(delta, keep(delta, start, stop), out=flat_out[start:stop])
    if rescale:
        _l1_rescale(out, parent, base, before_scale)


def _l1_rescale(
    out: torch.Tensor, parent: torch.Tensor, base: torch.Tensor, before_scale: torch.Tensor | None
) -> None:
    """mergekit's L1 rescale of a sparsified task vector, sums over the whole tensor."""
    if before_scale is None:
        before_scale = (parent - base).abs().sum()
    after_scale = out.abs().sum()
    if not (before_scale < RESCALE_EPS or after_scale < RESCALE_EPS):
        out.mul_(before_scale / after_scale)


def drop_into(
    out: torch.Tensor,
    parent: torch.Tensor,
    base: torch.Tensor,
    keep: Callable[[torch.Tensor | None, int, int], torch.Tensor],
    *,
    rescale: bool,
    before_scale: torch.Tensor | None = None,
) -> None:
    """`sparsify_into` with a DARE mask: in one native pass when the mask comes from stored
    codes (`CodesKeep`) and the kernels take the tensors, else chunk by chunk."""
    if isinstance(keep, CodesKeep) and native.drop(out, parent, base, keep.codes, keep.cutoff):
        if rescale:
            _l1_rescale(out, parent, base, before_scale)
        return
    sparsify_into(out, parent, base, keep=keep, rescale=rescale, before_scale=before_scale)


def trim_into(
    out: torch.Tensor,
    parent: torch.Tensor,
    base: torch.Tensor,
    threshold: MagnitudeThreshold,
    *,
    rescale: bool,
    before_scale: torch.Tensor | None = None,
) -> None:
    """`sparsify_into` with a ThresholdKeep mask (TIES trimming): in one native pass when the
    kernels take the tensors (plus a scan for where the kept ties end), else chunk by chunk."""
    ties = threshold.k - threshold.greater if threshold.straddles else None
    cutoff = out.numel() if ties is None else native.tie_cutoff(parent, base, threshold.value, ties)
    if cutoff is not None and native.trim(out, parent, base, threshold.value, cutoff):
        if rescale:
            _l1_rescale(out, parent, base, before_scale)
        return
    by_threshold = ThresholdKeep(threshold)
    sparsify_into(
        out,
        parent,
        base,
        keep=lambda delta, start, stop: by_threshold(delta),
        rescale=rescale,
        before_scale=before_scale,
    )


# -- combining task vectors ----------------------------------------------------------------------


def combine_task_vectors(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float,
    int8_mask: bool = False,
) -> torch.Tensor:
    """GeneralizedTaskArithmeticMerge.merge_group after sparsification, verbatim.

    `deltas` (N, *shape) holds the sparsified task vectors in the base's dtype and is scaled in
    place. With `consensus` the TIES sign election (ConsensusMethod.sum: the sign of the weighted
    sum) masks out disagreeing entries and normalises by the weights that agree.
    """
    weight = torch.tensor(list(weights), dtype=deltas.dtype)  # (N,)
    while deltas.dim() > weight.dim():
        weight.unsqueeze_(-1)  # (N, 1, ..., 1)
    deltas.mul_(weight)
    if consensus:
        mask_dtype = torch.int8 if int8_mask else base.dtype
        sign = deltas.sign().to(mask_dtype)
        majority_sign = (deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1  # (*shape)
        mask = sign == majority_sign  # (N, *shape)
        mixed_delta = (deltas * mask).sum(dim=0)
        divisor = (weight * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed_delta = deltas.sum(dim=0)
        divisor = weight.sum(dim=0)
        divisor[divisor.abs() < WEIGHT_SUM_EPS] = 1
    if normalize:
        mixed_delta /= divisor
    if lambda_ != 1:
        mixed_delta *= lambda_
    return (base + mixed_delta).to(base.dtype)


def _combine_pair_chunk(
    base: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    w: torch.Tensor,
    consensus: bool,
    normalize: bool,
    lambda_: float,
    pair_sum: torch.Tensor,
    both_sum_is_zero: bool,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """combine_task_vectors for two task vectors, one chunk, without boolean tensors.

    - A sum over dim 0 of two rows is one addition with one rounding, so `x + y` equals it.
    - Majority sign: sign(sign(S) + 0.5) is +1 for S >= 0 and -1 below. A row agrees with it
      when relu(sign(row) * majority) is 1, so row * agreement equals `deltas * mask`.
    - Divisor: agree1 * w1 + agree2 * w2 is mergekit's `(weight * mask).sum(0)`. It is 0 only
      where neither row agrees (then the mixed delta is 0 too, and 0/0 -> 0 gives mergekit's
      0/1), unless w1 + w2 rounds to 0, where mergekit's `divisor[divisor == 0] = 1` is applied.
    Writes base + mixed into `out` when given (same dtype), else returns it.
    """
    dw1 = first * w[0]  # (L,) = deltas.mul_(weight) row by row
    dw2 = second * w[1]
    if not consensus:
        mixed = dw1.add_(dw2)
        if normalize:
            mixed.div_(pair_sum)
    else:
        majority = torch.add(dw1, dw2).sign_().add_(0.5).sign_()
        agree1 = dw1.sign().mul_(majority).relu_()
        agree2 = dw2.sign().mul_(majority).relu_()
        mixed = dw1.mul_(agree1).add_(dw2.mul_(agree2))
        if normalize:
            divisor = agree1.mul_(w[0]).add_(agree2.mul_(w[1]))
            if both_sum_is_zero:
                divisor.add_(1 - divisor.sign().abs_())  # divisor[divisor == 0] = 1
                mixed.div_(divisor)
            else:
                mixed.div_(divisor).nan_to_num_(nan=0.0)
    if lambda_ != 1:
        mixed *= lambda_
    if out is not None:
        return torch.add(mixed, base, out=out)
    return mixed.add_(base)


def combine_into(
    out: torch.Tensor,
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Sequence[float],
    consensus: bool,
    normalize: bool,
    lambda_: float,
    int8_mask: bool = False,
    via: Sequence[torch.dtype] = (),
) -> None:
    """`combine_task_vectors` chunk by chunk into `out`; `deltas` (N, *shape) is left unchanged."""
    count = deltas.shape[0]
    flat_base = base.reshape(-1)
    flat_deltas = deltas.reshape(count, -1)  # (N, n)
    dest = out.reshape(-1)
    if count == 2:
        w = torch.tensor(list(weights), dtype=base.dtype)  # (2,) rounded like mergekit's weights
        pair_sum = w.reshape(2, *([1] * base.dim())).sum(dim=0).reshape(-1)  # weight.sum(dim=0)
        both_sum_is_zero = bool(pair_sum == 0)
        pair_sum[pair_sum.abs() < WEIGHT_SUM_EPS] = 1
        direct = not via and out.dtype == base.dtype
        settings = native.PairSettings(
            w0=float(w[0]),
            w1=float(w[1]),
            pair_sum=float(pair_sum[0]),
            lambda_=lambda_,
            consensus=consensus,
            normalize=normalize,
            both_sum_is_zero=both_sum_is_zero,
        )
        if direct and native.combine_pair(out, base, deltas[0], deltas[1], settings):
            return
        for start, stop in chunks(flat_base.numel()):
            merged = _combine_pair_chunk(
                flat_base[start:stop],
                flat_deltas[0, start:stop],
                flat_deltas[1, start:stop],
                w=w,
                consensus=consensus,
                normalize=normalize,
                lambda_=lambda_,
                pair_sum=pair_sum,
                both_sum_is_zero=both_sum_is_zero,
                out=dest[start:stop] if direct else None,
            )
            if not direct:
                store(dest[start:stop], merged, via)
        return
    for start, stop in chunks(flat_base.numel()):
        merged = combine_task_vectors(
            flat_base[start:stop],
            flat_deltas[:, start:stop].clone(),
            weights,
            consensus=consensus,
            normalize=normalize,
            lambda_=lambda_,
            int8_mask=int8_mask,
        )
        store(dest[start:stop], merged, via)
