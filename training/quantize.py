"""Static int8 quantisation of an exported NBHRnet's per-frame encoder, calibrated on face crops
cut by the workers' own path (decode, track, crop, resample, normalise).

Why static and per-channel: the encoder is all 3x3 convolutions, and onnxruntime runs an int8
QLinearConv (uint8 activations x int8 weights) with the CPU's VNNI dot-product instructions.
Dynamic quantisation would re-measure every activation's range at run time; per-tensor weight
scales would let the widest output channel set the step of every other one.

The result, FILE.encoder.int8.onnx beside FILE.onnx, replaces FILE.encoder.onnx in workers that
run at int8 precision (model.nbhrnet.NBHRNetRunner). Needs the `onnx` package (the `train`
extra), not torch.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.nbhrnet import companion_paths, int8_encoder_path, normalise_blocks

# Frames per calibration batch (the encoder's activations are ~4 MB a frame).
CALIBRATION_BATCH = 30
# Activation ranges from this percentile of |x| (and its mirror), not the extremes: one
# saturated pixel in one frame would otherwise widen a layer's step for every frame.
CALIBRATION_PERCENTILE = 99.99


@dataclass(frozen=True)
class Calibration:
    """Normalised frames the quantiser measures activation ranges on.

    frames: float32 (n, 3, 128, 128), as NBHRNetRunner.encode_frames takes them.
    sources: the videos they came from.
    """

    frames: np.ndarray
    sources: tuple[str, ...]


def calibration_frames(
    videos: Sequence[Path], roi: str = "face", max_frames: int = 600, stride: int = 6
) -> Calibration:
    """Face crops of `videos` through the workers' path: every `stride`-th 30-fps frame of the
    60-frame blocks with a face in every frame, normalised block by block as workers do, up to
    `max_frames` frames spread over the videos in turn. ValueError when a video cannot be read
    or none has a face."""
    from worker.crops import resample_indices
    from worker.process import extract_trace
    from worker.video import VideoError, probe

    per_video: list[np.ndarray] = []
    sources: list[str] = []
    for path in videos:
        crops: list[np.ndarray | None] = []
        try:
            info = probe(path)
            extract_trace(path, 0, info.n_frames, roi, info.fps, crops=crops, colour=False)
        except VideoError as exc:
            raise ValueError(f"{path}: {exc}") from None
        frames = [crops[i] for i in resample_indices(len(crops), info.fps)]
        blocks = [frames[b : b + 60] for b in range(0, len(frames) - 59, 60)]
        good = [np.stack(b) for b in blocks if all(f is not None for f in b)]
        if good:
            per_video.append(normalise_blocks(np.concatenate(good))[::stride])
            sources.append(str(path))
    if not per_video:
        raise ValueError("no calibration video has a 2-s stretch with a face in every frame")
    # Round-robin over the videos, so that a cap keeps every video represented.
    order = sorted(
        ((i, v) for v, frames in enumerate(per_video) for i in range(len(frames))),
        key=lambda iv: iv[0],
    )[:max_frames]
    frames = np.stack([per_video[v][i] for i, v in order])
    return Calibration(np.ascontiguousarray(frames, dtype=np.float32), tuple(sources))


def quantize_encoder(model: Path, calibration: Calibration, method: str = "percentile") -> Path:
    """Write the int8 encoder of the exported model at `model` (its FILE.encoder.onnx must be
    beside it) to FILE.encoder.int8.onnx and return that path.

    method: "percentile" (activation ranges from CALIBRATION_PERCENTILE) or "minmax" (the
    observed extremes; quicker, used by tests). The file's metadata carries the parent model's
    SHA-256 ("nbhr.parent_sha256", as the fp32 companions do), the fp32 encoder's, and a line
    on the calibration.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, not {method!r}")
    model = Path(model)
    encoder, _ = companion_paths(model)
    if not encoder.is_file():
        raise ValueError(f"{model.name} has no encoder companion {encoder.name}: export it again")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(
                calibration.frames[i : i + CALIBRATION_BATCH]
                for i in range(0, len(calibration.frames), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"frames": batch}

    out = int8_encoder_path(model)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "encoder.prepared.onnx"
        # Shape inference and graph folding first, as onnxruntime recommends before quantising.
        quant_pre_process(str(encoder), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            # QOperator: QLinearConv nodes outright, rather than Q/DQ pairs left to fusion.
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
        )
    graph = onnx.load(str(out))
    props = {
        "nbhr.parent_sha256": _sha256(model),
        "nbhr.encoder_sha256": _sha256(encoder),
        "nbhr.precision": "int8",
        "nbhr.calibration": (
            f"{len(calibration.frames)} normalised face-crop frames from "
            f"{len(calibration.sources)} videos; {method} activation ranges; "
            "per-channel int8 weights, uint8 activations (QOperator)"
        ),
    }
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(out))
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
