"""`nbhr train`, `nbhr export-onnx`, `nbhr distill` and `nbhr quantize`. Torch and the training
modules are imported inside the commands, so that the rest of the command line runs where torch
is not installed."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

FORMATS = ("nbhr", "ubfc", "synthetic", "db")
# training.train.Stage, spelled out here because importing it would import torch.
STAGES = ("ppg", "hr", "fusion", "all")
PRECISIONS = ("auto", "fp32", "bf16")  # training.train.PRECISIONS


def _require_training_deps() -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(
            'training needs torch and onnx: pip install -e ".[train]"'
        ) from None


def _source_windows(
    fmt: str,
    data: str,
    seed: int,
    synthetic: tuple[int, float] = (8, 30.0),
    hop: int = 60,
    jobs: int = 1,
) -> Iterable[Any]:
    """The windows of one data source, as training.data yields them; `synthetic` is (subjects,
    seconds per recording) of a synthetic archive, `hop` the step between windows in frames,
    `jobs` the processes preparing NBHR-layout and synthetic data."""
    from training import data as d

    if fmt == "nbhr":
        return d.nbhr_windows(Path(data), hop=hop, jobs=jobs)
    if fmt == "ubfc":
        return d.ubfc_windows(Path(data), hop=hop)
    if fmt == "db":
        return d.db_windows(data, hop=hop)
    subjects, seconds = synthetic
    return d.synthetic_windows(
        Path(data), subjects=subjects, seconds=seconds, seed=seed, hop=hop, jobs=jobs
    )


@click.command("train")
@click.option(
    "--data",
    required=True,
    help="Dataset root (nbhr, ubfc), database URL (db), or the directory to write the synthetic"
    " archive into (synthetic).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Data source.")
@click.option("--stage", type=click.Choice(STAGES), default="all", show_default=True)
@click.option("--epochs", type=int, default=50, show_default=True, help="Epochs per stage.")
@click.option("--batch", type=int, default=12, show_default=True, help="Windows per step.")
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/nbhrnet"),
    show_default=True,
    help="Run directory: config, metrics, checkpoints.",
)
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.pt.")
@click.option(
    "--lr", type=float, default=1e-4, show_default=True, help="RMSprop learning rate (per stage)."
)
@click.option(
    "--lr-step-epochs",
    type=int,
    default=30,
    show_default=True,
    help="Epochs between learning-rate decays (x0.2).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="Forward pass in bfloat16 autocast (bf16), float32 (fp32), or bf16 where the hardware"
    " has it (auto).",
)
@click.option(
    "--synthetic-subjects",
    type=int,
    default=8,
    show_default=True,
    help="Infants in a synthetic archive (2 recordings each).",
)
@click.option(
    "--synthetic-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds per synthetic recording.",
)
@click.option(
    "--hop",
    type=click.IntRange(1, 60),
    default=60,
    show_default=True,
    help="Frames between the starts of training windows; below 60 they overlap, so the same"
    " frames come with phase-shifted targets (validation keeps one window per 2 s).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes that render synthetic data and decode/crop videos for the window cache.",
)
@click.option(
    "--max-stage-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="End each stage at the first epoch end after this many minutes (default: all epochs).",
)
@click.option(
    "--bn-batches",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Training batches over which BatchNorm statistics are recomputed before each"
    " validation (0: keep the running averages).",
)
@click.option(
    "--prepare-only",
    is_flag=True,
    help="Build the window cache (decode, track, crop) and stop; a later run trains from it.",
)
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Window cache, reused when present (default RUN_DIR/cache).",
)
@click.option(
    "--init",
    "init_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Start from this checkpoint's weights (e.g. a ppg run's best.pt).",
)
def train(
    data: str,
    fmt: str,
    stage: str,
    epochs: int,
    batch: int,
    run_dir: Path,
    resume: bool,
    lr: float,
    lr_step_epochs: int,
    precision: str,
    synthetic_subjects: int,
    synthetic_seconds: float,
    hop: int,
    jobs: int,
    max_stage_minutes: float | None,
    bn_batches: int,
    prepare_only: bool,
    val_fraction: float,
    seed: int,
    threads: int | None,
    cache: Path | None,
    init_from: Path | None,
) -> None:
    """Train NBHRnet on windows from one data source, split by subject."""
    _require_training_deps()
    from training.data import WindowCache, subject_split
    from training.train import TrainConfig
    from training.train import train as run_training

    cache = cache or run_dir / "cache"
    try:
        windows = WindowCache.open(cache)
    except FileNotFoundError:  # none yet, or an unfinished write: (re)build it
        windows = WindowCache.write(
            cache,
            _source_windows(fmt, data, seed, (synthetic_subjects, synthetic_seconds), hop, jobs),
        )
    try:
        train_set, val_set = subject_split(windows, val_fraction=val_fraction, seed=seed)
    except ValueError as exc:
        raise click.ClickException(f"{cache}: {exc}") from None
    # Overlapping validation windows would repeat the same frames: score one per 2 s.
    val_set = [w for w in val_set if _on_window_grid(w.t_start)]
    click.echo(
        f"{len(train_set)} training and {len(val_set)} validation windows (cache {cache})",
        err=True,
    )
    if prepare_only:
        click.echo(json.dumps({"cache": str(cache), "train": len(train_set), "val": len(val_set)}))
        return
    cfg = TrainConfig(
        stage=stage,
        epochs=epochs,
        batch=batch,
        lr=lr,
        lr_step_epochs=lr_step_epochs,
        precision=precision,
        seed=seed,
        threads=threads,
        frames=train_set[0].frames.shape[0],
        init_from=str(init_from) if init_from else None,
        max_stage_minutes=max_stage_minutes,
        bn_batches=bn_batches,
    )
    try:
        result = run_training(cfg, train_set, val_set, run_dir, resume=resume)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"run_dir": str(run_dir), "steps": result["steps"], **result["metrics"]}))


def _on_window_grid(t_start: float, window_s: float = 2.0) -> bool:
    return abs(t_start / window_s - round(t_start / window_s)) < 1e-6


@click.command("export-onnx")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file."
)
@click.option("--json", "as_json", is_flag=True, help='{"path": file, "sha256": hex}.')
def export_onnx(checkpoint: Path, out: Path, as_json: bool) -> None:
    """Export a training checkpoint (checkpoint.pt or best.pt) to ONNX, with its per-frame
    encoder and per-window head beside it (FILE -> FILE.encoder.onnx, FILE.head.onnx, which let
    workers share frame features between overlapping windows); prints the model's SHA-256."""
    _require_training_deps()
    from model.nbhrnet import file_sha256
    from training.export import export_onnx as export
    from training.train import load_checkpoint

    model = load_checkpoint(checkpoint)
    export(model, out, frames=model.frames)
    digest = file_sha256(out)
    if as_json:
        click.echo(json.dumps({"path": str(out), "sha256": digest}))
        return
    click.echo(f"{out} sha256 {digest}")


