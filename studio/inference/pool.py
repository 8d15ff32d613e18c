"""The model pool: loaded models shared by every tab and session, within a memory budget.

`pool.get(spec)` returns the loaded engine for a model, loading it on first use; the same model
asked for again (another column, tab or user) is the same object. When a new load would exceed
the budget, the least recently used models that nobody is using are unloaded first; a load
that cannot fit even then is refused with the numbers:

    model 'llama-7b' needs about 12.55 GB as float16 but the model memory budget is 8.00 GB; ...

Work that must not lose its model half-way (a streamed reply, a scoring run) holds a lease:

    with pool.lease(spec) as engine:      # never unloaded while the block runs
        for chunk in stream_chat(engine, messages, settings): ...

Thread-safe: concurrent requests for one model load it once (the others wait for that load);
different models load one after another, so two loads never both count on the same free memory.
The budget defaults to $STUDIO_POOL_BUDGET_GB, else the free GPU memory (or 80% of the
available RAM on a CPU machine, leaving room for activations, KV caches and the app).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from studio.errors import StudioError
from studio.inference.engine import (
    EngineName,
    InferenceEngine,
    ModelSpec,
    create_engine,
    format_bytes,
    resolve_engine_name,
)

LOG = logging.getLogger(__name__)

BUDGET_ENV = "STUDIO_POOL_BUDGET_GB"
_RAM_FRACTION = 0.8  # the rest is for activations, KV caches, tokenizers and the app itself

EngineFactory = Callable[[ModelSpec], InferenceEngine]


class PoolMemoryError(StudioError):
    """A model cannot be loaded within the pool's memory budget."""


@dataclass(frozen=True)
class PoolEntry:
    """A model the pool holds, as the UI lists it."""

    spec: ModelSpec
    engine: str
    bytes: int  # measured once loaded; the estimate while loading
    state: Literal["loading", "ready"]
    in_use: int  # leases held now


@dataclass(frozen=True)
class PoolStats:
    loads: int
    unloads: int
    hits: int  # get/lease calls answered by a model already loaded
    used_bytes: int
    budget_bytes: int | None


@dataclass
class _Slot:
    engine: InferenceEngine
    bytes: int
    state: Literal["loading", "ready"] = "loading"
    leases: int = 0
    last_used: int = 0


