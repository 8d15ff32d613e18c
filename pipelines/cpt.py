"""Continual pre-training (CPT): packed, mixed domain + general text, plain PyTorch + accelerate.

    python -m pipelines.cpt pipelines/configs/tiny_cpt.yml                 # this CPU, seconds
    accelerate launch --config_file pipelines/launch/fsdp.yaml \\
        -m pipelines.cpt pipelines/configs/llama2_7b_cpt.yml                # GPUs

One recipe, a fixed lifecycle (torchtune / LitGPT style): setup -> train -> validate -> save
checkpoint. The loop is plain PyTorch; accelerate's `Accelerator` places the model, wraps it
for DDP/FSDP/DeepSpeed as the launch config says, accumulates gradients and saves/loads the
optimizer, scheduler and RNG state. `pipelines.sft` reuses this recipe with chat data.

What a run writes (see studio.training.checkpoints): `<output_dir>/metrics.jsonl` (step, loss,
lr, tokens, tokens/s, realised mixture, eval losses per held-out set), checkpoints
`step-NNNNNNNN/` (safetensors + tokenizer + resume_state.json + trainer_state/), and, when
started by the job runner (`--events FILE`), progress events the Jobs tab shows.
Stop: create `<output_dir>/STOP`; the run finishes its step, saves a checkpoint and exits 0.
Tests: tests/test_cpt.py.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.data import (
    MixtureStream,
    eval_blocks,
    pack_documents,
    read_documents,
    tokenize_documents,
)
from pipelines.lora import save_lora_checkpoint, trainable_parameters, with_lora
from pipelines.schedules import build_scheduler
from studio.errors import StudioError
from studio.jobs.events import EventWriter, report_failure
from studio.training.checkpoints import (
    RUN_CONFIG_FILE,
    RUN_LOG_FILE,
    TRAINER_STATE_DIR,
    ResumeState,
    checkpoint_name,
    clear_stop,
    find_resume_checkpoint,
    list_checkpoints,
    read_resume_state,
    stop_requested,
    write_resume_state,
)
from studio.training.config import (
    CPTConfig,
    SFTConfig,
    TrainConfigError,
    dump_train_config,
    load_train_config,
    registers_checkpoints,
)
from studio.training.jobs import resolve_train_model, runs_dir
from studio.training.runlog import (
    CheckpointRecord,
    DataRecord,
    EndRecord,
    EvalRecord,
    RunLogWriter,
    SourceStats,
    StartRecord,
    StepRecord,
)

LOG = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainData:
    """What the loop needs from the data side, whatever the pipeline."""

    stream: MixtureStream
    collate: Callable[[list[tuple[str, int]]], Batch]  # picks -> input_ids/labels/attention_mask
    eval_sets: dict[str, list[Batch]]  # held-out set name -> batches
    record: DataRecord
    tokens_of: Callable[[str, int], int]  # (source, index) -> tokens in that item


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    tokens: int
    grad_norm: float | None


class CPTRecipe:
    """setup() -> train() (validate() and save_checkpoint() every N steps) -> final save."""

    kind = "cpt"

    def __init__(self, config: CPTConfig | SFTConfig, *, events: EventWriter | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        # A run under STUDIO_HOME/runs is listed by the catalog itself (source "train").
        self.register = registers_checkpoints(config, runs_dir())
        self.step = 0
        self.tokens = 0
        self.last_saved: Path | None = None
        self.resumed_from: Path | None = None
        self.events = events  # the job runner's events (main process only, see setup)
        self.log: RunLogWriter | None = None

    # ------------------------------------------------------------------ 1) setup

    def setup(self) -> None:
        config = self.config
        set_seed(config.seed)
        self.accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum)
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clear_stop(self.run_dir)  # a stale request must not end the new run at step 1
            (self.run_dir / RUN_CONFIG_FILE).write_text(
                dump_train_config(config, command=f"python -m pipelines.{self.kind} CONFIG.yml"),
                encoding="utf-8",
            )
            self.log = RunLogWriter(self.run_dir / RUN_LOG_FILE)
        else:
            self.events = None  # one progress stream per run, not one per process
        # 1) where the weights come from; a resume also brings the data position
        resume_state = None
        if config.resume:
            self.resumed_from = find_resume_checkpoint(self.run_dir, config.resume)
            resume_state = read_resume_state(self.resumed_from)
            if resume_state.kind != self.kind or resume_state.num_processes != acc.num_processes:
                raise TrainConfigError(
                    f"checkpoint {self.resumed_from} was written by a {resume_state.kind} run on "
                    f"{resume_state.num_processes} processes; resume it with the same pipeline and "
                    "process count, or use it as `model:` to start a new run from its weights"
                )
        self.model_path = resolve_train_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # 2) data (before the model: a bad file fails in seconds, not after a 7B load)
        self.data = self.build_data(
            self.tokenizer, position=resume_state.data_position if resume_state else None
        )
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=_DTYPES[config.dtype])
        model.config.use_cache = False  # training: the KV cache only costs memory
        if config.lora is not None:
            sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
            model = with_lora(model, config.lora, distributed=sharded)
            LOG.info("LoRA: %d trainable parameters", trainable_parameters(model))
        # 3) optimizer and schedule, fresh unless resuming ("start from checkpoint" re-warms)
        optimizer = torch.optim.AdamW(
            _param_groups(model, config.optim.weight_decay),
            lr=config.schedule.lr,
            betas=(config.optim.beta1, config.optim.beta2),
            eps=config.optim.eps,
        )
        self.scheduler = build_scheduler(optimizer, config.schedule, max_steps=config.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would
        # step it once per process); registering it puts it in save_state/load_state.
        acc.register_for_checkpointing(self.scheduler)
        if resume_state is not None and self.resumed_from is not None:
            acc.load_state(str(self.resumed_from / TRAINER_STATE_DIR))
            self.step, self.tokens = resume_state.step, resume_state.tokens
            self._mixture_tokens = dict(resume_state.mixture_tokens)
        else:
            self._mixture_tokens = {name: 0 for name in self.data.stream.names}
        self._emit(
            StartRecord(
                kind=self.kind,
                step=self.step,
                max_steps=config.max_steps,
                global_tokens_per_step=config.global_tokens_per_step(acc.num_processes),
                num_processes=acc.num_processes,
                started_from=str(self.model_path),
                resumed_from=str(self.resumed_from) if self.resumed_from else None,
            )
        )
        self._emit(self.data.record)
        LOG.info(
            "%s run: step %d of %d, %d processes, %d tokens per step",
            self.kind,
            self.step,
            config.max_steps,
            acc.num_processes,
            config.global_tokens_per_step(acc.num_processes),
        )

    def build_data(self, tokenizer: Any, *, position: dict[str, int] | None) -> TrainData:
        """Pack every source and held-out set; the mixture stream starts at `position`."""
        config = self.config
        assert isinstance(config, CPTConfig)
        data = config.data
        weights = data.weights()
        blocks: dict[str, torch.Tensor] = {}
        stats = []
        for source in data.sources:
            docs = read_documents(source.paths, format=source.format, text_field=source.text_field)
            packed = pack_documents(tokenize_documents(tokenizer, docs), seq_len=data.seq_len)
            blocks[source.name] = packed.blocks
            stats.append(
                SourceStats(
                    name=source.name,
                    documents=packed.documents,
                    tokens=packed.tokens,
                    blocks=int(packed.blocks.shape[0]),
                    dropped_tokens=packed.dropped_tokens,
                    target_share=weights[source.name],
                )
            )
        evals: dict[str, list[Batch]] = {}
        for eval_set in data.eval_sets:
            docs = read_documents(
                eval_set.paths, format=eval_set.format, text_field=eval_set.text_field
            )
            packed = pack_documents(tokenize_documents(tokenizer, docs), seq_len=data.seq_len)
            chosen = eval_blocks(packed, limit=data.eval_blocks)
            evals[eval_set.name] = [_lm_batch(b.unsqueeze(0)) for b in chosen]
        stream = MixtureStream(
            {name: int(b.shape[0]) for name, b in blocks.items()},
            weights,
            seed=config.seed,
            position=position,
        )

        def collate(picks: list[tuple[str, int]]) -> Batch:
            return _lm_batch(torch.stack([blocks[name][index] for name, index in picks]))

        record = DataRecord(
            seq_len=data.seq_len,
            sources=stats,
            eval_blocks={name: len(batches) for name, batches in evals.items()},
        )
        return TrainData(stream, collate, evals, record, tokens_of=lambda _n, _i: data.seq_len)

    # ------------------------------------------------------------------ 2) train

    def train(self) -> EndRecord:
        """Optimizer steps until max_steps or a stop request; validate and save on schedule."""
        config = self.config
        if self.step >= config.max_steps:
            raise TrainConfigError(
                f"the run is already at step {self.step} of max_steps {config.max_steps}; raise "
                "max_steps to train further"
            )
        last_log_time, last_log_tokens = time.perf_counter(), self.tokens
        while self.step < config.max_steps:
            result = self.train_step()
            stopping = self._stop_asked()
            done = self.step >= config.max_steps
            # 1) metrics
            if self.step % config.log_every == 0 or done or stopping:
                now = time.perf_counter()
                speed = (self.tokens - last_log_tokens) / max(now - last_log_time, 1e-9)
                last_log_time, last_log_tokens = now, self.tokens
                self._emit(
                    StepRecord(
                        step=self.step,
                        loss=result.loss,
                        lr=result.lr,
                        tokens=self.tokens,
                        tokens_per_s=round(speed, 2),
                        grad_norm=result.grad_norm,
                        mixture=self.realised_mixture(),
                    )
                )
            if self.events is not None:
                self.events.progress(
                    self.step, config.max_steps, f"step {self.step}: loss {result.loss:.4f}"
                )
            # 2) held-out losses, 3) checkpoint
            if self.data.eval_sets and (self.step % config.eval_every == 0 or done):
                self.validate()
            if self.step % config.save_every == 0 or done or stopping:
                self.save_checkpoint()
            if stopping:
                LOG.info("stop requested: stopped after step %d", self.step)
                return EndRecord(step=self.step, reason="stopped", checkpoint=_str(self.last_saved))
        return EndRecord(step=self.step, reason="completed", checkpoint=_str(self.last_saved))

    def train_step(self) -> StepResult:
        """One optimizer step: grad_accum micro-batches per process, then step + schedule."""
        config, acc = self.config, self.accelerator
        self.model.train()
        lr = self.scheduler.get_last_lr()[0]
        losses, grad_norm = [], None
        tokens = torch.zeros((), dtype=torch.long, device=acc.device)
        per_global_micro = config.micro_batch_size * acc.num_processes
        for _ in range(config.grad_accum):
            # Every process walks the same global stream and keeps its own slice of it.
            picks = self.data.stream.take(per_global_micro)
            for name, index in picks:
                self._mixture_tokens[name] += self.data.tokens_of(name, index)
            start = acc.process_index * config.micro_batch_size
            batch = {
                k: v.to(acc.device)
                for k, v in self.data.collate(
                    picks[start : start + config.micro_batch_size]
                ).items()
            }
            with acc.accumulate(self.model):
                loss = self.model(**batch).loss
                acc.backward(loss)
                if acc.sync_gradients and config.optim.grad_clip is not None:
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
            tokens += batch["attention_mask"].sum()
        self.scheduler.step()
        self.step += 1
        mean_loss = acc.reduce(torch.stack(losses).mean(), reduction="mean")
        self.tokens += int(acc.reduce(tokens, reduction="sum"))
        return StepResult(
            step=self.step,
            loss=float(mean_loss),
            lr=float(lr),
            tokens=self.tokens,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
        )

    def realised_mixture(self) -> dict[str, float]:
        total = sum(self._mixture_tokens.values())
        return {n: round(t / total, 4) if total else 0.0 for n, t in self._mixture_tokens.items()}

    # ------------------------------------------------------------------ 3) validate

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Token-weighted held-out loss per eval set (every process runs every batch: FSDP and
        ZeRO-3 need all ranks in each forward, and the sets are small)."""
        acc = self.accelerator
        self.model.eval()
        losses = {}
        for name, batches in self.data.eval_sets.items():
            total, count = 0.0, 0
            for batch in batches:
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                n = int((batch["labels"][:, 1:] != -100).sum())  # predicted tokens
                if n == 0:
                    continue
                total += float(self.model(**batch).loss) * n
                count += n
            losses[name] = round(total / max(count, 1), 6)
        self.model.train()
        self._emit(EvalRecord(step=self.step, losses=losses))
        return losses

    # ------------------------------------------------------------------ 4) save checkpoint

    def save_checkpoint(self) -> Path:
        """step-NNNNNNNN/: HF safetensors + tokenizer + resume state, renamed into place."""
        acc = self.accelerator
        final = self.run_dir / checkpoint_name(self.step)
        if self.last_saved == final:
            return final
        temp = final.with_name(final.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
        acc.wait_for_everyone()
        # 1) weights as a Hugging Face folder (gathered from all ranks under FSDP/ZeRO-3)
        state_dict = None
        if self.config.lora is not None:
            if acc.is_main_process:
                save_lora_checkpoint(acc.unwrap_model(self.model), temp)
        else:
            if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
                state_dict = acc.get_state_dict(self.model)
            acc.unwrap_model(self.model).save_pretrained(
                temp, is_main_process=acc.is_main_process, state_dict=state_dict
            )
        # 2) optimizer, scheduler and RNG of every rank, the data position
        acc.save_state(str(temp / TRAINER_STATE_DIR))
        if acc.is_main_process:
            self.tokenizer.save_pretrained(temp)
            write_resume_state(
                temp,
                ResumeState(
                    kind=self.kind,
                    step=self.step,
                    tokens=self.tokens,
                    seed=self.config.seed,
                    num_processes=acc.num_processes,
                    data_position=self.data.stream.position,
                    mixture_tokens=dict(self._mixture_tokens),
                ),
            )
            shutil.rmtree(final, ignore_errors=True)
            temp.rename(final)
            self._prune_trainer_state()
        acc.wait_for_everyone()
        self.last_saved = final
        self._emit(CheckpointRecord(step=self.step, path=str(final.resolve()), resumable=True))
        if self.events is not None:
            self.events.log(f"saved checkpoint {final.name}")
        if acc.is_main_process and self.register:
            _register(final)
        return final

    def _prune_trainer_state(self) -> None:
        """Older checkpoints keep their weights but drop the (large) optimizer state."""
        resumable = [c for c in list_checkpoints(self.run_dir) if c.resumable]
        for old in resumable[: -self.config.keep_trainer_state]:
            shutil.rmtree(Path(old.path) / TRAINER_STATE_DIR, ignore_errors=True)

    # ------------------------------------------------------------------ the whole run

    def run(self) -> EndRecord:
        """setup -> train -> end record; the events file gets the result."""
        self.setup()
        end = self.train()
        self._emit(end)
        if self.accelerator.is_main_process:
            clear_stop(self.run_dir)
        if self.events is not None:
            self.events.result(
                output_path=end.checkpoint,
                summary={
                    "step": end.step,
                    "reason": end.reason,
                    "stopped": end.reason == "stopped",
                    "tokens": self.tokens,
                    "run_dir": str(self.run_dir),
                },
            )
        self.accelerator.end_training()
        return end

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def _stop_asked(self) -> bool:
        acc = self.accelerator
        if acc.is_main_process and stop_requested(self.run_dir):
            acc.set_trigger()
        return acc.check_trigger()  # true on every rank if any rank set it

    def _emit(self, record: Any) -> None:
        if self.log is not None:
            self.log.write(record)


# ---------------------------------------------------------------------- helpers


def _lm_batch(input_ids: torch.Tensor) -> Batch:
    """(B, T) packed blocks: every token is a target (the model shifts labels itself)."""
    return {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "attention_mask": torch.ones_like(input_ids),
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on norms and biases (1-D tensors), as in GPT-2/Llama training recipes.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def _register(folder: Path) -> None:
    """Add a checkpoint to the studio catalog; a catalog problem must not stop training."""
    from studio.catalog.registry import add_local_model

    try:
        add_local_model(folder)
    except StudioError as error:
        LOG.warning("checkpoint %s not added to the catalog: %s", folder, error)


def _str(path: Path | None) -> str | None:
    return str(path.resolve()) if path is not None else None


# ---------------------------------------------------------------------- command line


def main(
    argv: Sequence[str] | None = None,
    *,
    recipe_class: type[CPTRecipe] = CPTRecipe,
) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{recipe_class.kind}", description=__doc__
    )
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--events", default=None, help="job-runner events file (JSON lines)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    events = EventWriter(args.events) if args.events else None
    recipe = None
    try:
        config = load_train_config(args.config)
        if config.kind != recipe_class.kind:
            raise TrainConfigError(
                f"{args.config} is a {config.kind} config; run it with "
                f"`python -m pipelines.{config.kind}`"
            )
        recipe = recipe_class(config, events=events)
        end = recipe.run()
        LOG.info("%s run %s at step %d", recipe.kind, end.reason, end.step)
        return 0
    except Exception as error:  # any failure ends as a sentence in the Jobs tab
        return report_failure(events, "training", error)
    finally:
        if recipe is not None:
            recipe.close()
        if events is not None:
            events.close()


if __name__ == "__main__":
    sys.exit(main())
