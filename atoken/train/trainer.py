"""`atoken train`: the training loop over curriculum stages.

One step: for each micro-batch (gradient accumulation), pack a token-budget batch of the task
picked round-robin by the stage's task weights, run encode → quantize → decode, compute the
stage's objective as the task's registration (`atoken.core.task.TaskSpec`) says: the
reconstruction losses on reconstruction tasks of any modality, or the registered task objective
the task names (``task_objective``, `atoken.core.objective`: e.g. atoken-plugin-3d's
``gaussian_render``, which trains the Gaussian decoder on rendered views); on understanding tasks
the registered understanding objective the task names
(``atoken_register_understanding_objectives``, `atoken.core.objective.UnderstandingSpec`;
atoken's ``distill``: KL distillation from the SigLIP2 teacher, as ``image_und``;
``caption_contrast``: the caption sigmoid loss, as ``video_und`` / ``3d_und``; see
`atoken.train.semantic`), backpropagate; then clip, step AdamW and the schedule, update the
EMA, log. The trainer names no modality: everything that differs per task comes from its spec.
Stages hand over automatically (resolution range, task mix, losses, quantizer, trainable groups).
Checkpoints (model, EMA, task objectives and their EMAs, optimizer, scheduler, data position,
RNG) are written atomically every ``checkpoint_every`` steps together with a ``from_pretrained``
directory of the EMA weights (and the companions a task objective exports, e.g.
``model/gaussian_decoder/``). Under ``torchrun`` the ranks share the work through DDP or FSDP2
(``[run] distributed``, `atoken.train.engines`); each rank's data position and RNG state are
saved with the checkpoint, so a multi-process run resumes exactly.

References: AToken (arXiv 2509.14476), "Curriculum and optimisation"; round-robin task sampling
with gradient accumulation as described there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atoken.core.execution import autocast_context
from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer, build_tokenizer
from atoken.core.tokens import PatchTokens, SparseTokens, collate
from atoken.train.config import StageConfig, TrainConfig, check_tasks, task_spec
from atoken.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from atoken.train.objective import ObjectiveResult, ReconstructionObjective
from atoken.train.objective_setup import build_task_objectives, build_understanding_objectives
from atoken.train.optim import build_optimizer, build_scheduler, set_trainable, unknown_prefixes

logger = logging.getLogger(__name__)


@dataclass
class StagePlan:
    """Where a global step falls in the curriculum."""

    index: int
    stage: StageConfig
    start: int
    end: int


def stage_at(config: TrainConfig, step: int) -> StagePlan:
    start = 0
    for i, stage in enumerate(config.stages):
        if step < start + stage.steps:
            return StagePlan(i, stage, start, start + stage.steps)
        start += stage.steps
    last = config.stages[-1]
    return StagePlan(len(config.stages) - 1, last, start - last.steps, start)


def task_schedule(tasks: dict[str, float]) -> Iterator[str]:
    """Deterministic weighted round-robin (smooth weighted round-robin, as nginx balances)."""
    names = sorted(tasks)
    total = sum(tasks.values())
    current = dict.fromkeys(names, 0.0)
    while True:
        for n in names:
            current[n] += tasks[n]
        best = max(names, key=lambda n: current[n])
        current[best] -= total
        yield best


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves behind."""

    run_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    model_dir: Path | None = None


