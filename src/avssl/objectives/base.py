"""The small base LightningModule every objective derives from (DESIGN sections 3 and 9).

It owns only what all objectives share: the AdamW optimizer with parameter groups, the
linear-warmup + cosine learning-rate schedule (step based), learning-rate scaling by the
effective batch size (Goyal et al. 2017, https://arxiv.org/abs/1706.02677, as in MAE:
``lr = base_lr * effective_batch / 256``), logging of the loss dict, a non-finite-loss guard, and
the ``checkpoint["avssl"]`` provenance block read by ``avssl.export``.

Subclasses implement :meth:`AVObjective.compute_losses` and :meth:`AVObjective.export_encoders`,
and may implement :meth:`AVObjective.export_heads` (a shared audio-video space) and
:meth:`AVObjective.visualize` for the image logger.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from avssl.data.batch import AVBatch
from avssl.models.layers import COMPILE_MODES, compile_blocks
from avssl.objectives._nonfinite import (
    finite_report,
    nonfinite_stop,
    norm_layers,
    restore_stats,
    running_stats,
    zero_loss,
)
from avssl.objectives._schedule import ConstantLR, WarmupCosine, renew_schedules

if TYPE_CHECKING:
    from avssl.data.local_view import LocalViewSpec

# learned tokens and embeddings that take no weight decay (matched as parts of parameter names)
NO_DECAY_KEYS = ("norm", "pos_embed", "cls_token", "mask_token", "modality_embed")
VALIDATION_SEED = 20261129  # + batch index: the masks and views of validation batches


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Splits trainable parameters into a decayed and a non-decayed group.

    No weight decay on 1-d parameters (biases, norm scales), position embeddings, modality
    embeddings and learned tokens (``NO_DECAY_KEYS``), as in MAE / timm
    ``param_groups_weight_decay``; linear and patch-embedding weights are decayed. Frozen
    parameters are left out.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class AVObjective(pl.LightningModule):
    """Base class of the self-supervised objectives.

    Args:
        base_lr: learning rate per 256 samples; the used rate is ``base_lr * B_eff / 256`` with
            ``B_eff = batch_size * accumulate_grad_batches * world_size`` (MAE convention).
        lr: absolute learning rate; when set, ``base_lr`` scaling is not applied.
        min_lr_ratio: final learning rate of the cosine as a fraction of the peak.
        weight_decay: AdamW decoupled weight decay (not applied to norms, biases, embeddings).
        betas: AdamW betas (MAE uses (0.9, 0.95)).
        warmup_steps: linear warmup steps; when None, ``warmup_fraction`` of the total steps.
        warmup_fraction: warmup as a fraction of ``trainer.estimated_stepping_batches``.
        max_nonfinite_in_row: stop with a one-line error
            (:class:`~avssl.objectives._nonfinite.NonFiniteLossError`, exit code 2 through
            ``avssl``) after this many non-finite losses in a row; the batches
            before are skipped (see :meth:`training_step`).
        compile: ``"none"`` (default), ``"blocks"`` compiles every transformer block with
            ``torch.compile``, ``"graphs"`` also replays each compiled block as a CUDA graph on
            a GPU (``mode="reduce-overhead"``; every training and validation step is marked
            as a new one), ``"auto"`` compiles blocks only when training on a CUDA GPU (see
            :func:`avssl.models.layers.compile_blocks`; the first steps then take longer). On
            one H200 blocks made ViT-B steps 19-25 % faster (MAViL at 128 per GPU), but a MAViL
            step at 64 per GPU 13 % slower (README, "Training on many GPUs"); graphs took the
            loader-fed CAV-MAE step from 1,001 to 1,156 samples/s (README).
        clip_grad_per_param: > 0: before every optimizer step, scale each parameter's gradient
            so that its L2 norm is at most this (DINO's ``clip_gradients``, which XKD uses at
            0.3; Caron et al. 2021, https://arxiv.org/abs/2104.14294). Unlike Lightning's
            ``trainer.gradient_clip_val`` (one norm over all parameters) every tensor is
            clipped on its own. 0 = off.

    The base constructor calls ``save_hyperparameters()``, which records the constructor
    arguments of the base *and* of the subclass (Lightning walks the ``__init__`` frames), so a
    subclass must not call it again. Every argument must be JSON-serialisable (numbers,
    strings, lists, dicts) so that checkpoints load with ``torch.load(weights_only=True)``.
    """

    #: the batch members the objective trains on (``AVDataModule(modalities)`` must load them)
    modalities: tuple[str, ...] = ("audio", "video")

    def __init__(
        self,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        min_lr_ratio: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.05,
        max_nonfinite_in_row: int = 20,
        compile: str = "none",
        clip_grad_per_param: float = 0.0,
    ) -> None:
        super().__init__()
        self.base_lr, self.lr = base_lr, lr
        self.min_lr_ratio, self.weight_decay = min_lr_ratio, weight_decay
        self.betas = (float(betas[0]), float(betas[1]))
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.max_nonfinite_in_row = max_nonfinite_in_row
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.compile_policy = compile
        if clip_grad_per_param < 0:
            raise ValueError(f"clip_grad_per_param must be >= 0, got {clip_grad_per_param}")
        self.clip_grad_per_param = float(clip_grad_per_param)
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        #: True when the optimizer step last taken changed nothing: every micro-batch of its
        #: accumulation window had a non-finite loss (objectives that update state after a
        #: step, such as an EMA teacher, read it in ``on_train_batch_end``)
        self.last_step_skipped = False
        self._finite_micro_batches = 0  # finite losses since the last optimizer step
        self._norm_layers: list[Any] | None = None  # batch norms (training_step's guard)
        self._planned_schedule: dict[str, Any] | None = None  # WarmupCosine numbers of this run
        self.recipe_name: str | None = None  # set by avssl.train; stored in checkpoint["avssl"]
        self.used_lr: float | None = None
        # logger=False: the data module's hparams share names (num_frames, ...) and Lightning
        # refuses to merge differing values; on_fit_start logs ours under "model/".
        self.save_hyperparameters(logger=False)
        _check_json(dict(self.hparams))

    # ----------------------------------------------------------------- subclass interface
    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        """Returns the loss terms of one batch; key ``"loss"`` is backpropagated."""
        raise NotImplementedError

    def export_encoders(self) -> dict[str, Any]:
        """Returns ``{"audio": Module|None, "video": Module|None, "which": str, "note": str}``."""
        raise NotImplementedError

    def export_heads(self) -> dict[str, Any] | None:
        """The projection heads whose outputs a cross-modal term aligns, or None (default).

        Returns ``{"audio": Module, "video": Module, "space": str}``: each head maps the
        exported encoder's clip embedding (mean-pooled tokens, ``[B, D]``) into the space the
        objective's audio-video term compares (``space`` names that term). Stored in the
        bundle by ``avssl export`` (:mod:`avssl.heads`) and used by cross-modal retrieval.
        That space serves both retrieval directions unless the dict also holds ``"v2a"``, the
        same layout for the space video queries are compared with audio in (CrissCross).
        """
        return None

    def visualize(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        """Returns named ``[3, H, W]`` images in [0, 1] for TensorBoard (optional)."""
        return {}

    def commit_state(self) -> None:
        """Applies the state updates the last :meth:`compute_losses` in training mode staged
        (teacher centres, memory-bank rows); :meth:`training_step` calls it only when that
        batch's loss was finite on every rank, so a skipped batch leaves no trace. Validation
        never calls it. Default: nothing to apply."""

    # ----------------------------------------------------------------- optimisation
    def effective_batch_size(self) -> int | None:
        """``batch_size * accumulate_grad_batches * world_size``, or None if unknown."""
        dm = getattr(self.trainer, "datamodule", None)
        batch = getattr(dm, "batch_size", None)
        if batch is None:  # AVDataModule keeps its constructor arguments in hparams
            batch = dict(getattr(dm, "hparams", None) or {}).get("batch_size")
        if batch is None:
            return None
        return int(batch) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self) -> Any:
        lr = self.resolve_lr(self.effective_batch_size())
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("set trainer.max_steps (or max_epochs with a sized loader)")
        opt, sched = self.build_optimizer(lr, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def resolve_lr(self, eff: int | None) -> float:
        """The peak learning rate for effective batch ``eff`` (None: unknown): ``lr`` when set,
        else ``base_lr * eff / 256``; stored as ``used_lr`` and logged."""
        if self.lr is not None:
            lr = self.lr
        elif eff is None:
            lr = self.base_lr
            rank_zero_info("[avssl] batch size unknown: using base_lr without batch scaling")
        else:
            lr = self.base_lr * eff / 256
        self.used_lr = lr
        rank_zero_info(f"[avssl] lr {lr:.3g} (base_lr {self.base_lr:g}, effective batch {eff})")
        return lr

    def build_optimizer(
        self, lr: float, total_steps: int, params_of: nn.Module | None = None
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over ``params_of`` (default: this module's :meth:`optimizer_groups`) and its
        per-step warm-up + cosine schedule over ``total_steps``; a group marked
        ``"constant_lr": True`` keeps its learning rate instead."""
        fused = self.device.type == "cuda"
        if params_of is None:
            groups = self.optimizer_groups(lr)
        else:
            groups = param_groups(params_of, self.weight_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=self.betas, fused=fused)
        warmup = self.warmup_steps
        if warmup is None:
            warmup = int(round(self.warmup_fraction * total_steps))
        schedule = WarmupCosine(warmup, total_steps, self.min_lr_ratio)
        self._planned_schedule = dict(vars(schedule))  # on_train_start: kept on resume
        lambdas: list[Callable[[int], float]] = [
            ConstantLR() if g.get("constant_lr") else schedule for g in opt.param_groups
        ]
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups at peak rate ``lr`` (default: :func:`param_groups`
        of this module, all at ``lr``); a subclass may give a group its own ``"lr"`` and mark
        it ``"constant_lr": True`` (CrissCross's predictors)."""
        return param_groups(self, self.weight_decay)

    def check_before_fit(self, resuming: bool) -> None:
        """Raises ``ValueError`` (one line) when this objective cannot train as configured;
        ``resuming``: a checkpoint will be loaded first. Called before the first step."""

    def local_view_spec(
        self, num_frames: int, crop_size: int, audio_frames: int
    ) -> LocalViewSpec | None:
        """The local view this objective wants the loader to make of each training clip of
        ``num_frames`` frames at ``crop_size`` px and ``audio_frames`` fbank frames (XKD's
        teachers' view; ``AVBatch.local``), or None (the default: none). ``avssl pretrain``
        passes it to ``AVDataModule.request_local_view`` before training."""
        return None

    def on_fit_start(self) -> None:
        """Logs the hyper-parameters as ``model/<name>``; gives every rank its own RNG stream
        (masks, views) derived from the common (seeded or restored) state."""
        if self.logger is not None:
            self.logger.log_hyperparams({f"model/{k}": v for k, v in self.hparams.items()})
        if self.trainer.world_size > 1:
            seed = int(torch.randint(0, 2**62, (1,)))  # same on all ranks
            torch.manual_seed(seed + self.global_rank)
        # the module is on its device now; compiling is lazy (graphs built at the first step)
        compiled = compile_blocks(self, self.compile_policy)
        if compiled:
            rank_zero_info(f"[avssl] torch.compile: {compiled} transformer blocks")

    def mark_graph_step(self) -> None:
        """With ``compile="graphs"``: tells the CUDA-graph replays that a new step begins (the
        outputs of the last step's replays may now be overwritten). Called before every
        training and validation batch, and by code that runs the encoders outside the steps."""
        if self.compile_policy == "graphs":
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_start(self) -> None:
        """After a resume restored the checkpoint's schedule: this run's warm-up, length and
        final ratio replace the checkpoint's where they differ (one line says so;
        :func:`~avssl.objectives._schedule.renew_schedules`)."""
        if self._planned_schedule is not None:
            for note in renew_schedules(self.trainer.lr_scheduler_configs, self._planned_schedule):
                rank_zero_info(note)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.mark_graph_step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """When every micro-batch since the last step was skipped (non-finite), the gradients
        (zeros under DDP) become None, so the optimizer changes no weight, moment or step
        count; the decision is the same on every rank (the finiteness flag is all-reduced)."""
        self.last_step_skipped = self._finite_micro_batches == 0
        self._finite_micro_batches = 0
        if self.last_step_skipped:
            optimizer.zero_grad(set_to_none=True)
        elif self.clip_grad_per_param > 0:
            clip_per_param(self.parameters(), self.clip_grad_per_param)

    # ----------------------------------------------------------------- validation
    def no_validation_reason(self) -> str | None:
        """Why this objective has no validation loss (None: it has one, the default). An
        objective whose loss needs per-sample state of the training clips (a memory row, a
        cluster id) has none for unseen clips; ``avssl pretrain`` refuses a ``val_split``
        for it in one line."""
        return None

    def validation_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        """The losses :meth:`validation_step` logs: :meth:`compute_losses` by default; an
        objective whose training targets are looked up per training clip scores validation
        clips its own way (XDC)."""
        return self.compute_losses(batch)

    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        """The objective's losses on a validation batch (``data.init_args.val_split``), logged
        as ``val/<term>``, their means over the validation split (across ranks). The masks and
        views are drawn from a fixed seed per batch, so that epochs compare, and the training
        stream of random numbers is left as it was; negatives come from the rank's own batch
        (no cross-rank gather: ranks may hold different numbers of validation batches)."""
        from avssl.losses.contrastive import rank_local

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), rank_local():
            torch.manual_seed(VALIDATION_SEED + batch_idx)
            losses = self.validation_losses(batch)
        logs = {
            f"val/{k}": v.detach().float()
            for k, v in losses.items()
            if torch.is_tensor(v) and v.numel() == 1
        }
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.mark_graph_step()

    # ----------------------------------------------------------------- training step
    def training_step(self, batch: AVBatch, batch_idx: int) -> torch.Tensor:
        """The batch's losses, logged; ``"loss"`` is backpropagated. A batch whose loss is
        non-finite on any rank is skipped (counted in ``train/nonfinite_skipped``): its batch
        norm statistics are put back, no staged state is committed (:meth:`commit_state`) and it
        returns a zero loss (:mod:`._nonfinite`)."""
        if self._norm_layers is None:
            self._norm_layers = norm_layers(self)
        stats = running_stats(self._norm_layers)
        losses = self.compute_losses(batch)
        loss = losses["loss"]
        if not self._loss_is_finite(loss):
            restore_stats(stats)
            return self._skip(losses, len(batch))
        self.commit_state()
        self.nonfinite_in_row = 0
        self._finite_micro_batches += 1
        self._log_step(losses, len(batch), loss.detach())
        return loss

    def _skip(self, losses: dict[str, torch.Tensor], bsz: int) -> torch.Tensor:
        """Counts a non-finite batch, logs its terms with ``loss`` NaN (not the last step's
        value, which Lightning would repeat), stops after ``max_nonfinite_in_row`` in a row."""
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        self._log_step(losses, bsz, torch.tensor(float("nan"), device=self.device))
        if self.nonfinite_in_row >= self.max_nonfinite_in_row:
            raise nonfinite_stop(
                f"{self.nonfinite_in_row} non-finite losses in a row at step {self.global_step} "
                f"(terms: {finite_report(losses)}); lower the learning rate, check the data, or "
                "raise model.init_args.max_nonfinite_in_row",
                self.global_rank,
            )
        # not None: Lightning refuses it under DDP, and on one device with a gradient scaler
        # (16-mixed) a None ending an accumulation window would drop the window's step
        return zero_loss(self)

    def _log_step(self, losses: dict[str, torch.Tensor], bsz: int, loss: torch.Tensor) -> None:
        """Logs ``loss/<term>`` (``loss/loss`` = ``loss``), the learning rate and the skip
        counter at every step: a metric not logged at a step would show its last value again."""
        logs = {f"loss/{k}": v.detach() for k, v in losses.items() if torch.is_tensor(v)}
        logs["loss/loss"] = loss
        self.log_dict(logs, on_step=True, batch_size=bsz)
        self.log("loss", loss, prog_bar=True, batch_size=bsz, logger=False)
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            lr_now = self.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
            self.log("optim/lr", lr_now, on_step=True, batch_size=bsz)
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), on_step=True)

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """One host sync per step: the guard must know on the host whether to skip.

        Under DDP every rank must take the same decision (a rank that skips backward while the
        others all-reduce would hang), so the flag is all-reduced (MIN) first. This is the only
        ``.item()`` in the training step.
        """
        flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0.5)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from avssl import __version__

        info: dict[str, Any] = {
            "objective": f"{type(self).__module__}.{type(self).__qualname__}",
            "recipe": self.recipe_name,
            "data": None,
            "version": __version__,
        }
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "preprocessing"):
            info["data"] = dm.preprocessing()
        if dm is not None and hasattr(dm, "training_data"):
            info["train_data"] = dm.training_data()
        checkpoint["avssl"] = info
        checkpoint["avssl_state"] = {
            "nonfinite_total": self.nonfinite_total,
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("avssl") or {}
        self.recipe_name = self.recipe_name or info.get("recipe")
        state = checkpoint.get("avssl_state") or {}
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        if "rng" in state:
            set_rng_state(state["rng"])


@torch.no_grad()
def clip_per_param(params: Any, max_norm: float) -> None:
    """Scales every gradient whose L2 norm exceeds ``max_norm`` down to it, each tensor on its
    own (no host sync: norms and scales stay on the device)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states in ``weights_only``-loadable types."""
    np_state: tuple = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _check_json(hparams: dict[str, Any]) -> None:
    for k, v in hparams.items():
        try:
            json.dumps(v)
        except TypeError:
            raise ValueError(
                f"objective argument {k!r} is a {type(v).__name__}; arguments must be plain "
                "numbers/strings/lists/dicts so checkpoints load with weights_only=True"
            ) from None
