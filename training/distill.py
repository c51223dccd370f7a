"""Distil NBHRnet's per-frame encoder into an all-ReLU encoder that int8 runs without leaving int8.

Why: the paper's encoder is conv -> per-channel PReLU -> BatchNorm. onnxruntime has no int8
per-channel PReLU, and a BatchNorm after an activation cannot fold into the convolution before
it, so a statically quantised encoder dequantises, runs both in float and quantises again at
every layer; those passes took about two thirds of its time. A ReLU fuses into an int8
convolution (it only clamps the output range), and a BatchNorm that follows a conv's output
through a ReLU is a per-channel scale and shift of that output, which fold into the weights and
bias of the convolution(s) that read it. So the student is conv -> ReLU all the way.

How: the student starts as the teacher with every PReLU replaced by a ReLU and every BatchNorm
folded into the convolutions after it (`relu_student`). The trained slopes are small (|a| below
0.07 in the shipped model) and the fold is exact except on the border ring where the next
convolution's zero padding meets the folded shift, so the student starts close. It is then
trained to reproduce the teacher's 256 features of each frame (`distill`), each feature's error
measured as the head sees it: the head's first layer is a BatchNorm that scales feature i by
gamma_i / sqrt(var_i + eps), so that is the weight of its error (`head_feature_scale`), which
does not depend on how many frames or infants the distillation data hold. The recurrent head
stays the teacher's: it reads the student's features as it read the teacher's.

The teacher is read from the exported encoder (FILE.encoder.onnx), so a model needs no PyTorch
checkpoint to be distilled; the student is written beside it as FILE.encoder.relu.onnx, which
`training.quantize` then quantises.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.nbhrnet import companion_paths, file_sha256, relu_encoder_path
from training.export import _export_graph
from training.nbhrnet import FRAME_SIZE, DilatedBlock, _encoder

# Share of the distillation frames held out to measure the student (the last ones: with frames
# taken video by video, mostly other videos than the ones it trains on).
HOLDOUT = 0.05
# Steps over which the learning rate ramps up linearly: Adam's first updates are about lr in
# every weight whatever its gradient, which at full rate threw the student away from its
# teacher-like start (held-out error 0.40 -> 0.86 in 40 steps on a small set).
WARMUP_STEPS = 100
# Frames per evaluation batch (inference only; bounds memory, not results).
EVAL_BATCH = 64


def _onnx_file(path: Path) -> tuple[Any, dict[str, np.ndarray], dict[str, str]]:
    """An ONNX file's graph, its initializers by name and its metadata, read once."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return model.graph, weights, {p.key: p.value for p in model.metadata_props}


def _load_weights(module: nn.Module, weights: dict[str, np.ndarray], path: Path) -> nn.Module:
    """Load `weights` (by state-dict name) into `module`, every parameter and BatchNorm
    statistic of it; ValueError naming `path` when one is missing or of another size. Returns
    the module in eval mode."""
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in weights or weights[key].size != tensor.numel():
            raise ValueError(f"{path}: no weight {key} of shape {tuple(tensor.shape)}")
        loaded[key] = torch.from_numpy(weights[key].reshape(tensor.shape).copy())
    module.load_state_dict(loaded, strict=False)
    return module.eval()


def encoder_from_onnx(path: Path) -> nn.Sequential:
    """The encoder of an exported model (FILE.encoder.onnx, training.export) as a PyTorch module
    with its weights, in eval mode: float (B, 3, 128, 128) -> float (B, 256).

    Parameters are found by name (the exporter keeps the module's parameter names); PReLU
    slopes, which it renames, are matched by their order in the graph. ValueError when the file
    is not an encoder of this architecture.
    """
    graph, weights, _ = _onnx_file(path)
    encoder = _encoder()
    slopes = [n.input[1] for n in graph.node if n.op_type == "PRelu"]
    prelus = [name for name, m in encoder.named_modules() if isinstance(m, nn.PReLU)]
    if len(slopes) != len(prelus):
        raise ValueError(f"{path}: {len(slopes)} PReLU layers, the architecture has {len(prelus)}")
    for name, prelu_input in zip(prelus, slopes, strict=True):
        weights[f"{name}.weight"] = weights[prelu_input]
    return _load_weights(encoder, weights, path)


