"""NBHRnet training: losses, that a short real run learns, kill and resume, checkpoint -> ONNX,
and the two commands. Small model (8 frames of 32 x 32) so the file runs in seconds."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model.nbhrnet import NBHRNetRunner, normalise_window
from training import cli
from training.data import Window
from training.nbhrnet import NBHRNet
from training.train import (
    BEST,
    CHECKPOINT,
    METRICS,
    Stage,
    TensorWindows,
    TrainConfig,
    autocast_dtype,
    fusion_loss,
    hr_loss,
    load_batch,
    load_checkpoint,
    normalise_windows,
    ppg_loss,
    recalibrate_batchnorm,
    train,
)

FRAMES = 8
SIZE = 32
FPS = 30.0
THREADS = 2
# Above the reference's 1e-4 so that a few dozen steps show learning.
LR = 3e-3


def make_windows(n: int, seed: int, hr_spread: float = 0.0, frames: int = FRAMES) -> list[Window]:
    """n windows whose colour follows a sine at the window's heart rate (140 +- hr_spread bpm),
    random phase, channel weights like a pulse (green strongest) and sensor noise; the
    reference PPG is that sine min-max scaled over the window."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hr = 140.0 + rng.uniform(-hr_spread, hr_spread)
        t = np.arange(frames) / FPS
        pulse = np.sin(2 * np.pi * hr / 60 * t + rng.uniform(0, 2 * np.pi))
        base = rng.uniform(80, 160, 3)
        video = (
            base
            + 6 * pulse[:, None, None, None] * np.array([0.3, 1.0, 0.5])
            + rng.normal(0, 2, (frames, SIZE, SIZE, 3))
        )
        ppg = (pulse - pulse.min()) / (pulse.max() - pulse.min())
        out.append(
            Window(
                f"s{i % 4}",
                f"r{i}",
                0.0,
                np.clip(video, 0, 255).astype(np.uint8),
                ppg.astype(np.float32),
                float(hr),
            )
        )
    return out


def config(stage: str, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(
        stage=stage,
        epochs=epochs,
        batch=4,
        lr=LR,
        frames=FRAMES,
        threads=THREADS,
        device="cpu",
        **kw,
    )


def test_ppg_loss_perfect_anticorrelated_and_uncorrelated() -> None:
    t = torch.linspace(0, 2 * np.pi, 61)[:-1]
    target = (torch.sin(t)[None] + 1) / 2
    assert float(ppg_loss(target, target)) == pytest.approx(0.0, abs=1e-5)
    anti = 1 - target
    mse = float((anti - target).square().mean())
    assert float(ppg_loss(anti, target)) == pytest.approx(0.8 * 2 + 0.2 * mse, abs=1e-5)
    # A quarter period off over a whole period: r = 0.
    ortho = (torch.cos(t)[None] + 1) / 2
    mse = float((ortho - target).square().mean())
    assert float(ppg_loss(ortho, target)) == pytest.approx(0.8 + 0.2 * mse, abs=1e-5)


def test_fusion_weights_ppg_0_1_and_hr_0_9() -> None:
    gen = torch.Generator().manual_seed(0)
    ppg_pred, ppg_true = torch.rand(3, 60, generator=gen), torch.rand(3, 60, generator=gen)
    hr_pred, hr_true = torch.tensor([130.0, 150.0, 90.0]), torch.tensor([140.0, 145.0, 100.0])
    assert float(hr_loss(hr_pred, hr_true)) == pytest.approx((100 + 25 + 100) / 3)
    expected = 0.1 * ppg_loss(ppg_pred, ppg_true) + 0.9 * hr_loss(hr_pred, hr_true)
    assert float(fusion_loss(ppg_pred, ppg_true, hr_pred, hr_true)) == pytest.approx(
        float(expected)
    )


@pytest.mark.parametrize(
    ("stage", "factor", "precision"),
    # The fusion run has one heart rate (140 bpm), which the HR output starts at (its bias is set
    # to the mean label), so its loss falls with the PPG term: the check is that gradients reach
    # through the whole model. Learning HR itself takes far more than a test's steps.
    [("ppg", 0.5, "fp32"), ("ppg", 0.5, "bf16"), ("fusion", 0.7, "auto")],
)
def test_loss_goes_down(tmp_path: Path, stage: str, factor: float, precision: str) -> None:
    result = train(
        config(stage, epochs=8, precision=precision),
        make_windows(12, 0),
        make_windows(4, 1),
        tmp_path,
        progress=False,
    )
    losses = result["losses"]
    assert result["steps"] == len(losses) == 8 * 3
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"{stage}: loss {first:.4f} -> {last:.4f}")
    assert last < factor * first
    rows = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert all(r["val_hr_mae_bpm"] is not None for r in rows)
    assert (tmp_path / BEST).exists()


