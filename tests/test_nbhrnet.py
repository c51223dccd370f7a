"""NBHRnet: shapes, size and cost against the paper, ONNX export run by the torch-free runner."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import model.nbhrnet as nbhrnet_module
from model.nbhrnet import (
    CONV_FLOPS_PER_FRAME,
    MIN_CHANNEL_STD,
    ZSCORE_BUILT,
    NBHRNetRunner,
    normalise_window,
)
from tests.conftest import missing
from training.export import export_onnx
from training.nbhrnet import (
    FRAMES,
    NBHRNet,
    analytic_parameter_count,
    conv_flops_per_frame,
    encoder_parameter_count,
    hr_head_parameter_count,
    ppg_head_parameter_count,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


def windows(n: int, seed: int) -> torch.Tensor:
    """n random normalised windows, float32 (n, 60, 3, 128, 128)."""
    return torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained_like() -> NBHRNet:
    """An eval-mode NBHRNet whose every layer does something an export could get wrong.

    A fresh model has BatchNorm at identity statistics and PReLU slopes of zero, and its two
    ReLU outputs can be all zeros, so a broken export of those layers would still compare equal.
    Random running statistics, affine BN parameters and slopes (cheaper and further from
    identity than a few train-mode passes at BN momentum 0.01) exercise them, and positive
    output biases keep the PPG and HR ReLUs open (checked below).
    """
    torch.manual_seed(0)
    model = NBHRNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.0, 0.3, generator=gen)
        model.head.ppg.conv.bias.fill_(2.0)
        # A neonatal heart rate, well clear of the ReLU at 0.
        model.head.hr.out.bias.fill_(140.0)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_path(trained_like: NBHRNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nbhrnet") / "nbhrnet.onnx"
    export_onnx(trained_like, path)
    return path


def test_output_shapes() -> None:
    torch.manual_seed(0)
    model = NBHRNet().eval()
    with torch.no_grad():
        ppg, hr = model(windows(2, seed=0))
    assert ppg.shape == (2, FRAMES)
    assert hr.shape == (2,)
    assert ppg.dtype == hr.dtype == torch.float32
    with torch.no_grad():
        feats = model.encoder(torch.zeros(5, 3, SIZE, SIZE))
        head_ppg, head_hr = model.head(torch.zeros(2, FRAMES, 256))
    assert feats.shape == (5, 256)
    assert head_ppg.shape == (2, FRAMES) and head_hr.shape == (2,)


def test_parameter_count_matches_formula_and_paper() -> None:
    model = NBHRNet()
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_parameter_count()
    assert sum(p.numel() for p in model.head.ppg.parameters()) == ppg_head_parameter_count()
    assert sum(p.numel() for p in model.head.hr.parameters()) == hr_head_parameter_count()
    total = sum(p.numel() for p in model.parameters())
    assert total == analytic_parameter_count()
    # The paper: about 1.6 M parameters.
    assert 1.4e6 <= total <= 1.8e6


def test_conv_cost_matches_paper() -> None:
    # The issue quotes about 28.9 GFLOP of convolutions per 60-frame window, 0.48 GFLOP per frame;
    # counting each conv at its output size gives 481,296,384 FLOPs (2 x 240.6 M multiply-adds).
    flops = conv_flops_per_frame()
    assert flops == CONV_FLOPS_PER_FRAME  # the figure the bench divides by, without torch
    assert flops == pytest.approx(0.48e9, rel=0.1)
    assert flops * FRAMES == pytest.approx(28.9e9, rel=0.01)


def test_l2_penalty_is_on_first_dense_kernel() -> None:
    model = NBHRNet()
    with torch.no_grad():
        model.head.hr.dense.weight.fill_(0.5)
    expected = 1e-3 * 0.25 * model.head.hr.dense.weight.numel()
    assert model.l2_penalty().item() == pytest.approx(expected)


def test_onnx_export_matches_torch_at_any_batch(trained_like: NBHRNet, onnx_path: Path) -> None:
    runner = NBHRNetRunner(onnx_path, threads=2)
    assert runner._session is None  # lazy: nothing opened before the first prediction
    x = windows(3, seed=2)
    with torch.no_grad():
        ppg_torch, hr_torch = trained_like(x)
    # The premise of the comparison: both ReLU outputs are open, not clamped at zero.
    assert (ppg_torch > 0).all() and (hr_torch > 100).all()
    for batch_size, n in ((1, 1), (3, 3), (2, 3)):
        hr, ppg = runner.predict(x[:n].numpy(), batch_size=batch_size)
        assert hr.shape == (n,) and ppg.shape == (n, FRAMES)
        np.testing.assert_allclose(hr, hr_torch[:n].numpy(), rtol=0, atol=0.01)
        np.testing.assert_allclose(ppg, ppg_torch[:n].numpy(), rtol=0, atol=1e-4)
    assert len(runner.sha256) == 64


def test_runner_rejects_wrong_window_shape(onnx_path: Path) -> None:
    with pytest.raises(ValueError, match="windows must be"):
        NBHRNetRunner(onnx_path).predict(np.zeros((1, 30, 3, SIZE, SIZE), np.float32))


def test_normalise_window_zscores_each_channel() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[..., 2] = 77  # a flat channel: zeros, not a division by zero
    x = normalise_window(frames)
    assert x.shape == (FRAMES, 3, SIZE, SIZE) and x.dtype == np.float32
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(per_channel[:2].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_channel[:2].std(axis=1), 1.0, atol=1e-5)
    assert not per_channel[2].any()


def test_inference_module_does_not_import_torch() -> None:
    code = (
        "import sys, model.nbhrnet; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _zscored_in_float64(frames: np.ndarray) -> np.ndarray:
    x = frames.astype(np.float64)
    std = np.maximum(x.std(axis=(0, 1, 2)), MIN_CHANNEL_STD)
    return ((x - x.mean(axis=(0, 1, 2))) / std).transpose(0, 3, 1, 2)


@pytest.fixture
def zscore_kernel():
    """model._zscore's function; optional for users (setup.py), CI must have built it."""
    if not ZSCORE_BUILT:
        missing("model._zscore was not built (needs a C compiler)", "model._zscore not built here")
    from model._zscore import zscore

    return zscore


