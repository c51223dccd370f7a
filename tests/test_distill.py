"""The ReLU student of NBHRnet's encoder (training/distill.py, `nbhr distill`) and its int8
quantisation: read from the exported encoder, folded exactly, trained towards the teacher's
features, quantised without leaving int8, and tied to its model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from model.nbhrnet import (
    BUNDLED_MODEL,
    CONV_FLOPS_PER_FRAME,
    NBHRNetRunner,
    companion_paths,
    int8_encoder_path,
    relu_encoder_path,
)
from nbhr.bench import encoder_conv_flops
from tests.helpers import copy_bundled_model, nbhr, nbhr_json
from training.distill import (
    _bn_affine,
    _fold_input_affine,
    distill,
    encoder_from_onnx,
    equalise_ranges,
    head_feature_scale,
    relu_student,
    student_first_stride,
    student_from_onnx,
    teacher_features,
)
from training.nbhrnet import DilatedBlock
from training.quantize import calibration_frames

ENCODER, HEAD = companion_paths(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def crops(face_videos: list[Path]) -> np.ndarray:
    return calibration_frames(face_videos, max_frames=240, stride=2).frames


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model and its fp32 halves in a folder of their own (no int8 encoder yet)."""
    return copy_bundled_model(tmp_path_factory.mktemp("distill"))


def _features(module: nn.Module, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(frames)).numpy()


def test_encoder_from_onnx_is_the_exported_encoder(crops: np.ndarray) -> None:
    want = teacher_features(ENCODER, crops[:16])
    got = _features(encoder_from_onnx(ENCODER), crops[:16])
    assert want.shape == got.shape == (16, 256)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_a_folded_batchnorm_computes_what_it_replaced() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    bn.weight.data.uniform_(0.5, 2.0)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    conv = nn.Conv2d(5, 7, 3, padding=0)  # no padding: the fold is exact everywhere
    x = torch.randn(2, 5, 9, 9)
    with torch.no_grad():
        want = conv(bn(x))
        _fold_input_affine(conv, _bn_affine(bn))
        got = conv(x)
    assert torch.allclose(got, want, atol=1e-5)


def test_relu_student_equals_the_teacher_where_prelu_is_relu_and_no_shift_is_padded(
    crops: np.ndarray,
) -> None:
    teacher = encoder_from_onnx(ENCODER)
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, nn.PReLU):
                m.weight.zero_()  # PReLU with slope 0 is ReLU
            if isinstance(m, nn.BatchNorm2d):
                # A BatchNorm with zero shift folds exactly, zero padding and all.
                a, _ = _bn_affine(m)
                m.bias.copy_(a * m.running_mean)
    student = relu_student(teacher)
    assert not any(isinstance(m, nn.PReLU | nn.BatchNorm2d) for m in student.modules())
    assert sum(isinstance(m, nn.ReLU) for m in student.modules()) == 20
    assert not any(isinstance(m, DilatedBlock) for m in student.modules())
    want = _features(teacher, crops[:8])
    got = _features(student, crops[:8])
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_a_first_stride_of_two_moves_the_first_downsampling(crops: np.ndarray) -> None:
    teacher = encoder_from_onnx(ENCODER)
    student = relu_student(teacher, first_stride=2)
    assert (student[0][0].stride, student[1][0].stride) == ((2, 2), (1, 1))
    assert (teacher[0][0].stride, teacher[1][0].stride) == ((1, 1), (2, 2))  # untouched
    assert student_first_stride(student) == 2 and student_first_stride(relu_student(teacher)) == 1
    # Same weights, same output size (the second layer's output is 64 x 64 either way), but
    # another function: distillation has to bring it back to the teacher's features.
    with torch.no_grad():
        x = torch.from_numpy(crops[:4])
        assert student[0](x).shape == (4, 32, 64, 64)
        assert student[:2](x).shape == relu_student(teacher).eval()[:2](x).shape
    got, want = _features(student, crops[:4]), _features(teacher, crops[:4])
    assert got.shape == want.shape == (4, 256) and not np.allclose(got, want, atol=1e-2)
    with pytest.raises(ValueError, match="first_stride"):
        relu_student(teacher, first_stride=4)


def test_equalised_ranges_change_nothing_but_the_channel_scales(crops: np.ndarray) -> None:
    student = relu_student(encoder_from_onnx(ENCODER)).eval()
    want = _features(student, crops[:8])
    before = [m.weight.clone() for m in student.modules() if isinstance(m, nn.Conv2d)]
    equalise_ranges(student, crops[::8], 99.99)
    after = [m.weight for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) >= 19
    got = _features(student, crops[:8])
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # Every channel of a tensor an int8 convolution reads now spans about the same range.
    first = student[0][0]
    with torch.no_grad():
        act = torch.relu(first(torch.from_numpy(crops[::8]))).transpose(0, 1).flatten(1)
    ranges = np.percentile(act.numpy(), 99.99, axis=1)
    live = ranges[ranges > 0]
    assert live.max() / live.min() < 1.01


