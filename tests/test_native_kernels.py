"""The native one-pass linear kernel equals the eager torch path bit for bit (and so mergekit)."""

from __future__ import annotations

import pytest
import torch

from studio.merging import fast_methods as fm
from studio.merging import native

SPECIAL = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40, 3.0e38, -3.0e38]


def _values(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = (
        torch.randn(n, generator=generator)
        * torch.logspace(-30, 30, n)[torch.randperm(n, generator=generator)]
    )
    special = torch.tensor(SPECIAL).repeat(50)
    special = special[torch.randperm(len(special), generator=generator)][:n]
    values[: len(special)] = special
    return values.to(dtype)


def _eager(
    out: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    normalize: bool,
    monkeypatch,
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(native, "linear", lambda *args, **kwargs: False)
        fm.linear_into(out, tensors, weights, normalize=normalize)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b)
    keep = ~nan_a
    # Signed zeros and every other value: compare the bit patterns, not just ==.
    bits = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
    assert torch.equal(a[keep].view(bits), b[keep].view(bits))


def test_the_kernel_builds_here():
    # CI installs a C compiler (scripts/test.sh); without one the studio falls back to eager
    # torch, which these tests would then not be comparing against anything.
    assert native.library() is not None, "no C compiler: install gcc (see scripts/test.sh)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_native_linear_equals_eager_bit_for_bit(dtype, count, normalize, monkeypatch):
    n = 3 * (1 << 16) + 1237  # several threads, spans that cut blocks, a ragged last block
    tensors = [_values(n, dtype, seed) for seed in range(count)]
    weights = [0.37, 0.63, -0.21][:count]
    fast = torch.empty(n, dtype=dtype)
    slow = torch.empty(n, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        weight = torch.tensor([weights], dtype=torch.float32)
        handled = native.linear(
            [native.LinearJob(fast, tensors, weight, weight.sum(dim=1))], normalize=normalize
        )
    finally:
        torch.set_num_threads(previous)
    assert handled
    _eager(slow, tensors, weights, normalize, monkeypatch)
    _same_bits(fast, slow)


def test_native_linear_declines_what_it_does_not_handle():
    weights = torch.tensor([[0.5, 0.5]])

    def job(out: torch.Tensor, x: torch.Tensor) -> native.LinearJob:
        return native.LinearJob(out, [x, x], weights, weights.sum(dim=1))

    half = torch.ones(10_000, dtype=torch.float16)
    strided = torch.ones(100, 100)[:, ::2]
    for unhandled in (
        job(torch.empty_like(half), half),
        job(torch.empty(100, 50), strided),
    ):
        assert not unhandled.handled()
        assert not native.linear([unhandled], normalize=True)
    ok = torch.ones(10_000)
    mixed = [
        job(torch.empty_like(ok), ok),
        native.LinearJob(torch.empty_like(ok), [ok] * 3, torch.ones(1, 3), torch.ones(1) * 3),
    ]
    assert not native.linear(mixed, normalize=True)  # one call serves one input count


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("STUDIO_NATIVE_KERNELS", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None
        a = torch.ones(10_000)
        weights = torch.tensor([[0.25, 0.75]])
        out = torch.empty_like(a)
        fm.linear_into(out, [a, 3 * a], [0.25, 0.75], normalize=True)  # eager path still merges
        assert torch.equal(out, torch.full_like(a, 2.5))
        assert not native.linear(
            [native.LinearJob(out, [a, a], weights, weights.sum(dim=1))], normalize=True
        )
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_call_over_many_tensors_equals_eager(dtype, monkeypatch):
    # Thread spans cross tensor boundaries: every tensor must still come out whole and exact.
    sizes = [5000, 70_001, 7, 4096, 200_003, 576, 9999]
    weights = [0.8, -0.35]
    weight = torch.tensor([weights], dtype=torch.float32)
    inputs = [[_values(n, dtype, seed + 10 * i) for seed in range(2)] for i, n in enumerate(sizes)]
    fast = [torch.empty(n, dtype=dtype) for n in sizes]
    jobs = [
        native.LinearJob(out, xs, weight, weight.sum(dim=1))
        for out, xs in zip(fast, inputs, strict=True)
    ]
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert native.linear(jobs, normalize=True)
    finally:
        torch.set_num_threads(previous)
    for out, xs in zip(fast, inputs, strict=True):
        slow = torch.empty_like(out)
        _eager(slow, xs, weights, True, monkeypatch)
        _same_bits(out, slow)


def _finite_values(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Like _values without NaN/inf (task vectors of a loadable model): zeros of both signs,
    subnormals, and many repeated magnitudes so TIES thresholds are tied."""
    values = _values(n, dtype, seed)
    values[~torch.isfinite(values)] = -0.0
    values[::7] = values[::7].float().round().to(dtype)  # ties at small integers
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.93])
def test_native_trim_equals_eager(dtype, density, monkeypatch):
    n = 2 * (1 << 16) + 333
    parent, base = _finite_values(n, dtype, 1), _finite_values(n, dtype, 2)
    base[: n // 3] = parent[: n // 3]  # a third of the task vector is exactly zero
    threshold = fm.MagnitudeIndex(parent - base).threshold(parent - base, density)
    fast, slow = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
    fm.trim_into(fast, parent, base, threshold, rescale=False)
    assert native.trim(torch.empty_like(fast), parent, base, threshold.value, 0)  # native ran
    with monkeypatch.context() as patch:
        patch.setattr(native, "trim", lambda *args: False)
        fm.trim_into(slow, parent, base, threshold, rescale=False)
    _same_bits(fast, slow)
    assert int((fast != 0).sum()) <= threshold.k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "weights, lambda_, normalize",
    [
        ((0.3, 0.7), 1.0, True),
        ((0.8, 0.45), 0.7, True),
        ((0.5, -0.5), 1.0, True),
        ((0.0, 1.0), 1.3, False),
    ],
)
@pytest.mark.parametrize("consensus", [True, False])
def test_native_combine_pair_equals_eager(
    dtype, weights, lambda_, normalize, consensus, monkeypatch
):
    n = 2 * (1 << 16) + 4099
    base = _finite_values(n, dtype, 3)
    deltas = torch.stack([_finite_values(n, dtype, 4), _finite_values(n, dtype, 5)])
    deltas[0, : n // 4] = 0.0  # a trimmed stretch
    deltas[1, n // 8 : n // 2] = -0.0
    arguments = dict(weights=weights, consensus=consensus, normalize=normalize, lambda_=lambda_)
    fast, slow = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
    fm.combine_into(fast, base, deltas, **arguments)
    assert native.combine_pair(
        torch.empty_like(fast),
        base,
        deltas[0],
        deltas[1],
        _settings(dtype, weights, lambda_, normalize, consensus),
    )
    with monkeypatch.context() as patch:
        patch.setattr(native, "combine_pair", lambda *args: False)
        fm.combine_into(slow, base, deltas, **arguments)
    _same_bits(fast, slow)


def _settings(dtype, weights, lambda_, normalize, consensus) -> native.PairSettings:
    w = torch.tensor(weights, dtype=dtype)
    return native.PairSettings(
        w0=float(w[0]),
        w1=float(w[1]),
        pair_sum=float(w.sum()) or 1.0,
        lambda_=lambda_,
        consensus=consensus,
        normalize=normalize,
        both_sum_is_zero=float(w.sum()) == 0,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density", [0.25, 0.9])
@pytest.mark.parametrize("rescale", [True, False])
def test_native_drop_equals_eager(dtype, density, rescale):
    n = 2 * (1 << 16) + 77
    parent, base = _finite_values(n, dtype, 6), _finite_values(n, dtype, 7)
    work = fm.random_work_dtype(dtype)
    codes = fm.uniform_codes(n, torch.Generator().manual_seed(0), work)
    keep = fm.CodesKeep.create(codes, density, work)
    assert keep is not None
    fast, slow = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
    assert native.drop(fast, parent, base, codes, keep.cutoff)  # the native kernel runs here
    kept = float((fast != 0).float().mean())
    nonzero = float(((parent - base) != 0).float().mean())
    assert abs(kept - density * nonzero) < 0.02  # the mask really drops about 1 - density
    fm.drop_into(fast, parent, base, keep, rescale=rescale)
    fm.sparsify_into(slow, parent, base, keep=keep, rescale=rescale)
    _same_bits(fast, slow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [0.0, 0.37, 0.8])
@pytest.mark.parametrize("collinear", [True, False])
def test_native_slerp_equals_eager(dtype, t, collinear, monkeypatch):
    n = 2 * (1 << 16) + 99
    v0 = _finite_values(n, dtype, 8).float().clamp(-1e3, 1e3).to(dtype)
    v1 = (v0.float() * 1.001).to(dtype) if collinear else _finite_values(n, dtype, 9)
    v1 = v1.float().clamp(-1e3, 1e3).to(dtype)
    dot = fm.slerp_dot(v0, v1)
    assert dot is not None and (abs(float(dot)) > fm.SLERP_DOT_THRESHOLD) == collinear
    fast, slow = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
    assert native.pair_sum(fast, v0, v1, 0.5, 0.5)  # the native kernel runs here
    fm.slerp_into(fast, v0, v1, t=t, dot=dot)
    with monkeypatch.context() as patch:
        patch.setattr(native, "pair_sum", lambda *args: False)
        fm.slerp_into(slow, v0, v1, t=t, dot=dot)
    _same_bits(fast, slow)


@pytest.mark.parametrize("offset", [0, 1, 3, 31])
def test_linear_writes_exactly_into_unaligned_parameters(offset, monkeypatch):
    # Model parameters are seldom 64-byte aligned; the streamed stores must still land exactly
    # in [0, n) of the destination and nowhere else.
    n = 3 * 2048 + 5 + (1 << 16)
    inputs = [_values(n, torch.bfloat16, seed) for seed in (11, 12)]
    backing = torch.full((n + 64,), 7.0, dtype=torch.bfloat16)
    fast = backing[offset : offset + n]
    weight = torch.tensor([[0.25, 0.75]])
    assert native.linear(
        [native.LinearJob(fast, inputs, weight, weight.sum(dim=1))], normalize=True
    )
    slow = torch.empty(n, dtype=torch.bfloat16)
    _eager(slow, inputs, [0.25, 0.75], True, monkeypatch)
    _same_bits(fast, slow)
    assert bool((backing[:offset] == 7).all()) and bool((backing[offset + n :] == 7).all())
