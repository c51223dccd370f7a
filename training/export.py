"""Export a trained NBHRNet to ONNX, the form the workers run (model.nbhrnet.NBHRNetRunner)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from training.nbhrnet import FRAME_SIZE, NBHRNet

# Opset 17 has LSTM and everything else the model uses, and onnxruntime >= 1.17 (our floor)
# runs it.
OPSET = 17


def export_onnx(model: NBHRNet, path: Path, frames: int = 60) -> None:
    """Write `model` to `path` as an ONNX graph, with the TorchScript exporter.

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
    batch = {0: "batch"}
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
            model,
            (dummy,),
            str(path),
            input_names=["frames"],
            output_names=["ppg", "hr"],
            dynamic_axes={"frames": batch, "ppg": batch, "hr": batch},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    # The exporter cannot tell that the squeezed PPG keeps the frames axis; declare it.
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = frames
    onnx.helper.set_model_props(
        graph,
        {
            "nbhr.model": "NBHRnet (Huang et al., EAAI 2021)",
            "nbhr.input": (
                f"frames: float32 (batch, {frames}, 3, {FRAME_SIZE}, {FRAME_SIZE}), RGB face crops,"
                " z-scored per colour channel over the window"
            ),
            "nbhr.outputs": f"ppg: float32 (batch, {frames}); hr: float32 (batch,), bpm",
        },
    )
    onnx.save(graph, str(path))