def test_precision_settings() -> None:
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_batches_are_normalised_as_the_workers_normalise() -> None:
    """The trainer's torch normalisation equals the numpy one the workers run (no train/serve
    skew), flat channels included, and hands the convolutions channels-last frames."""
    rng = np.random.default_rng(3)
    video = rng.integers(0, 256, (3, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    video[1, ..., 2] = 77  # a flat channel comes out as zeros
    x = normalise_windows(torch.from_numpy(video))
    want = np.stack([normalise_window(v) for v in video])
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-5)
    assert not x[1, :, 2].any()
    assert x.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_windows_held_as_tensors_give_the_same_batches() -> None:
    windows = make_windows(10, 4, hr_spread=30)
    held = TensorWindows(windows, "cpu", chunk=3)
    assert len(held) == 10
    idx = [7, 0, 3, 9]
    for augment in (False, True):
        a = load_batch(windows, idx, True, "cpu", np.random.default_rng(5) if augment else None)
        b = load_batch(held, idx, True, "cpu", np.random.default_rng(5) if augment else None)
        assert torch.equal(a.x, b.x) and torch.equal(a.ppg, b.ppg) and torch.equal(a.hr, b.hr)
    assert load_batch(held, idx, False, "cpu").x is None
    assert not TensorWindows.fits(windows, "cpu")  # preloading is for GPU memory only


def test_batchnorm_recalibration_uses_the_current_weights() -> None:
    """After recalibration a BatchNorm's running statistics are those of its input under the
    current weights (one batch: exactly that batch's mean and variance), not the 0/1 a new
    layer starts with; frozen parts keep theirs."""
    torch.manual_seed(0)
    model = NBHRNet(frames=FRAMES)
    windows = make_windows(4, 6)
    seen: list[torch.Tensor] = []
    norm = model.encoder[0][2]  # BatchNorm of the first conv unit
    hook = norm.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    recalibrate_batchnorm(model, Stage.PPG, windows, [0, 1, 2, 3], 4, "cpu")
    hook.remove()
    (inp,) = seen
    torch.testing.assert_close(norm.running_mean, inp.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(norm.running_var, inp.var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert norm.momentum == 0.01 and not model.training
    assert float(model.head.hr.norm_in.running_mean) == 0.0  # the HR head is not trained here


def test_stage_time_limit_and_hr_head_start_after_a_ppg_run(tmp_path: Path) -> None:
    """max_stage_minutes ends a stage at its first epoch end past the limit; an HR run that
    starts from a ppg run's best.pt starts its output at the mean heart rate, as a run from a
    new model does (otherwise the untrained head answers ~0 bpm)."""
    data = make_windows(8, 0, hr_spread=30), make_windows(4, 1, hr_spread=30)
    ppg_dir, hr_dir = tmp_path / "ppg", tmp_path / "hr"
    result = train(config("ppg", 5, max_stage_minutes=1e-6), *data, ppg_dir, progress=False)
    assert result["steps"] == 2  # one epoch of 2 batches, not 5 epochs
    rows = [json.loads(line) for line in (ppg_dir / METRICS).read_text().splitlines()]
    assert len(rows) == 1 and -1 <= rows[0]["train_ppg_r"] <= 1
    result = train(config("hr", 1, init_from=str(ppg_dir / BEST)), *data, hr_dir, progress=False)
    assert result["metrics"]["val_hr_mae_bpm"] < 40
    assert result["metrics"]["train_hr_mae_bpm"] < 40


class Kill(Exception):
    pass


def kill_at(step: int):
    def on_step(global_step: int, loss: float) -> None:
        if global_step == step:
            raise Kill

    return on_step


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An uninterrupted "all" run: 2 epochs x 3 steps per stage, 18 steps."""
    run_dir = tmp_path_factory.mktemp("full")
    data = make_windows(12, 0, hr_spread=30), make_windows(4, 1, hr_spread=30)
    return run_dir, train(config("all", 2, checkpoint_every=5), *data, run_dir, progress=False)


def test_killed_run_resumes_to_the_same_model(tmp_path: Path, full_run: tuple[Path, dict]) -> None:
    full_dir, full = full_run
    assert full["steps"] == 18
    cfg = config("all", 2, checkpoint_every=5)
    data = make_windows(12, 0, hr_spread=30), make_windows(4, 1, hr_spread=30)

    # Killed after step 11; the last checkpoint is from step 10: HR stage, second epoch, one
    # batch of it done.
    with pytest.raises(Kill):
        train(cfg, *data, tmp_path, progress=False, on_step=kill_at(11))
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["stage"] == "hr"
    assert ckpt["position"] == {"stage_index": 1, "epoch": 1, "step": 1, "global_step": 10}

    # Resumed, killed again right after step 15 and its checkpoint, which sits after the last batch
    # of the first fusion epoch, before its validation.
    with pytest.raises(Kill):
        train(cfg, *data, tmp_path, resume=True, progress=False, on_step=kill_at(15))
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["stage"] == "fusion"
    assert ckpt["position"] == {"stage_index": 2, "epoch": 0, "step": 3, "global_step": 15}

    resumed = train(cfg, *data, tmp_path, resume=True, progress=False)
    assert resumed["steps"] == full["steps"]
    assert len(resumed["losses"]) == 3  # steps 16-18
    assert resumed["losses"] == full["losses"][-3:]
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["stage"] is None
    assert ckpt["position"] == {"stage_index": 3, "epoch": 0, "step": 0, "global_step": 18}

    # Same seed, same data order, restored optimiser, BatchNorm statistics and dropout RNG: on
    # the CPU the resumed model is bit for bit the uninterrupted one.
    a = torch.load(full_dir / CHECKPOINT, weights_only=True)["model"]
    for name, value in ckpt["model"].items():
        assert torch.equal(value, a[name]), name

    # One metrics line per epoch, none repeated by the resumptions, same validation figures.
    def rows(d: Path) -> list[dict]:
        return [json.loads(line) for line in (d / METRICS).read_text().splitlines()]

    keys = ("stage", "epoch", "step", "val_loss", "val_hr_mae_bpm", "val_ppg_r", "lr")
    assert [[r[k] for k in keys] for r in rows(tmp_path)] == [
        [r[k] for k in keys] for r in rows(full_dir)
    ]
    assert [r["stage"] for r in rows(tmp_path)] == ["ppg"] * 2 + ["hr"] * 2 + ["fusion"] * 2


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    data = make_windows(4, 0), make_windows(2, 1)
    train(config("hr", 1), *data, tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch"):
        train(
            TrainConfig(stage="hr", epochs=1, batch=2, lr=LR, frames=FRAMES, device="cpu"),
            *data,
            tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(FileExistsError):
        train(config("hr", 1), *data, tmp_path, progress=False)


def test_export_onnx_from_checkpoint(tmp_path: Path, full_run: tuple[Path, dict]) -> None:
    """The command exports a trained checkpoint; the worker's runner reproduces torch's output.
    export_onnx traces at 128 x 128, which the 8-frame model takes as well (global pooling)."""
    full_dir, _ = full_run
    out = tmp_path / "nbhrnet.onnx"
    res = CliRunner().invoke(cli.export_onnx, [str(full_dir / BEST), "--out", str(out)])
    assert res.exit_code == 0, res.output
    runner = NBHRNetRunner(out, threads=THREADS)
    assert res.output.split()[-1] == runner.sha256
    again = CliRunner().invoke(cli.export_onnx, [str(full_dir / BEST), "--out", str(out), "--json"])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert json.loads(again.output) == {"path": str(out), "sha256": digest}

    rng = np.random.default_rng(2)
    video = rng.integers(0, 256, (2, FRAMES, 128, 128, 3), dtype=np.uint8)
    x = np.stack([normalise_window(v) for v in video])
    hr, ppg = runner.predict(x)
    with torch.no_grad():
        ppg_t, hr_t = load_checkpoint(full_dir / BEST)(torch.from_numpy(x))
    np.testing.assert_allclose(hr, hr_t.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ppg, ppg_t.numpy(), rtol=1e-4, atol=1e-4)

    # The encoder and head written beside it compose to the same model.
    assert runner.framewise
    features = runner.encode_frames(x.reshape(-1, 3, 128, 128)).reshape(2, FRAMES, -1)
    hr_split, ppg_split = runner.run_head(features)
    np.testing.assert_allclose(hr_split, hr, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ppg_split, ppg, rtol=1e-5, atol=1e-5)


def test_train_command_on_a_real_archive(demo_archive: Path, tmp_path: Path) -> None:
    """`nbhr train` end to end on the session's demo archive: real decoding, tracking and
    cropping into the window cache, a subject-wise split, and the (fast) HR stage."""
    from training.data import WindowCache

    run_dir = tmp_path / "run"
    args = ["--data", str(demo_archive), "--format", "nbhr", "--stage", "hr", "--epochs", "1"]
    args += ["--batch", "4", "--out", str(run_dir), "--threads", str(THREADS)]
    res = CliRunner().invoke(cli.train, [*args, "--prepare-only"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["train"] == 8
    assert not (run_dir / "checkpoint.pt").exists()
    res = CliRunner().invoke(cli.train, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.splitlines()[-1])
    cache = WindowCache.open(run_dir / "cache")
    # 2 subjects with a 16-s face recording each (8 two-second windows); the face-less
    # recording gives none. One subject trains, the other validates.
    assert len(cache) == 16 and set(cache.subjects) == {"infant_001", "infant_002"}
    assert summary["steps"] == 2  # 8 training windows, batch 4
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["stage"], cfg["frames"], cfg["threads"]) == ("hr", 60, THREADS)
    assert (run_dir / "checkpoint.pt").is_file()

    # Resuming a finished run reuses the cache and trains nothing more.
    stamp = (run_dir / "cache" / "index.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli.train, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["steps"] == 2
    assert (run_dir / "cache" / "index.json").stat().st_mtime_ns == stamp


def test_commands_without_torch_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    res = CliRunner().invoke(cli.export_onnx, [__file__, "--out", "x.onnx"])
    assert res.exit_code == 1
    assert 'pip install -e ".[train]"' in res.output