@click.command("quantize")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument(
    "calibration", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--roi", default="face", show_default=True, help="face, full or X,Y,W,H.")
@click.option(
    "--frames", default=600, show_default=True, type=click.IntRange(30), help="Calibration frames."
)
@click.option(
    "--method",
    type=click.Choice(["percentile", "minmax"]),
    default="percentile",
    show_default=True,
    help="How activation ranges are read off the calibration frames.",
)
@click.option("--json", "as_json", is_flag=True, help="The file and its figures as JSON.")
def quantize(
    model: Path, calibration: tuple[Path, ...], roi: str, frames: int, method: str, as_json: bool
) -> None:
    """Quantise an exported NBHRnet's encoder to int8 (FILE -> FILE.encoder.int8.onnx),
    calibrated on face crops of the videos in CALIBRATION (folders are searched recursively)
    cut as workers cut them; `--nbhrnet-precision int8` (or auto) then runs it. Where `nbhr
    distill` has made FILE.encoder.relu.onnx, that ReLU encoder is the one quantised (its
    channel ranges equalised first; needs torch), else the exported encoder. Prints the
    file's SHA-256 and how far its features are from the fp32 encoder's on the calibration
    frames."""
    from model.nbhrnet import relu_encoder_path

    if relu_encoder_path(model).is_file():
        _require_training_deps()  # the ReLU student is equalised in torch first
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise click.ClickException('quantize needs onnx: pip install -e ".[train]"') from None
    import numpy as np

    from model.nbhrnet import NBHRNetRunner, file_sha256
    from scheduler.discover import find_videos
    from training.quantize import calibration_frames, quantize_encoder

    videos = [v for c in calibration for v in (find_videos(c) if c.is_dir() else [c])]
    try:
        calib = calibration_frames(videos, roi=roi, max_frames=frames)
        out = quantize_encoder(model, calib, method=method)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    fp32 = NBHRNetRunner(model).encode_frames(calib.frames)
    int8 = NBHRNetRunner(model, precision="int8").encode_frames(calib.frames)
    cosine = np.sum(fp32 * int8, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    digest = file_sha256(out)
    if as_json:
        figures = {"frames": len(calib.frames), "videos": len(calib.sources), "method": method}
        cos = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}
        click.echo(json.dumps({"path": str(out), "sha256": digest} | figures | cos))
        return
    click.echo(
        f"{out} sha256 {digest}: {len(calib.frames)} frames of {len(calib.sources)} videos; "
        f"feature cosine to fp32 mean {cosine.mean():.4f}, min {cosine.min():.4f}"
    )


@click.command("distill")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--roi", default="face", show_default=True, help="face, full or X,Y,W,H.")
@click.option(
    "--frames",
    default=18000,
    show_default=True,
    type=click.IntRange(64),
    help="Face-crop frames to distil on (0.2 MB each in memory).",
)
@click.option(
    "--minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Wall time of the training loop (the learning rate decays over it).",
)
@click.option(
    "--lr",
    default=2e-4,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Adam's starting learning rate.",
)
@click.option("--batch", default=32, show_default=True, type=click.IntRange(2), help="Frames.")
@click.option("--seed", default=0, show_default=True, help="Batch order.")
@click.option("--threads", default=0, show_default=True, help="Torch threads (0: all cores).")
@click.option(
    "--first-stride",
    default=1,
    show_default=True,
    type=click.IntRange(1, 2),
    help="2: the student downsamples in its first convolution (which int8 runs in float) "
    "instead of its second, a quarter of that layer's work; more to distil.",
)
@click.option("--json", "as_json", is_flag=True, help="The file and its figures as JSON.")
def distill(
    model: Path,
    data: tuple[Path, ...],
    roi: str,
    frames: int,
    minutes: float,
    lr: float,
    batch: int,
    seed: int,
    threads: int,
    first_stride: int,
    as_json: bool,
) -> None:
    """Distil an exported NBHRnet's encoder (FILE.encoder.onnx) into an all-ReLU encoder that
    int8 runs without leaving int8 (FILE -> FILE.encoder.relu.onnx), on face crops of the
    videos in DATA (folders are searched recursively) cut as workers cut them. `nbhr
    quantize FILE ...` then quantises it instead of the exported encoder. Prints the held-out
    feature error before and after, each feature weighted as the head weighs it."""
    _require_training_deps()
    import torch

    from model.nbhrnet import companion_paths, file_sha256
    from scheduler.discover import find_videos
    from training.distill import distill as run_distillation
    from training.distill import (
        encoder_from_onnx,
        export_student,
        head_feature_scale,
        relu_student,
        teacher_features,
    )
    from training.quantize import calibration_frames

    if threads:
        torch.set_num_threads(threads)
    encoder, head = companion_paths(model)
    if not (encoder.is_file() and head.is_file()):
        raise click.ClickException(f"{model.name} has no encoder and head files: export it again")
    videos = [v for d in data for v in (find_videos(d) if d.is_dir() else [d])]
    log = (lambda m: click.echo(m, err=True)) if not as_json else None
    try:
        crops = calibration_frames(videos, roi=roi, max_frames=frames, stride=1)
        student = relu_student(encoder_from_onnx(encoder), first_stride)
        targets = teacher_features(encoder, crops.frames, threads)
        scale = head_feature_scale(head)
        done = run_distillation(
            student, crops.frames, targets, scale, minutes, lr=lr, batch=batch, seed=seed, log=log
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    note = (
        f"{done.frames} face-crop frames of {len(crops.sources)} videos, {done.steps} Adam steps "
        f"(lr {lr:g}, batch {batch}, seed {seed}, first stride {first_stride}); held-out "
        f"feature nmse {done.nmse_start:.4f} -> {done.nmse_end:.4f} on {done.holdout} frames"
    )
    out = export_student(student, model, note)
    digest = file_sha256(out)
    if as_json:
        figures = {"videos": len(crops.sources), "seconds": round(done.seconds, 1)}
        stats = {k: getattr(done, k) for k in ("frames", "holdout", "steps")}
        nmse = {"nmse_start": done.nmse_start, "nmse_end": done.nmse_end}
        click.echo(json.dumps({"path": str(out), "sha256": digest} | figures | stats | nmse))
        return
    click.echo(f"{out} sha256 {digest}: {note}")