class ReLUBlock(nn.Module):
    """A DilatedBlock without activations other than ReLU and with its BatchNorms folded:
    parallel branches (conv -> ReLU -> conv -> ReLU), concatenated, then a 1x1 conv -> ReLU."""

    def __init__(self, branches: list[nn.Sequential], fuse: nn.Conv2d) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(fuse, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = a * x + b per channel: (a, b)."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - a * bn.running_mean


def _fold_input_affine(conv: nn.Conv2d, affine: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Make conv(x) compute the old conv(a * x + b): a scales the input channels' weights; b
    adds the kernel's sum over it to the bias (exact except where zero padding is read)."""
    a, b = affine
    w = conv.weight.data
    conv.bias.data = conv.bias.data + (w * b[None, :, None, None]).sum(dim=(1, 2, 3))
    conv.weight.data = w * a[None, :, None, None]


def relu_student(teacher: nn.Sequential, first_stride: int = 1) -> nn.Sequential:
    """The teacher encoder (training.nbhrnet._encoder layout) as conv -> ReLU layers: PReLU ->
    ReLU, each BatchNorm folded into the convolution(s) that read its output. The teacher is
    not changed. Returns a module in train mode with the same input and output shapes.

    first_stride: 2 moves the encoder's first downsampling from its second convolution to its
    first, which then computes 32 channels at 64 x 64 instead of 128 x 128; the second works at
    stride 1 on that. In the int8 encoder the first convolution stays in float, and it and the
    quantising and reordering of its output took about a quarter of the encoder's time on an
    AVX2 CPU. The student no longer starts as the teacher's function (each second-layer tap
    reads two pixels further out), so distillation has more to learn (docs/performance.md)."""
    if first_stride not in (1, 2):
        raise ValueError(f"first_stride must be 1 or 2, not {first_stride}")
    student = _relu_layers(teacher)
    if first_stride == 2:
        first, second = student[0][0], student[1][0]
        if first.stride != (1, 1) or second.stride != (2, 2):
            raise ValueError("the encoder does not downsample in its second convolution")
        first.stride, second.stride = (2, 2), (1, 1)
    return student


def student_first_stride(student: nn.Sequential) -> int:
    """The stride of a student's first convolution (relu_student's first_stride)."""
    return student[0][0].stride[0]


def _relu_layers(teacher: nn.Sequential) -> nn.Sequential:
    """relu_student's layers, the teacher's strides kept."""
    layers: list[nn.Module] = []
    pending = None  # the affine of the last BatchNorm, for the next convolutions to absorb
    with torch.no_grad():
        for layer in copy.deepcopy(teacher):
            if isinstance(layer, DilatedBlock):
                branches = []
                for first, second in layer.branches:
                    if pending is not None:
                        _fold_input_affine(first[0], pending)
                    _fold_input_affine(second[0], _bn_affine(first[2]))
                    branches.append(nn.Sequential(first[0], nn.ReLU(), second[0], nn.ReLU()))
                bn, fuse = layer.fuse[0], layer.fuse[1]
                _fold_input_affine(fuse, _bn_affine(bn))  # 1x1, no padding: exact
                layers.append(ReLUBlock(branches, fuse))
                pending = None
            elif isinstance(layer, nn.Sequential):  # conv -> PReLU -> (BatchNorm)
                conv = layer[0]
                if pending is not None:
                    _fold_input_affine(conv, pending)
                pending = _bn_affine(layer[2]) if len(layer) > 2 else None
                layers.append(nn.Sequential(conv, nn.ReLU()))
            else:  # pooling and flatten
                layers.append(layer)
    return nn.Sequential(*layers).train()


def head_feature_scale(head_onnx: Path) -> np.ndarray:
    """How strongly the exported head (FILE.head.onnx) weighs each encoder feature: float32
    (256,), |gamma| / sqrt(running_var + eps) of its input BatchNorm. ValueError when the head
    has no such layer."""
    graph, weights, _ = _onnx_file(head_onnx)
    prefix = "head.ppg.norm_in."
    norm = next((n for n in graph.node if n.op_type == "BatchNormalization"), None)
    if f"{prefix}running_var" not in weights or norm is None:
        raise ValueError(f"{head_onnx}: no input BatchNorm ({prefix}*) to weigh features by")
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    gamma, var = weights[f"{prefix}weight"], weights[f"{prefix}running_var"]
    return (np.abs(gamma) / np.sqrt(var + eps)).astype(np.float32)


def student_from_onnx(path: Path) -> nn.Sequential:
    """A ReLU student written by export_student, back as a PyTorch module in eval mode.
    ValueError when the file is not one."""
    _, weights, meta = _onnx_file(path)
    stride = int(meta.get("nbhr.first_stride", "1"))
    # The layout only: every weight is replaced by the file's.
    return _load_weights(relu_student(_encoder().eval(), stride), weights, path)


def equalise_ranges(student: nn.Sequential, frames: np.ndarray, percentile: float) -> None:
    """Rescale the student's channels (in place) so that every channel of each tensor that
    an int8 convolution reads spans the same range, without changing what it computes.

    A quantised activation has one scale per tensor, set by its widest channel. The teacher's
    BatchNorms kept its channels on similar scales; folded into the convolutions that read
    them, they leave channel ranges that differ by up to two orders of magnitude, and a
    narrow channel then gets a handful of the 256 levels. Because ReLU(x / s) = ReLU(x) / s
    for s > 0, dividing a producing convolution's output channel by s and multiplying the
    same input channel of every convolution that reads it by s is exact (zero padding
    included). s is the channel's `percentile` of |activation| over `frames` over the
    geometric mean of those of its tensor; a channel that never fires is left alone. The
    features (the last layer's output) are not touched.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames))
    tensors: list[tuple[list[tuple[nn.Conv2d, int]], list[nn.Conv2d]]] = []
    producers: list[tuple[nn.Conv2d, int]] = []  # (conv, first channel) making up the input
    for layer in student:
        if isinstance(layer, ReLUBlock):
            firsts = [branch[0] for branch in layer.branches]
            tensors.append((producers, firsts))
            offsets = np.cumsum([0] + [b[2].out_channels for b in layer.branches])
            for branch in layer.branches:
                tensors.append(([(branch[0], 0)], [branch[2]]))
            fuse = layer.fuse[0]
            tensors.append(
                (
                    [(b[2], int(o)) for b, o in zip(layer.branches, offsets[:-1], strict=True)],
                    [fuse],
                )
            )
            producers = [(fuse, 0)]
        elif isinstance(layer, nn.Sequential):
            tensors.append((producers, [layer[0]]))
            producers = [(layer[0], 0)]
    tensors = [(p, c) for p, c in tensors if p]  # the input frames have no producer
    outputs: dict[nn.Conv2d, torch.Tensor] = {}
    hooks = [
        conv.register_forward_hook(lambda m, _, out: outputs.__setitem__(m, torch.relu(out)))
        for conv in {conv for group, _ in tensors for conv, _ in group}
    ]
    with torch.no_grad():
        student.eval()(x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for group, consumers in tensors:
            act = torch.cat([outputs[conv] for conv, _ in group], dim=1)
            flat = act.transpose(0, 1).reshape(act.shape[1], -1).numpy()
            ranges = np.percentile(flat, percentile, axis=1)
            live = ranges > 0
            if not live.any():
                continue
            scale = np.ones_like(ranges)
            scale[live] = ranges[live] / np.exp(np.log(ranges[live]).mean())
            s = torch.from_numpy(scale.astype(np.float32))
            for conv, first in group:
                part = s[first : first + conv.out_channels]
                conv.weight /= part[:, None, None, None]
                conv.bias /= part
            for conv in consumers:
                conv.weight *= s[None, :, None, None]


@dataclass(frozen=True)
class Distillation:
    """What a distillation did.

    frames / holdout: frames trained on / held out; steps, seconds: optimiser steps, wall time.
    nmse_start / nmse_end: held-out mean squared feature error of the student before and after,
    each feature weighted as the head weighs it (head_feature_scale): 0 = the teacher's
    features; 1 = off by one unit of the head's normalised input.
    """

    frames: int
    holdout: int
    steps: int
    seconds: float
    nmse_start: float
    nmse_end: float


def teacher_features(encoder_onnx: Path, frames: np.ndarray, threads: int = 0) -> np.ndarray:
    """The exported encoder's features of normalised frames (n, 3, 128, 128): float32 (n, 256),
    computed by onnxruntime (faster than the PyTorch copy, and the features workers get)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(encoder_onnx), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(["features"], {"frames": frames[i : i + EVAL_BATCH]})[0]
            for i in range(0, len(frames), EVAL_BATCH)
        ]
    )