class ModelPool:
    """Loaded models by spec, least recently used first; see the module docstring."""

    def __init__(
        self,
        budget_bytes: int | None = None,
        *,
        engine: EngineName | None = None,
        factory: EngineFactory | None = None,
    ) -> None:
        """`budget_bytes` None: `default_budget_bytes()`; `factory` None: `create_engine`."""
        self._budget = budget_bytes if budget_bytes is not None else default_budget_bytes()
        self._engine_name = resolve_engine_name(engine)
        self._factory = factory or (lambda spec: create_engine(spec, engine=self._engine_name))
        self._slots: OrderedDict[ModelSpec, _Slot] = OrderedDict()  # least recently used first
        self._cond = threading.Condition()
        self._clock = itertools.count(1)
        self._loads = self._unloads = self._hits = 0

    @property
    def budget_bytes(self) -> int | None:
        return self._budget

    def get(self, spec: ModelSpec) -> InferenceEngine:
        """The loaded engine for `spec` (loading it if needed). Use `lease` for long work."""
        with self.lease(spec) as engine:
            return engine

    @contextmanager
    def lease(self, spec: ModelSpec) -> Iterator[InferenceEngine]:
        """The loaded engine for `spec`, kept loaded until the block exits."""
        slot = self._acquire(spec)
        try:
            yield slot.engine
        finally:
            with self._cond:
                slot.leases -= 1
                self._cond.notify_all()

    def unload(self, spec: ModelSpec) -> bool:
        """Unload `spec` now unless it is loading or leased; True if it was unloaded."""
        with self._cond:
            slot = self._slots.get(spec)
            if slot is None or slot.state != "ready" or slot.leases:
                return False
            del self._slots[spec]
        self._unload(slot)
        return True

    def clear(self) -> None:
        """Unload every model nobody is using."""
        for spec in list(self._slots):
            self.unload(spec)

    def entries(self) -> list[PoolEntry]:
        """What the pool holds, most recently used first."""
        with self._cond:
            return [
                PoolEntry(spec, s.engine.engine_name, s.bytes, s.state, s.leases)
                for spec, s in reversed(self._slots.items())
            ]

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(self._loads, self._unloads, self._hits, self._used(), self._budget)

    # -- internals ----------------------------------------------------------------------------

    def _acquire(self, spec: ModelSpec) -> _Slot:
        with self._cond:
            while (slot := self._slots.get(spec)) is not None and slot.state == "loading":
                self._cond.wait()  # another thread is loading this very model
            if slot is not None:
                self._hits += 1
                return self._touch(spec, slot)
            engine = self._factory(spec)
            need = engine.estimate_memory_bytes()
            victims = self._make_room(spec, need)
            slot = _Slot(engine=engine, bytes=need, leases=1, last_used=next(self._clock))
            self._slots[spec] = slot  # reserves `need` while it loads
        for victim in victims:  # outside the pool lock: an unload waits for its running reply
            self._unload(victim)
        self._load(spec, slot)
        return slot

    def _load(self, spec: ModelSpec, slot: _Slot) -> None:
        try:
            slot.engine.load()
        except BaseException:
            with self._cond:
                del self._slots[spec]
                self._cond.notify_all()
            raise
        with self._cond:
            slot.bytes = slot.engine.memory_bytes()
            slot.state = "ready"
            self._loads += 1
            self._cond.notify_all()
        LOG.info("pool: loaded %s (%s)", spec.name, format_bytes(slot.bytes))

    def _touch(self, spec: ModelSpec, slot: _Slot) -> _Slot:
        slot.leases += 1
        slot.last_used = next(self._clock)
        self._slots.move_to_end(spec)
        return slot

    def _make_room(self, spec: ModelSpec, need: int) -> list[_Slot]:
        """Remove least recently used idle models until `need` fits; refuse if it cannot."""
        if self._budget is None:
            return []
        if need > self._budget:
            raise PoolMemoryError(
                f"model '{spec.name}' needs about {format_bytes(need)} {_dtype_words(spec)} but the "
                f"model memory budget is {format_bytes(self._budget)}; choose dtype bfloat16 or a "
                f"smaller model, or raise {BUDGET_ENV}"
            )
        idle = [s for s, slot in self._slots.items() if slot.state == "ready" and not slot.leases]
        busy = [s for s in self._slots if s not in idle]  # leased, or loading
        busy_bytes = sum(self._slots[s].bytes for s in busy)
        if busy_bytes + need > self._budget:
            names = ", ".join(f"'{s.name}'" for s in busy)
            raise PoolMemoryError(
                f"model '{spec.name}' needs about {format_bytes(need)} but models in use ({names}) "
                f"hold {format_bytes(busy_bytes)} of the {format_bytes(self._budget)} budget; wait for "
                f"their replies to finish or raise {BUDGET_ENV}"
            )
        victims = []
        for victim_spec in idle:  # least recently used first
            if self._used() + need <= self._budget:
                break
            victims.append(self._slots.pop(victim_spec))
            LOG.info("pool: unloading %s to make room for %s", victim_spec.name, spec.name)
        return victims

    def _unload(self, slot: _Slot) -> None:
        slot.engine.unload()
        with self._cond:
            self._unloads += 1

    def _used(self) -> int:
        return sum(slot.bytes for slot in self._slots.values())


def _dtype_words(spec: ModelSpec) -> str:
    return "in its stored dtype" if spec.dtype == "auto" else f"as {spec.dtype}"


def default_budget_bytes() -> int | None:
    """$STUDIO_POOL_BUDGET_GB, else free GPU memory, else 80% of available RAM (None: unknown)."""
    configured = os.environ.get(BUDGET_ENV, "").strip()
    if configured:
        try:
            return int(float(configured) * 1024**3)
        except ValueError as error:
            raise StudioError(
                f"{BUDGET_ENV}={configured!r} is not a number of GB; set it to e.g. 12"
            ) from error
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    available = _available_ram_bytes()
    return None if available is None else int(available * _RAM_FRACTION)


def _available_ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_SHARED: ModelPool | None = None
_SHARED_LOCK = threading.Lock()


def get_pool() -> ModelPool:
    """The process-wide pool every tab and session shares (created on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ModelPool()
        return _SHARED