def test_distillation_brings_the_student_towards_the_teacher(crops: np.ndarray) -> None:
    teacher = encoder_from_onnx(ENCODER)
    student = relu_student(teacher)
    targets = teacher_features(ENCODER, crops)
    scale = head_feature_scale(HEAD)
    assert scale.shape == (256,) and (scale > 0).all()
    done = distill(student, crops, targets, scale, minutes=5.0, batch=16, max_steps=40)
    assert done.steps == 40 and done.frames + done.holdout == len(crops)
    # Measured here: 0.57 -> 0.05 (normalised squared feature error on the held-out frames).
    assert done.nmse_end < 0.5 * done.nmse_start
    assert not student.training


def test_distill_and_quantize_commands(
    model_copy: Path, face_videos: list[Path], crops: np.ndarray
) -> None:
    made = nbhr_json(
        "distill", model_copy, face_videos[0], "--frames", "96", "--minutes", "0.1", "--json"
    )
    student = relu_encoder_path(model_copy)
    assert made["path"] == str(student) and student.is_file()
    assert made["frames"] + made["holdout"] == 96 and made["steps"] >= 1
    meta = {p.key: p.value for p in onnx.load(str(student)).metadata_props}
    assert meta["nbhr.encoder"] == "relu-distilled"
    assert meta["nbhr.parent_sha256"] == NBHRNetRunner(model_copy).sha256

    made = nbhr_json(
        "quantize", model_copy, face_videos[0], "--frames", "30", "--method", "minmax", "--json"
    )
    assert made["path"] == str(int8_encoder_path(model_copy)) and made["videos"] == 1
    int8 = onnx.load(str(int8_encoder_path(model_copy)))
    ops = [n.op_type for n in int8.graph.node]
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["nbhr.encoder"] == "relu-distilled"
    # Only the first convolution (with its ReLU) and the final pooling stay in float; no
    # layer leaves int8 for an activation or a BatchNorm.
    assert ops[:3] == ["Conv", "Relu", "QuantizeLinear"]
    assert ops.count("QLinearConv") == 19 and ops.count("Conv") == ops.count("Relu") == 1
    assert ops[-3:] == ["DequantizeLinear", "GlobalAveragePool", "Flatten"]
    assert not {"PRelu", "BatchNormalization", "Mul", "Add"} & set(ops)
    features = NBHRNetRunner(model_copy, precision="int8").encode_frames(crops[:8])
    assert features.shape == (8, 256) and np.isfinite(features).all()

    # A student made for another model is refused, not quantised.
    other = model_copy.with_name("other.onnx")
    shutil.copy(model_copy, other)
    with other.open("ab") as f:
        f.write(b"\0")
    for half in companion_paths(model_copy):
        shutil.copy(half, half.with_name(half.name.replace(model_copy.stem, "other")))
    shutil.copy(student, relu_encoder_path(other))
    out = nbhr("quantize", other, face_videos[0], "--frames", "30", check=False)
    assert out.returncode == 1 and "distilled from another model" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_student_with_a_first_stride_of_two_is_distilled_quantised_and_run(
    face_videos: list[Path], crops: np.ndarray, tmp_path: Path
) -> None:
    """`nbhr distill --first-stride 2`: the file says so, reads back as the same module, and
    `nbhr quantize` makes an int8 encoder whose float first convolution has stride 2."""
    model = copy_bundled_model(tmp_path)
    args = [face_videos[0], "--frames", "96", "--minutes", "0.1", "--first-stride", "2"]
    made = nbhr_json("distill", model, *args, "--json")
    student = relu_encoder_path(model)
    meta = {p.key: p.value for p in onnx.load(str(student)).metadata_props}
    assert meta["nbhr.first_stride"] == "2" and "first stride 2" in meta["nbhr.distillation"]
    module = student_from_onnx(student)
    assert student_first_stride(module) == 2
    want = teacher_features(student, crops[:4])  # the file, run by onnxruntime
    assert np.abs(_features(module, crops[:4]) - want).max() < 1e-4 * np.abs(want).max()
    assert made["steps"] >= 1

    nbhr_json("quantize", model, face_videos[0], "--frames", "30", "--method", "minmax", "--json")
    graph = onnx.load(str(int8_encoder_path(model))).graph
    strides = [
        [a.ints for a in n.attribute if a.name == "strides"][0]
        for n in graph.node
        if n.op_type in ("Conv", "QLinearConv")
    ]
    assert [list(s) for s in strides[:2]] == [[2, 2], [1, 1]]
    # The bench credits it with what it computes: the first convolution (3 -> 32 channels,
    # 3 x 3) at 64 x 64 outputs instead of 128 x 128, everything after it as before.
    first_layer_at_full_size = 2 * 128 * 128 * 32 * 3 * 9
    for path in (student, int8_encoder_path(model)):
        assert encoder_conv_flops(path) == CONV_FLOPS_PER_FRAME - first_layer_at_full_size * 3 // 4
    assert encoder_conv_flops(companion_paths(model)[0]) == CONV_FLOPS_PER_FRAME
    features = NBHRNetRunner(model, precision="int8").encode_frames(crops[:8])
    assert features.shape == (8, 256) and np.isfinite(features).all()