@pytest.mark.parametrize(
    "shape",
    [
        (FRAMES, SIZE, SIZE, 3),
        (1, 5, 7, 3),  # 35 pixels: the C kernel's 16-pixel lanes and its remainder
        (2, 1, 1, 3),
        (3, 40, 50, 3),  # 2,000 pixels a frame: more than one 1,024-pixel chunk
        (70, SIZE, SIZE, 3),  # 1,146,880 pixels: 255^2 x 71,680 > 2^32 in 32-bit lanes
    ],
)
def test_normalise_window_matches_the_plain_numpy_definition(shape, monkeypatch) -> None:
    """The C kernel (where built), the OpenCV path and, for other dtypes, the numpy path all
    give what (x - mean) / std in float64 gives, to float32 rounding; a flat channel gives
    zeros every way. Channel 2 is kept at 248-255: over the largest block its sum of
    squares overflows 32-bit lanes of the C kernel if they add up too many values. Both
    uint8 paths compute x * (1 / std) + (-mean / std) in float32, whose two terms (about 110
    for channel 2) cancel: the tolerance allows a few float32 steps of that size."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    frames[..., 1] = 255
    frames[..., 2] |= 0xF8
    want = _zscored_in_float64(frames)
    assert not want[:, 1].any()
    x64 = frames.astype(np.float64)
    shift = np.abs(x64.mean(axis=(0, 1, 2))) / np.maximum(x64.std(axis=(0, 1, 2)), 1.0)
    atol = 2e-6 + 4 * float(np.finfo(np.float32).eps) * shift.max()
    got = {"default": normalise_window(frames)}
    got["numpy"] = normalise_window(frames.astype(np.float32))
    got["strided input"] = normalise_window(np.repeat(frames, 2, axis=2)[:, :, ::2])
    monkeypatch.setattr(nbhrnet_module, "_zscore", None)
    got["opencv"] = normalise_window(frames)
    for way, x in got.items():
        assert x.shape == want.shape and x.dtype == np.float32, way
        np.testing.assert_allclose(x, want, atol=atol, err_msg=way)
        assert not x[:, 1].any(), way


def test_zscore_kernel_agrees_with_opencv_and_checks_its_buffers(zscore_kernel) -> None:
    """On real-looking crops (smooth, channels of different spread) the C kernel writes what
    the OpenCV path writes, to one float32 rounding step, and refuses buffers that do not fit
    instead of reading or writing past them."""
    rng = np.random.default_rng(8)
    base = rng.normal(120, 30, size=(FRAMES, 1, 1, 3)) + rng.normal(0, 4, (FRAMES, SIZE, SIZE, 3))
    frames = np.clip(base, 0, 255).astype(np.uint8)
    out = np.full((FRAMES, 3, SIZE, SIZE), np.nan, np.float32)
    zscore_kernel(frames, FRAMES, MIN_CHANNEL_STD, out)
    np.testing.assert_allclose(out, nbhrnet_module._normalise_opencv(frames), atol=3e-7)
    with pytest.raises(ValueError, match="float32"):
        zscore_kernel(frames, FRAMES, MIN_CHANNEL_STD, out[:-1])
    with pytest.raises(ValueError, match="frames"):
        zscore_kernel(frames[:, :, :, :2].copy(), FRAMES, MIN_CHANNEL_STD, out)
    with pytest.raises(ValueError, match="frames"):
        zscore_kernel(frames, 0, MIN_CHANNEL_STD, out)
    with pytest.raises(ValueError, match="frames"):
        zscore_kernel(frames, frames.size, MIN_CHANNEL_STD, out)
    with pytest.raises(TypeError):  # a strided view is no C-contiguous buffer
        zscore_kernel(frames, FRAMES, MIN_CHANNEL_STD, out[:, :, :, ::2])
    with pytest.raises(ValueError, match="min_std"):
        zscore_kernel(frames, FRAMES, 0.0, out)
