"""Staged NBHRnet training (PPG extractor, HR estimator, fused fine-tuning) with checkpoints that a
killed run resumes from exactly where it stopped."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import click
import numpy as np
import torch
from torch import nn

from model.nbhrnet import MIN_CHANNEL_STD
from training.nbhrnet import FRAMES, NBHRNet

# Loss weights of the reference: PPG loss = 0.8 (1 - r) + 0.2 MSE; fused = 0.1 PPG + 0.9 HR.
PPG_PEARSON_WEIGHT = 0.8
PPG_MSE_WEIGHT = 0.2
FUSION_PPG_WEIGHT = 0.1
FUSION_HR_WEIGHT = 0.9
# Keeps Pearson r finite (and its gradient bounded) for a flat prediction or target.
PEARSON_EPS = 1e-6
# Keras RMSprop defaults (rho 0.9, epsilon 1e-7), which the reference trained with; PyTorch's own
# defaults (alpha 0.99, eps 1e-8) would be a different optimiser.
RMSPROP_ALPHA = 0.9
RMSPROP_EPS = 1e-7
# Reference augmentation: one constant from uniform(-AUGMENT_SHIFT, AUGMENT_SHIFT) added to a
# whole normalised window.
AUGMENT_SHIFT = 0.5
# Training windows whose mean heart rate starts the HR output (see _init_hr_output).
HR_INIT_SAMPLE = 1000
# A training set is copied into GPU memory when it takes at most this share of the free memory.
PRELOAD_GPU_SHARE = 0.6

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class Stage(StrEnum):
    """What a training stage trains, and on which loss."""

    PPG = "ppg"  # encoder + PPG head, PPG loss
    HR = "hr"  # HR head alone, fed the reference PPG, HR loss
    FUSION = "fusion"  # the whole model end to end, fused loss
    ALL = "all"  # PPG, then HR, then FUSION


def stages_of(stage: Stage | str) -> list[Stage]:
    """The stages one run goes through, in order."""
    stage = Stage(stage)
    return [Stage.PPG, Stage.HR, Stage.FUSION] if stage is Stage.ALL else [stage]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    """Everything that defines a run; written to config.json and into every checkpoint.

    stage: "ppg", "hr", "fusion" or "all" (ppg -> hr -> fusion, each for `epochs`).
    epochs: epochs per stage. batch: windows per optimiser step.
    lr: RMSprop learning rate, multiplied by lr_decay every lr_step_epochs epochs (per stage).
    checkpoint_every: optimiser steps between checkpoints (one is also written at each epoch end).
    threads: torch CPU threads (None: torch's default). device: "cuda" or "cpu".
    augment: add one uniform(-0.5, 0.5) constant to each whole normalised training window.
    frames: frames per window (the model's HR head is sized for it; 60 for the paper's model).
    init_from: a checkpoint whose model weights a fresh run starts from (e.g. a "ppg" run's
        best.pt before an "hr" run); None starts from a new model.
    precision: "fp32", "bf16" (bfloat16 autocast for the forward pass; weights, optimiser state
        and losses stay float32), or "auto": bf16 where the device computes it natively (a CPU
        with AVX512-BF16 or AMX, a CUDA GPU that supports it), else fp32.
    bn_batches: training batches over which the BatchNorm statistics of the trained layers are
        recomputed exactly before each validation (0: keep the running averages; see
        recalibrate_batchnorm).
    probe_windows: training windows (a fixed sample) also scored in eval mode after each epoch,
        so that metrics.jsonl shows how far held-out figures trail the training data's.
    max_stage_minutes: end each stage at the first epoch end after this many minutes of it
        (None: run all `epochs`); the run then goes on to the next stage.
    """

    stage: str = Stage.ALL.value
    epochs: int = 50
    batch: int = 12
    lr: float = 1e-4
    lr_decay: float = 0.2
    lr_step_epochs: int = 30
    checkpoint_every: int = 20
    seed: int = 0
    threads: int | None = None
    device: str = field(default_factory=default_device)
    augment: bool = True
    frames: int = FRAMES
    init_from: str | None = None
    precision: str = "auto"
    bn_batches: int = 16
    probe_windows: int = 128
    max_stage_minutes: float | None = None

    def __post_init__(self) -> None:
        self.stage = Stage(self.stage).value
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch", "lr_step_epochs", "checkpoint_every", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bn_batches", "probe_windows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of a `precision` setting on `device` (None: plain float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    return torch.bfloat16 if native else None


def _autocast(device: str, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=dtype)


# Settings that may change between a run and its resumption without changing its results'
# meaning (where and how fast it runs, how often it saves).
RESUMABLE_CHANGES = frozenset({"threads", "device", "checkpoint_every", "max_stage_minutes"})


class WindowLike(Protocol):
    """What the trainer reads from a training.data.Window."""

    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    ppg: np.ndarray  # float32 (T,), reference PPG in [0, 1]
    hr_bpm: float


# Losses. Shapes: ppg (N, T), arbitrary units; hr (N,), beats per minute.


def pearson_r(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row: (N, T), (N, T) -> (N,)."""
    p = pred - pred.mean(dim=1, keepdim=True)
    t = target - target.mean(dim=1, keepdim=True)
    num = (p * t).sum(dim=1)
    den = torch.sqrt(p.square().sum(dim=1) + PEARSON_EPS) * torch.sqrt(
        t.square().sum(dim=1) + PEARSON_EPS
    )
    return num / den


def ppg_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.8 (1 - Pearson r) + 0.2 MSE per window, averaged over the batch: scalar, 0 when perfect,
    1.6 + 0.2 MSE for an exactly anti-correlated prediction."""
    mse = (pred - target).square().mean(dim=1)
    return (PPG_PEARSON_WEIGHT * (1 - pearson_r(pred, target)) + PPG_MSE_WEIGHT * mse).mean()


def hr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, bpm^2 (the trainer adds model.l2_penalty() to it)."""
    return (pred - target).square().mean()


def fusion_loss(
    ppg_pred: torch.Tensor, ppg_true: torch.Tensor, hr_pred: torch.Tensor, hr_true: torch.Tensor
) -> torch.Tensor:
    """0.1 PPG loss + 0.9 HR loss (the L2 penalty is added once on top, as Keras adds
    regularisation losses to a weighted multi-output loss)."""
    return FUSION_PPG_WEIGHT * ppg_loss(ppg_pred, ppg_true) + FUSION_HR_WEIGHT * hr_loss(
        hr_pred, hr_true
    )


# Batches.


@dataclass
class Batch:
    """x: float32 (N, T, 3, H, W) normalised windows, or None when the stage needs no frames;
    ppg: float32 (N, T) reference PPG; hr: float32 (N,) bpm."""

    x: torch.Tensor | None
    ppg: torch.Tensor
    hr: torch.Tensor


def normalise_windows(frames: torch.Tensor) -> torch.Tensor:
    """model.nbhrnet.normalise_window for a batch of windows, on the tensors' own device.

    frames: uint8 (N, T, H, W, 3), RGB. Returns float32 (N, T, 3, H, W): each window's colour
    channels z-scored over all its frames and pixels, a channel flatter than MIN_CHANNEL_STD as
    zeros. The result is a permuted view whose frames are channels-last in memory, the layout
    the convolutions run fastest on (flatten(0, 1) of it is a view, no copy).
    """
    x = frames.float()
    # Statistics in float64, as the numpy twin computes them: float32 sums over ~10^6 pixels
    # would cost digits of the mean.
    wide = x.double()
    mean = wide.mean(dim=(1, 2, 3), keepdim=True)
    std = wide.var(dim=(1, 2, 3), keepdim=True, correction=0).sqrt()
    scale = 1.0 / std.clamp_min(MIN_CHANNEL_STD)
    x = (x - mean.float()) * scale.float()
    return x.permute(0, 1, 4, 2, 3)


class TensorWindows:
    """Windows held as tensors on one device, so that a GPU step never waits for the host:
    frames uint8 (N, T, H, W, 3), ppg float32 (N, T), hr float32 (N,).

    Built once from any sequence of windows (e.g. a WindowCache), a chunk at a time, so the host
    never holds more than `chunk` windows of frames.
    """

    def __init__(self, windows: Sequence[WindowLike], device: str, chunk: int = 64) -> None:
        n = len(windows)
        first = np.asarray(windows[0].frames)
        self.device = device
        self.frames = torch.empty((n, *first.shape), dtype=torch.uint8, device=device)
        ppg, hr = [], []
        for start in range(0, n, chunk):
            items = [windows[i] for i in range(start, min(n, start + chunk))]
            block = np.stack([np.asarray(w.frames, np.uint8) for w in items])
            self.frames[start : start + len(items)].copy_(torch.from_numpy(block))
            ppg.extend(np.asarray(w.ppg, np.float32) for w in items)
            hr.extend(float(w.hr_bpm) for w in items)
        self.ppg = torch.from_numpy(np.stack(ppg)).to(device)
        self.hr = torch.tensor(hr, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.frames.shape[0]

    @staticmethod
    def fits(windows: Sequence[WindowLike], device: str) -> bool:
        """Whether `windows` fit on CUDA `device` with room left for training
        (PRELOAD_GPU_SHARE of its free memory); False for any other device."""
        if not device.startswith("cuda") or len(windows) == 0:
            return False
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return len(windows) * np.asarray(windows[0].frames).nbytes <= PRELOAD_GPU_SHARE * free


def load_batch(
    windows: Sequence[WindowLike] | TensorWindows,
    indices: Sequence[int],
    with_frames: bool,
    device: str,
    augment_rng: np.random.Generator | None = None,
) -> Batch:
    """Windows `indices` as tensors on `device`, each normalised as the workers normalise
    (normalise_windows), plus the reference augmentation when `augment_rng` is given."""
    if isinstance(windows, TensorWindows):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=windows.device)
        frames = windows.frames[idx] if with_frames else None
        ppg, hr = windows.ppg[idx], windows.hr[idx]
    else:
        items = [windows[i] for i in indices]
        frames = None
        if with_frames:
            frames = torch.from_numpy(np.stack([np.asarray(w.frames, np.uint8) for w in items]))
            frames = frames.to(device)
        ppg = torch.from_numpy(np.stack([np.asarray(w.ppg, np.float32) for w in items]))
        ppg = ppg.to(device)
        hr = torch.tensor([float(w.hr_bpm) for w in items], dtype=torch.float32, device=device)
    x = None
    if frames is not None:
        x = normalise_windows(frames)
        if augment_rng is not None:
            shift = augment_rng.uniform(-AUGMENT_SHIFT, AUGMENT_SHIFT, size=len(indices))
            shift_t = torch.from_numpy(shift.astype(np.float32)).to(x.device)
            x = x + shift_t[:, None, None, None, None]
    return Batch(x, ppg, hr)


def epoch_order(n: int, seed: int, stage_index: int, epoch: int) -> np.ndarray:
    """The shuffled window order of one epoch, a function of (seed, stage, epoch) alone, so that a
    resumed epoch can skip the batches it already did."""
    return np.random.default_rng([seed, stage_index, epoch]).permutation(n)


# Stages.


def trained_modules(model: NBHRNet, stage: Stage) -> list[nn.Module]:
    """The parts of the model that `stage` trains."""
    return {
        Stage.PPG: [model.encoder, model.head.ppg],
        Stage.HR: [model.head.hr],
        Stage.FUSION: [model],
    }[stage]


def set_train_mode(model: NBHRNet, stage: Stage) -> list[nn.Parameter]:
    """Unfreeze and put in train mode what `stage` trains; freeze the rest and keep it in eval
    mode (frozen BatchNorms must not update their running statistics). Returns the trained
    parameters."""
    model.requires_grad_(False)
    model.eval()
    for module in trained_modules(model, stage):
        module.requires_grad_(True)
        module.train()
    return [p for p in model.parameters() if p.requires_grad]


def stage_outputs(
    model: NBHRNet, stage: Stage, batch: Batch, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(ppg, hr) predictions as far as `stage` needs them.

    The HR stage feeds the HR head the reference PPG instead of the PPG head's estimate: it is
    what the reference trains the HR estimator on, it is cheap (no CNN, no frames loaded), and
    the fusion stage then adapts the HR head to the estimated PPG.
    dtype: the autocast dtype of the CNN encoder (None: float32). The recurrent head always runs
    in float32: it costs little next to the CNN, and cuDNN's LSTMs take bfloat16 only in recent
    versions. Outputs are float32.
    """
    if stage is Stage.HR:
        return None, model.head.hr(batch.ppg)
    assert batch.x is not None
    t = batch.x.shape[1]
    with _autocast(str(batch.ppg.device), dtype):
        feats = model.encoder(batch.x.flatten(0, 1))
    ppg = model.head.ppg(feats.float().reshape(-1, t, feats.shape[-1]))
    return ppg, (None if stage is Stage.PPG else model.head.hr(ppg))


def stage_loss(
    stage: Stage, batch: Batch, ppg: torch.Tensor | None, hr: torch.Tensor | None
) -> torch.Tensor:
    """The data term of `stage`'s loss (without the L2 penalty): scalar tensor."""
    if stage is Stage.PPG:
        return ppg_loss(ppg, batch.ppg)
    if stage is Stage.HR:
        return hr_loss(hr, batch.hr)
    return fusion_loss(ppg, batch.ppg, hr, batch.hr)


@torch.no_grad()
def evaluate(
    model: NBHRNet,
    stage: Stage,
    windows: Sequence[WindowLike] | TensorWindows,
    batch: int,
    device: str,
    dtype: torch.dtype | None = None,
    indices: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """Validation metrics of `stage` over `windows` (those at `indices` if given), in eval mode.

    Returns val_loss (the stage's loss without the L2 penalty, window-weighted mean),
    val_hr_mae_bpm, val_hr_mape_pct (mean absolute error in percent of the reference HR) and
    val_ppg_r (mean Pearson r; None in the HR stage, which has no PPG estimate). In the HR stage
    the HR head is fed the reference PPG, as it is trained.
    """
    order = np.arange(len(windows)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(order) == 0:
        return {
            "val_loss": None,
            "val_hr_mae_bpm": None,
            "val_hr_mape_pct": None,
            "val_ppg_r": None,
        }
    model.eval()
    stage_eval = Stage.HR if stage is Stage.HR else Stage.FUSION
    loss_sum = mae_sum = ape_sum = r_sum = 0.0
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        b = load_batch(windows, idx, stage is not Stage.HR, device)
        ppg, hr = stage_outputs(model, stage_eval, b, dtype)
        n = len(idx)
        loss_sum += float(stage_loss(stage, b, ppg, hr)) * n
        mae_sum += float((hr - b.hr).abs().sum())
        ape_sum += float(((hr - b.hr).abs() / b.hr).sum()) * 100.0
        if ppg is not None:
            r_sum += float(pearson_r(ppg, b.ppg).sum())
    n = len(order)
    return {
        "val_loss": loss_sum / n,
        "val_hr_mae_bpm": mae_sum / n,
        "val_hr_mape_pct": ape_sum / n,
        "val_ppg_r": None if stage is Stage.HR else r_sum / n,
    }


@torch.no_grad()
def recalibrate_batchnorm(
    model: NBHRNet,
    stage: Stage,
    windows: Sequence[WindowLike] | TensorWindows,
    indices: Sequence[int],
    batch: int,
    device: str,
    dtype: torch.dtype | None = None,
) -> None:
    """Set the running statistics of the BatchNorm layers that `stage` trains to their exact
    averages over the windows at `indices` (no augmentation), computed with the current weights;
    leaves the model in eval mode.

    The running averages of training use momentum 0.01 (Keras'), i.e. they average over the
    last ~100 steps while the weights below them move every step: validation, best.pt and the
    exported model would see statistics of an older network. Recomputing them is cheap next to
    an epoch and makes eval-mode figures those of the weights that are saved.
    """
    norms = [
        m
        for part in trained_modules(model, stage)
        for m in part.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if not norms or len(indices) == 0:
        return
    set_train_mode(model, stage)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # draws nothing from the RNG, so a resumed run replays the same dropout
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    order = np.asarray(indices, dtype=np.int64)
    for start in range(0, len(order), batch):
        b = load_batch(windows, order[start : start + batch], stage is not Stage.HR, device)
        stage_outputs(model, stage, b, dtype)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _selection_score(stage: Stage, metrics: dict[str, Any]) -> float | None:
    """What best.pt minimises: the PPG loss in the PPG stage, the HR MAE after it."""
    return metrics["val_loss"] if stage is Stage.PPG else metrics["val_hr_mae_bpm"]


# Checkpoints.


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> NBHRNet:
    """The model of a checkpoint.pt or best.pt, on the CPU, in eval mode."""
    # weights_only: a checkpoint is tensors and plain containers; never unpickle arbitrary code.
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = NBHRNet(frames=ckpt["config"]["frames"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


@dataclass
class _Position:
    """Where a run stands: stages[stage_index], `epoch` epochs of it done, `step` batches of the
    next epoch done; `global_step` optimiser steps in the whole run."""

    stage_index: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0


def _truncate_metrics(path: Path, stages: list[Stage], pos: _Position) -> None:
    """Drop metric lines of epochs after the checkpoint (written before a kill that came ahead
    of the epoch-end checkpoint), so that a resumed run does not log an epoch twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        done = (stages.index(Stage(row["stage"])), row["epoch"])
        if done <= (pos.stage_index, pos.epoch):
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    mine = asdict(cfg)
    changed = [
        f"{k}: {saved.get(k)!r} -> {mine[k]!r}"
        for k in mine
        if k not in RESUMABLE_CHANGES and saved.get(k) != mine[k]
    ]
    if changed:
        raise ValueError("cannot resume with a different configuration: " + "; ".join(changed))


def train(
    cfg: TrainConfig,
    train_set: Sequence[WindowLike],
    val_set: Sequence[WindowLike],
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train NBHRnet through the stages of `cfg`, writing to `run_dir`:
    config.json, metrics.jsonl (one line per epoch), checkpoint.pt (every cfg.checkpoint_every
    steps and at each epoch end, written atomically) and best.pt (best validation score of the
    current stage: PPG loss in the PPG stage, HR MAE in the others).

    train_set, val_set: sequences of training.data.Window (e.g. WindowCache), each with
        cfg.frames frames.
    resume: continue from run_dir/checkpoint.pt at the stage, epoch and batch it recorded (a
        fresh start if there is none); the configuration must match the checkpoint's.
    on_step: called after every optimiser step with (global step, loss); an exception raised
        from it stops training as a kill would (used by tests).
    Returns {"steps": optimiser steps in the whole run, "losses": the training loss of each step
    taken by this call, "best": best score of the last stage, "metrics": the last epoch's line}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ValueError("no training windows")
    frames = train_set[0].frames.shape[0]
    if frames != cfg.frames:
        raise ValueError(f"windows have {frames} frames, the config says {cfg.frames}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stages = stages_of(cfg.stage)
    ckpt_path = run_dir / CHECKPOINT
    metrics_path = run_dir / METRICS

    torch.manual_seed(cfg.seed)
    model = NBHRNet(frames=cfg.frames)
    ckpt: dict[str, Any] | None = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _check_resumable(cfg, ckpt["config"])
        model.load_state_dict(ckpt["model"])
        pos = _Position(**ckpt["position"])
        best = ckpt["best"]
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        _truncate_metrics(metrics_path, stages, pos)
    else:
        if ckpt_path.exists() and not resume:
            raise FileExistsError(f"{ckpt_path} exists: resume it or use another run directory")
        if cfg.init_from:
            model.load_state_dict(load_checkpoint(Path(cfg.init_from)).state_dict())
        pos = _Position()
        best = None
        metrics_path.unlink(missing_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    model.to(cfg.device)
    # Convolutions run markedly faster on NHWC tensors (oneDNN measured: 5.6 -> 4.2 s per
    # batch-4 step with bf16 on 2 cores; cuDNN's tensor-core kernels want NHWC too); the saved
    # state_dict is layout-free, and normalise_windows already yields NHWC frames.
    model.to(memory_format=torch.channels_last)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # one input shape all run long
    dtype = autocast_dtype(cfg.precision, cfg.device)
    hr_untrained = _hr_head_untrained(cfg, stages, pos)
    train_data: Sequence[WindowLike] | TensorWindows = train_set
    val_data: Sequence[WindowLike] | TensorWindows = val_set
    needs_frames = any(s is not Stage.HR for s in stages[pos.stage_index :])
    if needs_frames and TensorWindows.fits(train_set, cfg.device):
        train_data = TensorWindows(train_set, cfg.device)
        if len(val_set) and TensorWindows.fits(val_set, cfg.device):
            val_data = TensorWindows(val_set, cfg.device)
    # A fixed sample of training windows, scored like the validation set after each epoch.
    probe = np.random.default_rng([cfg.seed, 1]).permutation(len(train_set))[: cfg.probe_windows]

    def save(optimizer: Any, scheduler: Any) -> None:
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer else None,
                "scheduler": scheduler.state_dict() if scheduler else None,
                "stage": stages[pos.stage_index].value if pos.stage_index < len(stages) else None,
                "position": asdict(pos),
                "best": best,
                # Dropout draws from these; data order and augmentation are seeded per batch.
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": asdict(cfg),
            },
            ckpt_path,
        )

    losses: list[float] = []
    last: dict[str, Any] = {}
    n_batches = math.ceil(len(train_set) / cfg.batch)
    while pos.stage_index < len(stages):
        stage = stages[pos.stage_index]
        params = set_train_mode(model, stage)
        optimizer = torch.optim.RMSprop(params, lr=cfg.lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_decay)
        fresh_stage = pos.epoch == 0 and pos.step == 0
        if ckpt is not None and ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        ckpt = None
        if fresh_stage and stage is not Stage.PPG and hr_untrained:
            _init_hr_output(model, train_set)
        hr_untrained = hr_untrained and stage is Stage.PPG
        if fresh_stage:
            best = None
        stage_started = time.monotonic()

        while pos.epoch < cfg.epochs:
            set_train_mode(model, stage)
            started = time.monotonic()
            order = epoch_order(len(train_set), cfg.seed, pos.stage_index, pos.epoch)
            epoch_losses: list[float] = []
            bar = _Progress(
                f"{stage.value} {pos.epoch + 1}/{cfg.epochs}", n_batches, pos.step, progress
            )
            while pos.step < n_batches:
                idx = order[pos.step * cfg.batch : (pos.step + 1) * cfg.batch]
                rng = np.random.default_rng([cfg.seed, pos.stage_index, pos.epoch, pos.step])
                b = load_batch(
                    train_data,
                    idx,
                    stage is not Stage.HR,
                    cfg.device,
                    rng if cfg.augment else None,
                )
                ppg, hr = stage_outputs(model, stage, b, dtype)
                loss = stage_loss(stage, b, ppg, hr)
                if stage is not Stage.PPG:
                    loss = loss + model.l2_penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                losses.append(value)
                epoch_losses.append(value)
                pos.step += 1
                pos.global_step += 1
                bar.update(value)
                if pos.global_step % cfg.checkpoint_every == 0:
                    save(optimizer, scheduler)
                if on_step is not None:
                    on_step(pos.global_step, value)
            recal = np.random.default_rng([cfg.seed, pos.stage_index, pos.epoch, 1]).permutation(
                len(train_set)
            )[: cfg.bn_batches * cfg.batch]
            recalibrate_batchnorm(model, stage, train_data, recal, cfg.batch, cfg.device, dtype)
            metrics = evaluate(model, stage, val_data, cfg.batch, cfg.device, dtype)
            fit = evaluate(model, stage, train_data, cfg.batch, cfg.device, dtype, indices=probe)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():
                # An epoch resumed after its last batch has no optimiser step in this process;
                # the schedule itself is restored from the checkpoint and stays right.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            pos.epoch += 1
            pos.step = 0
            last = {
                "stage": stage.value,
                "epoch": pos.epoch,
                "step": pos.global_step,
                # Mean over the batches this process ran (all of them unless it was resumed
                # mid-epoch).
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                **metrics,
                # The same figures, in eval mode, on the fixed sample of training windows.
                "train_hr_mae_bpm": fit["val_hr_mae_bpm"],
                "train_ppg_r": fit["val_ppg_r"],
                "lr": lr,
                "seconds": round(time.monotonic() - started, 3),
            }
            bar.finish(last)
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
            score = _selection_score(stage, metrics)
            if score is not None and (best is None or score < best):
                best = score
                _save_atomic(
                    {"model": model.state_dict(), "config": asdict(cfg), **last}, (run_dir / BEST)
                )
            out_of_time = (
                cfg.max_stage_minutes is not None
                and time.monotonic() - stage_started > 60.0 * cfg.max_stage_minutes
            )
            if out_of_time:
                break
            if pos.epoch < cfg.epochs:
                save(optimizer, scheduler)
        pos.stage_index += 1
        pos.epoch = 0
        save(None, None)
    model.eval()
    return {"steps": pos.global_step, "losses": losses, "best": best, "metrics": last}


def _hr_head_untrained(cfg: TrainConfig, stages: list[Stage], pos: _Position) -> bool:
    """Whether the HR head is still as initialised when the run reaches stage pos.stage_index:
    no earlier stage of this run trained it, and the model does not start from a checkpoint
    whose run trained it (a "ppg" run's best.pt leaves it untouched)."""
    if any(s is not Stage.PPG for s in stages[: pos.stage_index]):
        return False
    if cfg.init_from is None:
        return True
    ckpt = torch.load(Path(cfg.init_from), map_location="cpu", weights_only=True)
    return ckpt.get("stage") == Stage.PPG.value


@torch.no_grad()
def _init_hr_output(model: NBHRNet, train_set: Sequence[WindowLike]) -> None:
    """Start the HR output at the mean training heart rate.

    A new HR head outputs about 0 bpm; at lr 1e-4 RMSprop moves its weights by ~1e-4 per step,
    so it would spend tens of thousands of steps only climbing to ~140 bpm. Starting the output
    bias at the mean label leaves the optimiser the actual task.
    """
    # A sample of evenly spaced windows: reading every window of a large cache for a mean
    # would cost a pass over all its frames.
    idx = np.linspace(0, len(train_set) - 1, min(len(train_set), HR_INIT_SAMPLE)).astype(int)
    mean_hr = float(np.mean([float(train_set[i].hr_bpm) for i in idx]))
    model.head.hr.out.bias.fill_(mean_hr)


class _Progress:
    """One stderr progress bar per epoch (click.progressbar), quiet when disabled."""

    def __init__(self, label: str, total: int, done: int, enabled: bool) -> None:
        self._bar = None
        self._loss = float("nan")
        if enabled:
            self._bar = click.progressbar(
                length=total,
                label=label,
                file=sys.stderr,
                item_show_func=lambda _: f"loss {self._loss:.4g}",
            )
            self._bar.__enter__()
            self._bar.update(done)

    def update(self, loss: float) -> None:
        self._loss = loss
        if self._bar is not None:
            self._bar.update(1)

    def finish(self, metrics: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.__exit__(None, None, None)
        mae = metrics["val_hr_mae_bpm"]
        click.echo(
            f"  train loss {metrics['train_loss']:.4g}  val loss {_fmt(metrics['val_loss'])}"
            f"  val HR MAE {_fmt(mae)} bpm  val PPG r {_fmt(metrics['val_ppg_r'])}",
            err=True,
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"