class Trainer:
    """Runs a `TrainConfig` in ``run_dir``.

    Args:
        config: validated training config.
        run_dir: output folder (checkpoints/, model/, metrics.jsonl, loss_curve.png, samples/).
        components: plugin registries (default: installed plugins).
        resume: continue from the newest checkpoint in ``run_dir`` that verifies; checkpoints
            newer than it are moved to ``run_dir/discarded-<time>/`` and ``metrics.jsonl`` /
            ``eval.jsonl`` are cut back to its step. If there are checkpoints and none
            verifies, `NoUsableCheckpointError` lists them and nothing is changed. With no
            checkpoint at all, a new run starts.
        restart: start over at step 0 even if ``run_dir`` holds a run: its checkpoints, model,
            logs and pictures are moved to ``run_dir/discarded-<time>/`` (nothing is deleted).
            Excludes ``resume``.
        progress: show a live progress bar (rank 0 only).

    A run that starts at step 0 (without ``resume``, or with nothing to resume) in a folder
    that holds no checkpoint but outputs of an earlier run (``model/``, logs) moves those aside
    as ``restart`` does, so they are neither appended to nor overwritten. Without ``resume`` or
    ``restart``, a folder with checkpoints is an error.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        components: Components | None = None,
        resume: bool = False,
        restart: bool = False,
        progress: bool = True,
    ) -> None:
        from atoken.core.config import ConfigError
        from atoken.train.checkpoint import CheckpointManager
        from atoken.train.ema import ModelEma

        if resume and restart:
            raise ConfigError(
                "--resume and --restart exclude each other: --resume continues the run in the"
                " folder, --restart sets it aside and starts over; give one"
            )

        self.config = config
        self.run_dir = Path(run_dir)
        self.components = components or default_components()
        self._check_tasks()  # a missing modality plugin fails before anything is loaded
        if self.config.run.log_to:  # and so does a missing tracker package (rank 0 logs)
            from atoken.train.tracking import check_available

            check_available(self.config.run.log_to)
        self.dist: DistInfo = init_distributed(config.run.device)
        self.progress = progress and self.dist.is_main
        torch.manual_seed(config.run.seed + self.dist.rank)
        self.model = self._build_model().to(self.dist.device)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=config.run.keep_last)
        resume_from = self._resume_point(resume=resume, restart=restart)
        if resume_from is None:  # the run's start applies whenever no checkpoint is loaded
            self._initialise()
        built = (self.config, self.components, self.model, self.dist.device)
        self.understanding = build_understanding_objectives(*built)
        self.task_objectives = build_task_objectives(*built)
        self.ema = ModelEma(self.model, decay=config.ema.decay, warmup=config.ema.warmup)
        self.objective_emas = {
            name: ModelEma(module, decay=config.ema.decay, warmup=config.ema.warmup)
            for name, module in self.task_objectives.items()
        }
        self._held_out_samples: dict[str, list[Any]] = {}
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._data_state: dict[str, Any] = {}
        if resume_from is not None:  # weights first: FSDP then shards what was loaded
            self._resume_weights(resume_from)
        self.engine = self._build_engine()
        unknown = unknown_prefixes(self.model, config.optimizer)
        if unknown:
            from atoken.core.config import ConfigError

            raise ConfigError(
                f"optimizer.lr_mult: {unknown} match no parameter of the model (names look like"
                " 'encoder.input_layer', 'decoder.blocks.0', 'decoder.out_layer', 'proj')"
            )
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self._add_objective_params()
        self.scheduler = build_scheduler(self.optimizer, config.optimizer, config.total_steps)
        self.streams: dict[str, Any] = {}
        self._stage_index = -1
        if resume_from is not None:
            self._resume_training_state(resume_from)
        elif self.dist.is_main:  # nothing is moved until everything above has succeeded
            self.checkpoints.restart("--restart" if restart else "a new run in this folder")
        barrier(self.dist)

    def _resume_point(self, *, resume: bool, restart: bool) -> Path | None:
        """The checkpoint to load, or None for a new run (read-only: nothing is moved yet)."""
        from atoken.core.config import ConfigError

        if restart:
            return None
        if resume:
            path = self.checkpoints.resume_point()  # all damaged: NoUsableCheckpointError
            if path is None and self.dist.is_main:
                print(f"--resume: no checkpoint in {self.run_dir}; starting a new run")
            return path
        if self.checkpoints.checkpoints():
            raise ConfigError(
                f"run folder {str(self.run_dir)!r} already holds checkpoints; pass --resume to"
                " continue that run, --restart to set it aside and start over, or choose"
                " another --out"
            )
        return None

    # ---------------------------------------------------------------- set-up
    def _build_model(self) -> Tokenizer:
        m = self.config.model
        if m.from_pretrained is not None:
            return Tokenizer.from_pretrained(m.from_pretrained, components=self.components)
        return build_tokenizer(m.preset, components=self.components, **m.overrides)

    def _spec(self, task: str):
        return task_spec(task, self.components)

    def _check_tasks(self) -> None:
        """Phase two against this trainer's registries: every task of the config is registered,
        its adapter installed, its ``[semantic]`` section given (clear error otherwise)."""
        check_tasks(self.config, self.components)

    @property
    def semantic(self) -> Any:
        """The understanding objective built from the ``[semantic]`` table (``distill``'s
        `SemanticDistiller` for ``image_und``), or None."""
        return self.understanding.get(None)

    @property
    def contrastive(self) -> dict[str, nn.Module]:
        """The understanding objectives that are ``nn.Module``s (their trainable parameters join
        the ``loss`` group, their state is checkpointed), keyed by section (``video``: the
        `CaptionContrast` of ``video_und``; ``[semantic]`` for one built from that table)."""
        return {
            "[semantic]" if k is None else k: m
            for k, m in self.understanding.items()
            if isinstance(m, nn.Module)
        }

    def _objective_params(self) -> list[nn.Parameter]:
        """Trainable parameters of the task objectives (clipped and synchronised with the
        model's)."""
        return [p for m in self.task_objectives.values() for p in m.parameters() if p.requires_grad]

    def _add_objective_params(self) -> None:
        """Learnable loss parameters (SigLIP scale and bias) join AdamW, without weight decay;
        each task objective's trainable parameters form their own group, ``objective.<name>``."""
        params = [p for m in self.contrastive.values() for p in m.parameters() if p.requires_grad]
        lr = self.config.optimizer.lr
        if params:
            self.optimizer.add_param_group(
                {"params": params, "lr": lr, "base_lr": lr, "weight_decay": 0.0, "name": "loss"}
            )
        for name, module in self.task_objectives.items():
            own = [p for p in module.parameters() if p.requires_grad]
            if own:
                self.optimizer.add_param_group(
                    {
                        "params": own,
                        "lr": lr,
                        "base_lr": lr,
                        "weight_decay": 0.0,
                        "name": f"objective.{name}",
                    }
                )

    def _objective_checkpoint(self) -> dict[str, tuple[nn.Module, Any]]:
        return {n: (m, self.objective_emas[n]) for n, m in self.task_objectives.items()}

    def _companion_writers(self) -> list[Any]:
        """``export_companions`` of the task objectives' EMA copies that declare it."""
        from atoken.core.capabilities import has_capability

        return [
            ema.module.export_companions
            for ema in self.objective_emas.values()
            if has_capability(ema.module, "export_companions")
        ]

    def _objective_state(self) -> dict[str, Any]:
        return {
            modality: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for modality, module in self.contrastive.items()
        }

    def _load_objective_state(self, state: dict[str, Any]) -> None:
        for modality, module in self.contrastive.items():
            if modality in state:
                module.load_state_dict(
                    {k: torch.as_tensor(v) for k, v in state[modality].items()}, strict=True
                )

    def _initialise(self) -> None:
        """The configured start of a new run (``model.init``); a ``from_pretrained`` model
        starts from its weights, loaded in `_build_model`."""
        if self.config.model.init == "pca":
            from atoken.train.pca_init import pca_init_from_config

            # identical on every rank: the same data in the same order
            info = pca_init_from_config(self.model, self.config, self.components)
            if self.dist.is_main:
                print(
                    f"PCA start: {info['patches']} patches of {info['images']} images,"
                    f" {info['explained_variance']:.1%} of the patch variance in the latent"
                )

    def _build_engine(self):
        """The model as the ranks share it (`atoken.train.engines`), compiled if configured."""
        from atoken.train.engines import Engine

        run = self.config.run
        if run.distributed == "fsdp" and self.dist.enabled:
            extras = [p for m in self.contrastive.values() for p in m.parameters()]
            extras += self._objective_params()
            if extras:
                from atoken.core.config import ConfigError

                raise ConfigError(
                    "run.distributed = 'fsdp' shards the tokenizer's own parameters; this run"
                    f" also trains {len(extras)} parameter tensors of its objectives"
                    f" ({', '.join(sorted(self.contrastive) + sorted(self.task_objectives))});"
                    " use distributed = 'ddp'"
                )
        engine = Engine(
            self.model,
            self.dist,
            run.distributed,
            activation_checkpointing=run.activation_checkpointing,
        )
        if run.compile:
            from atoken.core.compile import compile_blocks

            compile_blocks(self.model)
        if self.dist.enabled and self.dist.is_main:
            print(
                f"distributed: {engine.kind} over {self.dist.world_size} ranks, activation"
                f" checkpointing {'on' if engine.activation_checkpointing else 'off'}"
            )
        return engine

    def _rank_states(self) -> list[dict[str, Any]] | None:
        """Every rank's data position and RNG state, gathered (each rank reads its own stream
        and draws its own numbers; a checkpoint's top-level ones are rank 0's). None in one
        process."""
        if not self.dist.enabled:
            return None
        import torch.distributed as dist

        from atoken.train.rng import capture_rng_state

        own = {"rank": self.dist.rank, "data_state": self.data_state(), "rng": capture_rng_state()}
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, own)
        return gathered

    def _own_rank_state(self, extra: dict[str, Any] | None) -> dict[str, Any] | None:
        """This rank's entry of a checkpoint's ``ranks`` when it was saved by as many ranks."""
        ranks = (extra or {}).get("ranks")
        if not self.dist.enabled or not ranks or len(ranks) != self.dist.world_size:
            return None
        return ranks[self.dist.rank]

    def _resume_weights(self, path: Path) -> None:
        """The model, EMA and objective weights of the checkpoint at ``path`` (verified), and
        where the run stands (step, data position, history)."""
        from atoken.train.checkpoint import load

        state = load(
            path,
            model=self.model,
            ema=self.ema,
            objectives=self._objective_checkpoint(),
            restore_rng=False,
        )
        self.step = int(state["step"])
        own = self._own_rank_state(state.get("extra"))
        self._data_state = (own or state).get("data_state") or {}
        self._rank_rng = own["rng"] if own is not None else None
        self.history = list((state.get("extra") or {}).get("history", []))
        self._load_objective_state((state.get("extra") or {}).get("objective", {}))

    def _resume_training_state(self, path: Path) -> None:
        """The optimizer (each rank its shards under FSDP), scheduler and RNG of ``path``."""
        from atoken.train.checkpoint import load_training_state

        load_training_state(
            path,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            convert=self.engine.shard_like,
        )
        if self._rank_rng is not None:  # this rank's own draws, not rank 0's
            from atoken.train.rng import restore_rng_state

            restore_rng_state(self._rank_rng)
        if self.dist.is_main:
            from atoken.train.monitor import cut_logs

            self.checkpoints.set_aside_newer(path)
            cut_logs(self.run_dir, self.step)
            print(f"resuming from {path} (step {self.step})")

    def _enter_stage(self, plan: StagePlan) -> None:
        stage = plan.stage
        if stage.quantizer is not None and stage.quantizer.name != self.model.config.quantizer.name:
            quantizer = self.components.quantizers.build(
                stage.quantizer.name,
                stage.quantizer.options,
                latent_channels=self.model.config.latent_channels,
            )
            self.model.quantizer = quantizer.to(self.dist.device)
            self.model.config = self.model.config.model_copy(update={"quantizer": stage.quantizer})
            self.ema.module.quantizer = self.components.quantizers.build(
                stage.quantizer.name,
                stage.quantizer.options,
                latent_channels=self.model.config.latent_channels,
            ).to(self.dist.device)
            self.ema.module.config = self.model.config
        groups = [g for g in stage.train if g != "head" or self._uses_head(stage)]
        set_trainable(self.model, groups, self.config.optimizer)
        # micro-batches of understanding or task-objective tasks leave the decoder (and those
        # of reconstruction tasks the head) without gradients
        plain = all(
            self._spec(t).objective != "understanding" and self._spec(t).task_objective is None
            for t in stage.tasks
        )
        self.engine.prepare_stage(mixed=not plain or len(stage.tasks) > 1)
        self.objective = ReconstructionObjective(
            stage.losses,
            self.components,
            rec_weight=self.config.rec_weight,
            kl_weight=self.config.kl_weight,
            sem_weight=self.config.semantic.weight if self.config.semantic is not None else 1.0,
            render=self._render,
        ).to(self.dist.device)
        previous = {task: stream.state_dict() for task, stream in self.streams.items()}
        self.streams = {
            task: self._make_stream(task, stage, previous.get(task)) for task in stage.tasks
        }
        self.tasks = task_schedule(stage.tasks)
        self._stage_index = plan.index
        if self.dist.is_main:
            print(
                f"stage {plan.index + 1}/{len(self.config.stages)} '{stage.name}': steps {plan.start}..{plan.end}, tasks {dict(stage.tasks)}, train {groups}"
            )

    def _uses_head(self, stage: StageConfig) -> bool:
        return any(self._spec(t).objective == "understanding" for t in stage.tasks)

    def _make_stream(self, task: str, stage: StageConfig, state: dict[str, Any] | None = None):
        from atoken.train.data.build import build_stream

        sources = [s for s in self.config.data if s.task == task]
        if not sources:
            from atoken.core.config import ConfigError

            raise ConfigError(
                f"stage '{stage.name}' mixes task {task!r} but no [[data]] source has task = {task!r}"
            )
        if state is None:
            state = self._data_state.get(task)
        return build_stream(
            sources,
            stage=stage,
            components=self.components,
            seed=self.config.run.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            state=state,
        )

    def _render(self, pred: SparseTokens, target: SparseTokens):
        preds, targets = [], []
        for p, t in zip(pred.split(), target.split(), strict=True):
            adapter = self.components.adapters.build(t.modality)
            preds.append(adapter.from_tokens(p))
            targets.append(adapter.from_tokens(t))
        return preds, targets

    # ---------------------------------------------------------------- loop
    def _autocast(self):
        """The ``[run] precision`` region of a training step (the rule inference plans use)."""
        return autocast_context(self.config.run.precision, self.dist.device)

    def _micro_step(
        self, batch: list[PatchTokens], scale: float, task: str, *, last: bool = True
    ) -> tuple[dict[str, float], int]:
        tokens = collate(batch).to(self.dist.device)
        spec = self._spec(task)
        with self.engine.sync_context(last), self._autocast():
            out = self.engine.module(tokens)
            if spec.objective == "understanding":
                result = self.objective(
                    out, tokens, reconstruct=False, semantic=self._semantic_loss(task, out, batch)
                )
            elif spec.task_objective is not None:
                result = self._task_objective_loss(spec.task_objective, out, tokens, batch)
            else:
                result = self.objective(out, tokens, modality=spec.modality)
            (result.total * scale).backward()
        return result.terms, tokens.num_tokens

    def _task_objective_loss(
        self, name: str, out, tokens: SparseTokens, batch: list[PatchTokens]
    ) -> ObjectiveResult:
        """The registered task objective's ``(total, terms)`` plus the quantizer's KL term."""
        from atoken.core.config import ConfigError
        from atoken.train.objective import RESERVED_TERMS

        base = self.objective(out, tokens, reconstruct=False)  # the KL term alone
        total, terms = self.task_objectives[name](out, batch)
        clash = sorted(set(terms) & set(RESERVED_TERMS))
        if clash:
            raise ConfigError(
                f"objective {name!r} logs {clash}, the trainer's own terms {list(RESERVED_TERMS)};"
                " the objective must use other names"
            )
        total = base.total + total.float()
        terms = {**terms, "kl": base.terms["kl"], "loss": float(total.detach())}
        return ObjectiveResult(total, terms)

    def _semantic_loss(self, task: str, out, batch: list[PatchTokens]) -> torch.Tensor:
        """The loss of the task's registered understanding objective (built for its
        ``[semantic]`` / ``[semantic.<section>]`` table) on the pooled embedding."""
        from atoken.core.config import ConfigError

        if out.embedding is None:
            raise ConfigError(f"{task} needs the model's understanding head; it has none")
        section = self._spec(task).section
        if section not in self.understanding:
            where = f"[semantic.{section}]" if section else "[semantic]"
            raise ConfigError(f"task {task!r} needs a {where} section")
        return self.understanding[section].loss(out.embedding, batch)

    def train_step(self) -> dict[str, Any]:
        plan = stage_at(self.config, self.step)
        if plan.index != self._stage_index:
            self._enter_stage(plan)
        self.model.train()
        t0 = time.perf_counter()
        accum = self.config.optimizer.grad_accum
        terms_sum: dict[str, float] = {}
        counts: dict[str, int] = {}
        tokens = 0
        tasks: list[str] = []
        for i in range(accum):
            task = next(self.tasks)
            tasks.append(task)
            batch = next(self.streams[task])
            terms, n = self._micro_step(batch, 1.0 / accum, task, last=i == accum - 1)
            tokens += n
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        # each term is the mean over the micro-batches that have it (``sem`` only on _und ones)
        terms_sum = {k: v / counts[k] for k, v in terms_sum.items()}
        self._sync_gradients()
        if self.config.optimizer.grad_clip is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            params += [p for p in self._objective_params() if p.grad is not None]
            terms_sum["grad_norm"] = self.engine.clip_grad_norm(
                params, self.config.optimizer.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.engine.kind == "fsdp":  # the EMA is a whole copy: gather the shards
            self.ema.update(self.model, step=self.step, state=self.engine.full_state_dict())
        else:
            self.ema.update(self.model, step=self.step)
        for name, ema in self.objective_emas.items():
            ema.update(self.task_objectives[name], step=self.step)
        self.step += 1
        dt = time.perf_counter() - t0
        terms_sum = all_reduce_mean(terms_sum, self.dist)
        return {
            "step": self.step,
            "stage": plan.stage.name,
            "task": "+".join(tasks),
            "lr": self.optimizer.param_groups[-1]["lr"],
            "tokens": tokens * self.dist.world_size,
            "tokens_per_s": tokens * self.dist.world_size / dt,
            **terms_sum,
        }

    def _sync_gradients(self) -> None:
        """Average over ranks the gradients the engine does not (the objectives' own
        parameters; the model's too in a stage where DDP has nothing to wrap): one flat
        all-reduce after backward."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        params = []
        if not self.engine.averages_model_gradients:
            params += [p for p in self.model.parameters() if p.requires_grad]
        params += [p for m in self.contrastive.values() for p in m.parameters() if p.requires_grad]
        params += self._objective_params()
        for p in params:  # every rank must send the same layout, used or not
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def data_state(self) -> dict[str, Any]:
        return {task: stream.state_dict() for task, stream in self.streams.items()}

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of this step (rank 0; under FSDP every rank must call it, as
        every rank gathers the whole tensors first). Returns its directory (None off rank 0)."""
        model_state = optimizer_state = None
        if self.engine.kind == "fsdp":
            model_state = self.engine.full_state_dict()
            optimizer_state = self.engine.full_optimizer_state(self.optimizer)
        ranks = self._rank_states()
        if not self.dist.is_main:
            return None
        path = self.checkpoints.save(
            self.step,
            model_state=model_state,
            optimizer_state=optimizer_state,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            data_state=self.data_state(),
            extra={
                "ranks": ranks,
                "history": self.history[-2000:],
                "objective": self._objective_state(),
                "config": json.loads(self.config.model_dump_json()),
            },
            objectives=self._objective_checkpoint(),
            companions=self._companion_writers(),
        )
        return path

    # ---------------------------------------------------------------- held-out evaluation
    def held_out_report(self) -> dict[str, Any] | None:
        """The held-out evaluation a task objective declares (``evaluate_held_out``), run on
        the EMA weights: ``{"summary", "pairs"}`` as `Monitor.evaluate` gives them, or None
        when no task objective of this run declares one (the monitor then evaluates ``[eval]``).

        The samples are the first ``run.eval_images`` of the objective's first task's
        ``[[data]]`` sources (in their own order), tokenized by that task's adapter.
        """
        from atoken.core.capabilities import has_capability

        for name, ema in self.objective_emas.items():
            if not has_capability(ema.module, "evaluate_held_out"):
                continue
            samples = self._held_out_samples.get(name)
            if samples is None:
                samples = self._held_out_samples[name] = self._objective_samples(name)
            report = ema.module.evaluate_held_out(self.ema.module.eval(), samples)
            summary = dict(report.summary)
            summary.update(data=report.data, convention=dict(report.convention), images=report.rows)
            return {"summary": summary, "pairs": report.pairs}
        return None

    def _objective_samples(self, name: str) -> list[Any]:
        from atoken.core.objective import HeldOutSample
        from atoken.train.config import task_objectives
        from atoken.train.data.build import adapter_options, build_source

        task = task_objectives(self.config, self.components)[name][0]
        specs = [s for s in self.config.data if s.task == task]
        stage = next(s for s in self.config.stages if task in s.tasks)
        adapter = self.components.adapters.build(
            self._spec(task).modality, adapter_options(specs, stage, self.components)
        )
        out: list[HeldOutSample] = []
        for spec in specs:
            for key, sample in build_source(spec, adapter, components=self.components):
                if len(out) >= self.config.run.eval_images:
                    return out
                out.append(HeldOutSample(str(key), sample, adapter.to_tokens(sample)))
        return out

    def fit(self) -> TrainResult:
        from atoken.train.monitor import Monitor

        total = self.config.total_steps
        monitor = Monitor(self, enabled=self.dist.is_main, progress=self.progress)
        try:
            with monitor:
                if self.step == 0 and self.dist.is_main:
                    monitor.on_sample(0)  # the start, so the curves show what training adds
                while self.step < total:
                    record = self.train_step()
                    self.history.append(record)
                    monitor.on_step(record)
                    if self.step % self.config.run.checkpoint_every == 0 or self.step == total:
                        self.save_checkpoint()  # rank 0 writes (all ranks gather under FSDP)
                        barrier(self.dist)
                    if self.dist.is_main and (
                        self.step % self.config.run.sample_every == 0 or self.step == total
                    ):
                        monitor.on_sample(self.step)
        finally:
            shutdown(self.dist)
        model_dir = self.run_dir / "model" if (self.run_dir / "model").is_dir() else None
        return TrainResult(self.run_dir, self.step, self.history, model_dir)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
