"""One-pass native merge kernels (kernels.c), compiled on first use with the system C compiler.

Why: a live merge must follow a slider (issue targets on 2 cores, 135M model: linear <= 0.1 s,
TIES/DARE <= 1 s). Eager torch needs several passes over the weights to reproduce mergekit's
arithmetic bit for bit; the kernels do each step in one pass at about memory speed with the same
roundings: the linear merge, TIES trimming by a magnitude threshold, and the combination of two
task vectors (task arithmetic, TIES, DARE) -- measured in benchmarks/live_merge.py.

The library is built once per source version and CPU (`-march=native`) into
`$XDG_CACHE_HOME/merge-studio/kernels/` (~1 s) and loaded with ctypes, which releases the GIL
during a call. Without a C compiler, or with `STUDIO_NATIVE_KERNELS=0`, every function here
returns False/None and the caller runs its eager torch path: same results, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
_MAX_INPUTS = 16  # kernels.c MAX_INPUTS
# Below this many elements the ctypes call costs more than the eager kernels save.
MIN_NATIVE_ELEMENTS = 4096
COMPILE_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")


def enabled() -> bool:
    return os.environ.get("STUDIO_NATIVE_KERNELS", "1").strip().lower() not in {"0", "false", "no"}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "merge-studio" / "kernels"


def _cpu_signature() -> str:
    """What `-march=native` depends on: a library built for one CPU may not run on another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file and rename it, so a reader never sees half a library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *COMPILE_FLAGS, str(SOURCE), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, disabled, or the build failed; logged once)."""
    if not enabled():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        LOG.info("no C compiler found: live linear merges use the eager torch path")
        return None
    digest = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(COMPILE_FLAGS).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{digest}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        LOG.warning("native merge kernels unavailable (%s): using eager torch", detail)
        return None
    lib.studio_linear.restype = ctypes.c_int
    lib.studio_linear.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_LinearTensor),
        ctypes.c_int64,
        ctypes.c_int,
    ]
    vp, i64, f32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.studio_trim.restype = c_int
    lib.studio_trim.argtypes = [c_int, vp, vp, vp, i64, f32, i64, c_int]
    lib.studio_tie_cutoff.restype = i64
    lib.studio_tie_cutoff.argtypes = [c_int, vp, vp, i64, f32, i64]
    lib.studio_pair_sum.restype = c_int
    lib.studio_pair_sum.argtypes = [c_int, vp, vp, vp, i64, f32, f32, c_int]
    lib.studio_drop.restype = c_int
    lib.studio_drop.argtypes = [c_int, vp, vp, vp, c_int, ctypes.c_int32, vp, i64, c_int]
    lib.studio_combine_pair.restype = c_int
    lib.studio_combine_pair.argtypes = [c_int, vp, vp, vp, vp, i64, f32, f32, f32, f32]
    lib.studio_combine_pair.argtypes += [c_int, c_int, c_int, c_int]
    return lib


def _plain(*tensors: torch.Tensor, min_elements: int = MIN_NATIVE_ELEMENTS) -> torch.dtype | None:
    """The tensors' common dtype if the kernels take them: float32 or bfloat16, one shape,
    contiguous, on the CPU, big enough to be worth a call of their own; else None."""
    first = tensors[0]
    if first.dtype not in _DTYPE_CODES or first.numel() < min_elements:
        return None
    for t in tensors:
        if t.dtype != first.dtype or t.shape != first.shape or not t.is_contiguous():
            return None
        if t.device.type != "cpu":
            return None
    return first.dtype


def _native(*tensors: torch.Tensor) -> tuple[ctypes.CDLL, int] | None:
    """(library, dtype code) when the kernels take `tensors` (see `_plain`), else None."""
    dtype = _plain(*tensors)
    lib = library() if dtype is not None else None
    return None if lib is None or dtype is None else (lib, _DTYPE_CODES[dtype])


def trim(
    out: torch.Tensor, parent: torch.Tensor, base: torch.Tensor, threshold: float, tie_cutoff: int
) -> bool:
    """out = (parent - base) kept where |d| > threshold or |d| == threshold before the flat
    position `tie_cutoff` (fast_methods.ThresholdKeep's mask); False if not done here."""
    found = _native(out, parent, base)
    if found is None:
        return False
    lib, code = found
    status = lib.studio_trim(
        code,
        parent.data_ptr(),
        base.data_ptr(),
        out.data_ptr(),
        out.numel(),
        threshold,
        tie_cutoff,
        torch.get_num_threads(),
    )
    return status == 0


def pair_sum(
    out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, coef_a: float, coef_b: float
) -> bool:
    """out = coef_a * a + coef_b * b in float32 (no fused multiply-add), rounded once to the
    dtype: mergekit's SLERP result; False if not done here."""
    found = _native(out, a, b)
    if found is None:
        return False
    lib, code = found
    status = lib.studio_pair_sum(
        code,
        a.data_ptr(),
        b.data_ptr(),
        out.data_ptr(),
        out.numel(),
        coef_a,
        coef_b,
        torch.get_num_threads(),
    )
    return status == 0


def drop(
    out: torch.Tensor, parent: torch.Tensor, base: torch.Tensor, codes: torch.Tensor, cutoff: int
) -> bool:
    """out = (parent - base) kept where codes < cutoff (fast_methods.CodesKeep's mask, DARE);
    False if not done here."""
    if codes.dtype not in (torch.int16, torch.int32) or not codes.is_contiguous():
        return False
    found = _native(out, parent, base) if codes.numel() == out.numel() else None
    if found is None:
        return False
    lib, code = found
    status = lib.studio_drop(
        code,
        parent.data_ptr(),
        base.data_ptr(),
        codes.data_ptr(),
        int(codes.dtype == torch.int32),
        cutoff,
        out.data_ptr(),
        out.numel(),
        torch.get_num_threads(),
    )
    return status == 0


def tie_cutoff(parent: torch.Tensor, base: torch.Tensor, threshold: float, ties: int) -> int | None:
    """The flat position after the `ties`-th element with |parent - base| == threshold (None if
    not done here)."""
    found = _native(parent, base)
    if found is None:
        return None
    lib, code = found
    return int(
        lib.studio_tie_cutoff(
            code, parent.data_ptr(), base.data_ptr(), base.numel(), threshold, ties
        )
    )


@dataclass(frozen=True)
class PairSettings:
    """How two task vectors combine (fast_methods._combine_pair_chunk's arguments)."""

    w0: float  # the weights as rounded to the tensors' dtype
    w1: float
    pair_sum: float
    lambda_: float
    consensus: bool
    normalize: bool
    both_sum_is_zero: bool


def combine_pair(
    out: torch.Tensor,
    base: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    settings: PairSettings,
) -> bool:
    """base + the combination of two task vectors, into `out`; False if not done here."""
    found = _native(out, base, first, second)
    if found is None:
        return False
    lib, code = found
    status = lib.studio_combine_pair(
        code,
        base.data_ptr(),
        first.data_ptr(),
        second.data_ptr(),
        out.data_ptr(),
        out.numel(),
        settings.w0,
        settings.w1,
        settings.pair_sum,
        settings.lambda_,
        int(settings.consensus),
        int(settings.normalize),
        int(settings.both_sum_is_zero),
        torch.get_num_threads(),
    )
    return status == 0


class _LinearTensor(ctypes.Structure):
    """kernels.c LinearTensor."""

    _fields_ = [
        ("inputs", ctypes.POINTER(ctypes.c_void_p)),
        ("weights", ctypes.POINTER(ctypes.c_float)),
        ("denom", ctypes.c_float),
        ("out", ctypes.c_void_p),
        ("numel", ctypes.c_int64),
    ]


@dataclass(frozen=True)
class LinearJob:
    """One output tensor of a linear merge: `weights` (1, N) and `denominator` are the float32
    values the eager path uses, so both paths see the same numbers."""

    out: torch.Tensor
    tensors: Sequence[torch.Tensor]
    weights: torch.Tensor
    denominator: torch.Tensor

    def handled(self) -> bool:
        """All float32 or all bfloat16, one shape, contiguous CPU tensors (any size: one call
        serves every tensor of the merge, so small ones cost no call of their own)."""
        return self._handled

    @functools.cached_property
    def _handled(self) -> bool:  # checked once per job: the caller asks, then `linear` again
        return (
            len(self.tensors) <= _MAX_INPUTS
            and self.weights.dtype == torch.float32
            and _plain(*self.tensors, self.out, min_elements=1) is not None
        )


def linear(jobs: Sequence[LinearJob], *, normalize: bool) -> bool:
    """mergekit's linear arithmetic for every job in one native call; False if not done here.

    All jobs must be `handled()` and share a dtype and input count; otherwise (or without the
    library) nothing is written and the caller runs eager torch.
    """
    if not jobs:
        return True
    dtype, count = jobs[0].tensors[0].dtype, len(jobs[0].tensors)
    if not all(
        j.handled() and j.tensors[0].dtype == dtype and len(j.tensors) == count for j in jobs
    ):
        return False
    lib = library()
    if lib is None:
        return False
    keep_alive = []
    rows = (_LinearTensor * len(jobs))()
    for row, job in zip(rows, jobs, strict=True):
        pointers = (ctypes.c_void_p * count)(*(t.data_ptr() for t in job.tensors))
        values = (ctypes.c_float * count)(*job.weights.reshape(-1).tolist())
        keep_alive.append((pointers, values))
        row.inputs = ctypes.cast(pointers, ctypes.POINTER(ctypes.c_void_p))
        row.weights = ctypes.cast(values, ctypes.POINTER(ctypes.c_float))
        row.denom = float(job.denominator.reshape(-1)[0])
        row.out = job.out.data_ptr()
        row.numel = job.out.numel()
    status = lib.studio_linear(
        _DTYPE_CODES[dtype], count, int(normalize), rows, len(jobs), torch.get_num_threads()
    )
    return status == 0
