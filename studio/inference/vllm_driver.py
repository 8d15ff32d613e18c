"""One thread that owns a vLLM `LLMEngine`: commands in, each request's outputs out.

vLLM's offline `LLM.generate` runs a batch to completion and cannot stream; its `LLMEngine`
can (`add_request`, then `step()` returns every running request's progress), but it is not
thread-safe. `EngineDriver` gives the studio's threads (chat columns, scoring, the live merge)
one safe door to it:

- the engine is built, stepped and called on the driver's own thread only (the CPU build also
  binds its OpenMP threads to the thread that built it, so stepping elsewhere would run unbound);
- `submit` queues a request and returns a `Submission` whose queue receives
  `(RequestOutput, perf_counter time)` after every step that advanced it; requests from many
  threads share each step (vLLM batches them);
- `abort` cancels a request at the next step, even while an exclusive call waits;
- `call(fn, exclusive=True)` runs `fn(engine)` once no request is in flight, and requests
  submitted after it wait for it: a weight replacement never lands in the middle of a reply;
- `stop` is an exclusive call that shuts the engine down and ends the thread.

    driver = EngineDriver(build_engine, name="chat")
    driver.start()                                      # builds the engine on the driver thread
    sub = driver.submit([1, 2, 3], SamplingParams(max_tokens=8))
    output, at = sub.outputs.get()                      # until output.finished

Tested through the vLLM engine: `bash scripts/test_vllm.sh`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from studio.errors import ModelError

LOG = logging.getLogger(__name__)

T = TypeVar("T")
# What a submission's queue receives: (RequestOutput, when) after each step, or an error.
Delivery: TypeAlias = tuple[Any, float] | BaseException


@dataclass
class Submission:
    """A queued request: its id, and the queue its outputs arrive on."""

    request_id: str
    outputs: queue.Queue[Delivery] = field(default_factory=queue.Queue)


@dataclass
class _Add:
    submission: Submission
    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams


@dataclass
class _Call:
    fn: Callable[[Any], Any]
    future: Future[Any]
    exclusive: bool
    stops: bool = False


class EngineDriver:
    """Builds, steps and calls one `LLMEngine` on a private thread; see the module docstring."""

    def __init__(self, build: Callable[[], Any], *, name: str) -> None:
        self._build = build
        self._name = name
        self._cond = threading.Condition()
        self._commands: deque[_Add | _Call] = deque()  # FIFO; guarded by _cond
        self._aborts: set[str] = set()  # guarded by _cond; handled before any queued command
        self._closed = False  # no more commands accepted; guarded by _cond
        self._active: dict[str, Submission] = {}  # in flight; touched by the driver thread only
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Build the engine on the driver thread; re-raises what the build raised."""
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name=f"vllm-{self._name}", daemon=True
        )
        self._thread.start()
        started.result()

    def submit(self, prompt_ids: Sequence[int], params: Any) -> Submission:
        submission = Submission(request_id=f"{self._name}-{next(self._ids)}")
        self._enqueue(_Add(submission, list(prompt_ids), params))
        return submission

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step (no-op once it finished)."""
        with self._cond:
            if self._closed:
                return
            for command in self._commands:
                if isinstance(command, _Add) and command.submission.request_id == request_id:
                    self._commands.remove(command)  # never started
                    return
            self._aborts.add(request_id)
            self._cond.notify_all()

    def call(self, fn: Callable[[Any], T], *, exclusive: bool = False) -> T:
        """`fn(engine)` on the driver thread, between steps; exclusive: with no request running."""
        future: Future[T] = Future()
        self._enqueue(_Call(fn, future, exclusive))
        return future.result()

    def stop(self, shutdown: Callable[[Any], Any]) -> None:
        """Wait for running requests, run `shutdown(engine)`, end the thread."""
        future: Future[Any] = Future()
        self._enqueue(_Call(shutdown, future, exclusive=True, stops=True))
        try:
            future.result()
        finally:
            if self._thread is not None:
                self._thread.join()

    # -- the driver thread --------------------------------------------------------------------

    def _enqueue(self, command: _Add | _Call) -> None:
        with self._cond:
            if self._closed:
                raise ModelError(
                    f"model '{self._name}' was unloaded (or its vLLM engine stopped); load it again"
                )
            self._commands.append(command)
            self._cond.notify_all()

    def _main(self, started: Future[None]) -> None:
        try:
            engine = self._build()
        except BaseException as error:  # handed to start()'s caller
            with self._cond:
                self._closed = True
            started.set_exception(error)
            return
        started.set_result(None)
        try:
            while self._serve(engine):
                if self._active:
                    self._step(engine)
        except BaseException as error:  # a bug here must not leave callers waiting forever
            LOG.exception("vLLM driver for %s stopped", self._name)
            self._fail_everything(error)
            raise

    def _serve(self, engine: Any) -> bool:
        """Handle aborts and the commands that may run now; False once stopped."""
        with self._cond:
            while not self._aborts and not self._runnable() and not self._active:
                self._cond.wait()
            aborts, self._aborts = self._aborts, set()
            commands: list[_Add | _Call] = []
            while self._runnable():
                command = self._commands.popleft()
                commands.append(command)
                if isinstance(command, _Call) and command.exclusive:
                    break  # it ran with nothing in flight; later requests follow it
        live = [rid for rid in aborts if rid in self._active]
        if live:
            engine.abort_request(live)
            for rid in live:
                del self._active[rid]
        for command in commands:
            if isinstance(command, _Add):
                self._add(engine, command)
            elif not self._run_call(engine, command):
                return False
        return True

    def _runnable(self) -> bool:
        """The next command can run now (an exclusive one waits for requests in flight)."""
        if not self._commands:
            return False
        head = self._commands[0]
        return not (isinstance(head, _Call) and head.exclusive and self._active)

    def _add(self, engine: Any, command: _Add) -> None:
        submission = command.submission
        try:
            engine.add_request(
                submission.request_id, {"prompt_token_ids": command.prompt_ids}, command.params
            )
        except BaseException as error:  # a request vLLM refuses fails alone
            submission.outputs.put(error)
            return
        self._active[submission.request_id] = submission

    def _run_call(self, engine: Any, command: _Call) -> bool:
        try:
            command.future.set_result(command.fn(engine))
        except BaseException as error:
            command.future.set_exception(error)
        if command.stops:
            with self._cond:
                self._closed = True
                pending, self._commands = list(self._commands), deque()
            self._fail(pending, ModelError(f"model '{self._name}' was unloaded; load it again"))
            return False
        return True

    def _step(self, engine: Any) -> None:
        try:
            outputs = engine.step()
        except BaseException as error:  # every request in this step fails with it
            for submission in self._active.values():
                submission.outputs.put(error)
            self._active.clear()
            return
        now = time.perf_counter()
        for output in outputs:
            submission = self._active.get(output.request_id)
            if submission is None:
                continue  # aborted meanwhile
            submission.outputs.put((output, now))
            if output.finished:
                del self._active[output.request_id]

    def _fail_everything(self, error: BaseException) -> None:
        with self._cond:
            self._closed = True
            pending, self._commands = list(self._commands), deque()
        for submission in self._active.values():
            submission.outputs.put(error)
        self._active.clear()
        self._fail(pending, error)

    @staticmethod
    def _fail(commands: Sequence[_Add | _Call], error: BaseException) -> None:
        for command in commands:
            if isinstance(command, _Add):
                command.submission.outputs.put(error)
            elif not command.future.done():
                command.future.set_exception(error)
