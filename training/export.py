"""Export a trained NBHRNet to ONNX, the form the workers run (model.nbhrnet.NBHRNetRunner): the
whole model as one graph, plus its two halves (per-frame encoder, per-window head) as companion
files, so that workers compute each frame's CNN features once however much windows overlap."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from model.nbhrnet import companion_paths, file_sha256
from training.nbhrnet import FEATURES, FRAME_SIZE, NBHRNet

# Opset 17 has LSTM and everything else the model uses, and onnxruntime >= 1.17 (our floor)
# runs it.
OPSET = 17


def export_onnx(model: NBHRNet, path: Path, frames: int = 60, companions: bool = True) -> None:
    """Write `model` to `path` as an ONNX graph, with the TorchScript exporter, and (companions)
    its encoder and head beside it (model.nbhrnet.companion_paths; see _export_companions).

    Input "frames": float32 (batch, frames, 3, 128, 128), normalised as NBHRNet.forward expects;
    outputs "ppg": float32 (batch, frames) and "hr": float32 (batch,), beats per minute. The batch
    dimension is dynamic; frames must equal the model's (its HR head is sized for it).
    The model is put in eval mode (BatchNorm running statistics, no dropout) and left there.
    The input contract is also written into the file's metadata_props (keys "nbhr.*").
    """
    if frames != model.frames:
        raise ValueError(f"model was built for {model.frames} frames, not {frames}")
    model.eval()
    # Batch 2, not 1, so that nothing in the trace can specialise on a batch of one.
    dummy = torch.zeros(2, frames, 3, FRAME_SIZE, FRAME_SIZE)
    props = {
        "nbhr.model": "NBHRnet (Huang et al., EAAI 2021)",
        "nbhr.input": (
            f"frames: float32 (batch, {frames}, 3, {FRAME_SIZE}, {FRAME_SIZE}), RGB face crops,"
            " z-scored per colour channel over the window"
        ),
        "nbhr.outputs": f"ppg: float32 (batch, {frames}); hr: float32 (batch,), bpm",
    }
    _export_graph(model, dummy, Path(path), "frames", ["ppg", "hr"], frames, props)
    if companions:
        _export_companions(model, Path(path), frames)


def _export_graph(
    module: nn.Module,
    dummy: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
    frames: int | None,
    props: dict[str, str],
) -> None:
    """Trace `module` on `dummy` into an ONNX file with a dynamic first axis on every input and
    output; `frames` (if given) is declared as the first output's second axis, `props` are
    written into the file's metadata_props."""
    with warnings.catch_warnings():
        # The exporter warns that LSTMs traced at batch != 1 may not run at other batch sizes;
        # that applies to explicit initial states. Ours are implicit and exported as zeros shaped
        # from the input at run time (ConstantOfShape), and the tests run batches 1 and 3.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        # nn.LSTM checks its input and state sizes in Python; those are fixed by the
        # architecture, so baking the checks into the trace is what we want.
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module="torch.nn.modules.rnn"
        )
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    if frames is not None:
        # The exporter cannot tell that the squeezed PPG keeps the frames axis; declare it.
        graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = frames
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))


class _Head(nn.Module):
    def __init__(self, model: NBHRNet) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)


def _export_companions(model: NBHRNet, path: Path, frames: int) -> None:
    """The model's two halves, each tagged with the SHA-256 of the whole-model file at `path`
    (metadata "nbhr.parent_sha256"), so that a runner never pairs them with another model:

    encoder: "frames" float32 (n, 3, 128, 128), normalised frames -> "features" (n, 256);
    head: "features" float32 (batch, frames, 256) -> "ppg" (batch, frames), "hr" (batch,).
    The head applied to the encoder's features of a window's frames is the whole model.
    """
    parent = {"nbhr.parent_sha256": file_sha256(path)}
    encoder_path, head_path = companion_paths(path)
    frame = torch.zeros(2, 3, FRAME_SIZE, FRAME_SIZE)
    _export_graph(model.encoder, frame, encoder_path, "frames", ["features"], None, parent)
    # eval(): the exporter restores the wrapper's mode afterwards, and a new module is in train
    # mode, which would put the model's head back into training.
    head, features = _Head(model).eval(), torch.zeros(2, frames, FEATURES)
    _export_graph(head, features, head_path, "features", ["ppg", "hr"], frames, parent)