def distill(
    student: nn.Module,
    frames: np.ndarray,
    targets: np.ndarray,
    scale: np.ndarray,
    minutes: float,
    lr: float = 2e-4,
    batch: int = 32,
    seed: int = 0,
    max_steps: int | None = None,
    bf16: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Distillation:
    """Train `student` (in place) to map normalised frames (n, 3, 128, 128) to the teacher's
    features `targets` (n, 256), each feature's error weighted by `scale` (256,)
    (head_feature_scale), with Adam, a learning rate that ramps up over WARMUP_STEPS and
    decays (cosine) over `minutes` of wall time (or over max_steps steps, if that ends first),
    on all but the last HOLDOUT of the frames. bf16: bfloat16 autocast for the forward pass
    (None: where the CPU has native bf16). Leaves the student in eval mode."""
    if len(frames) != len(targets) or len(frames) < 2 * batch:
        raise ValueError(f"need >= {2 * batch} frames with a target each, got {len(frames)}")
    if bf16 is None:
        bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    cut = len(frames) - max(1, round(HOLDOUT * len(frames)))
    weight = torch.from_numpy(np.asarray(scale, dtype=np.float32))
    student.to(memory_format=torch.channels_last)

    def held_out_nmse() -> float:
        student.eval()
        with torch.no_grad():
            got = torch.cat(
                [
                    student(torch.from_numpy(frames[i : i + EVAL_BATCH]))
                    for i in range(cut, len(frames), EVAL_BATCH)
                ]
            )
        student.train()
        return float((((got - torch.from_numpy(targets[cut:])) * weight) ** 2).mean())

    start_nmse = held_out_nmse()
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    budget = 60.0 * minutes
    t0 = time.monotonic()
    steps = 0
    while True:
        elapsed = time.monotonic() - t0
        progress = max(elapsed / budget, steps / max_steps if max_steps else 0.0)
        if progress >= 1.0 and steps > 0:
            break
        ramp = min(1.0, (steps + 1) / WARMUP_STEPS)
        for group in optimiser.param_groups:
            group["lr"] = lr * ramp * 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))
        pick = np.sort(rng.choice(cut, batch, replace=False))
        x = torch.from_numpy(frames[pick]).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = student(x)
        loss = (((out.float() - torch.from_numpy(targets[pick])) * weight) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
        if log is not None and steps % 200 == 0:
            log(f"step {steps} ({elapsed:.0f} s): training loss {loss.item():.5f}")
    seconds = time.monotonic() - t0
    end_nmse = held_out_nmse()
    student.eval()
    return Distillation(cut, len(frames) - cut, steps, seconds, start_nmse, end_nmse)


def export_student(student: nn.Module, model: Path, note: str) -> Path:
    """Write the student beside the exported model at `model` as FILE.encoder.relu.onnx
    ("frames" (n, 3, 128, 128) -> "features" (n, 256)), tagged with the model's and the
    teacher encoder's SHA-256 and `note` (how it was distilled). Returns the path."""
    teacher, _ = companion_paths(model)
    props = {
        "nbhr.parent_sha256": file_sha256(model),
        "nbhr.teacher_encoder_sha256": file_sha256(teacher),
        "nbhr.encoder": "relu-distilled",
        "nbhr.first_stride": str(student_first_stride(student)),
        "nbhr.distillation": note,
    }
    out = relu_encoder_path(model)
    write_encoder(student, out, props)
    return out


def write_encoder(module: nn.Module, path: Path, props: dict[str, str]) -> None:
    """Export a per-frame encoder module ("frames" (n, 3, 128, 128) -> "features" (n, 256)) to
    `path` with metadata `props`; the module itself is left as it was."""
    module = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)
    frame = torch.zeros(2, 3, FRAME_SIZE, FRAME_SIZE)
    _export_graph(module, frame, path, "frames", ["features"], None, props)
