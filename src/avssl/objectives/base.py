"""The small base LightningModule every objective derives from (DESIGN sections 3 and 9).

It owns only what all objectives share: the optimisation (AdamW with parameter groups, the
warm-up + cosine schedule, learning-rate scaling by the effective batch; :mod:`._optim`),
logging of the loss dict, a non-finite-loss guard (:mod:`._nonfinite`), validation, and the
``checkpoint["avssl"]`` provenance block read by ``avssl.export`` (:mod:`._state`).

Subclasses implement :meth:`AVObjective.compute_losses` and :meth:`AVObjective.export_encoders`,
and may implement :meth:`AVObjective.export_heads` (a shared audio-video space) and
:meth:`AVObjective.visualize` for the image logger.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info

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
from avssl.objectives._optim import (  # noqa: F401  (re-exported: objectives and tests use them)
    NO_DECAY_KEYS,
    OptimMixin,
    clip_per_param,
    param_groups,
)
from avssl.objectives._schedule import WarmupCosine  # noqa: F401  (re-exported)
from avssl.objectives._state import check_json, provenance, rng_state, set_rng_state

if TYPE_CHECKING:
    from avssl.data.local_view import LocalViewSpec

VALIDATION_SEED = 20261129  # + batch index: the masks and views of validation batches


class AVObjective(OptimMixin):
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
        #: step, such as an EMA teacher, read it once the step is taken: XKD's ``optimizer_step``)
        self.last_step_skipped = False
        self._micro_batches = 0  # training steps since the last optimizer step
        self._finite_micro_batches = 0  # of them, those with a finite loss
        self._norm_layers: list[Any] | None = None  # batch norms (training_step's guard)
        self._planned_schedule: dict[str, Any] | None = None  # WarmupCosine numbers of this run
        self.recipe_name: str | None = None  # set by avssl.train; stored in checkpoint["avssl"]
        self.used_lr: float | None = None
        # logger=False: the data module's hparams share names (num_frames, ...) and Lightning
        # refuses to merge differing values; on_fit_start logs ours under "model/".
        self.save_hyperparameters(logger=False)
        check_json(dict(self.hparams))

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

    # ----------------------------------------------------------------- set-up
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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.mark_graph_step()

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
        self._micro_batches += 1
        losses = self.compute_losses(batch)
        loss = losses["loss"]
        finite, value = self._check_loss(loss)
        if not finite:
            restore_stats(stats)
            return self._skip(losses, len(batch))
        self.commit_state()
        self.nonfinite_in_row = 0
        self._finite_micro_batches += 1
        self._log_step(losses, len(batch), loss.detach(), value)
        return loss

    def _skip(self, losses: dict[str, torch.Tensor], bsz: int) -> torch.Tensor:
        """Counts a non-finite batch, logs its terms with ``loss`` NaN (not the last step's
        value, which Lightning would repeat), stops after ``max_nonfinite_in_row`` in a row."""
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        self._log_step(losses, bsz, torch.tensor(float("nan"), device=self.device), math.nan)
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

    def _log_step(
        self, losses: dict[str, torch.Tensor], bsz: int, loss: torch.Tensor, value: float
    ) -> None:
        """Logs ``loss/<term>`` (``loss/loss`` = ``loss``), the learning rate and the skip
        counter at every step: a metric not logged at a step would show its last value again.
        The host's numbers (``value``: the loss the guard read, the rate, the counter) go in as
        CPU tensors: Lightning reads the progress bar's values with ``.item()`` at every
        batch's end, which for a device tensor would wait for the backward pass."""
        logs = {f"loss/{k}": v.detach() for k, v in losses.items() if torch.is_tensor(v)}
        logs["loss/loss"] = loss
        self.log_dict(logs, on_step=True, batch_size=bsz)
        self.log("loss", torch.tensor(value), prog_bar=True, batch_size=bsz, logger=False)
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            lr_now = self.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
            self.log("optim/lr", torch.tensor(float(lr_now)), on_step=True, batch_size=bsz)
        skipped = torch.tensor(float(self.nonfinite_total))
        self.log("train/nonfinite_skipped", skipped, on_step=True, batch_size=bsz)

    def _check_loss(self, loss: torch.Tensor) -> tuple[bool, float]:
        """Whether ``loss`` is finite on every rank, and its value on this one: one host sync
        per step, as the guard must know on the host whether to skip.

        Under DDP every rank must take the same decision (a rank that skips backward while the
        others all-reduce would hang), so the flag is all-reduced (MIN) first; the value comes
        back in the same copy. This is the only ``.item()`` of a training step whose values
        Lightning does not write (``tests/objectives/test_host_syncs.py``).
        """
        loss = loss.detach().float().reshape(1)
        flag = torch.isfinite(loss).to(torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok, value = torch.cat([flag, loss]).tolist()
        return ok > 0.5, value

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the provenance block ``checkpoint["avssl"]`` (objective, recipe, the data's
        preprocessing, version; read by ``avssl.export``) and ``checkpoint["avssl_state"]``
        (the skip counter, the random generators)."""
        trainer = self._trainer
        checkpoint["avssl"] = provenance(self, getattr(trainer, "datamodule", None))
        checkpoint["avssl_state"] = {"nonfinite_total": self.nonfinite_total, "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("avssl") or {}
        self.recipe_name = self.recipe_name or info.get("recipe")
        state = checkpoint.get("avssl_state") or {}
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        if "rng" in state:
            set_rng_state(state["rng"])
