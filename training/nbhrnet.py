"""NBHRnet (Huang et al., EAAI 2021) in PyTorch: a per-frame CNN encoder and a recurrent head that
turn one 2-s window of face crops into a PPG estimate and a heart rate."""

from __future__ import annotations

import torch
from torch import nn

# One window: 60 frames (2 s at 30 fps) of 128 x 128 RGB face crops.
FRAMES = 60
FRAME_SIZE = 128
FEATURES = 256

# Spatial encoder, applied to every frame. Plain 3x3 conv layers are (in, out, stride, with BN);
# the dilated blocks are (in, f) and output 3f channels at half the resolution.
STEM = ((3, 32, 1, True), (32, 32, 2, True))
DILATED_BLOCKS = ((32, 16), (48, 32))
DILATIONS = (1, 2, 2)
TOP = ((96, 128, 1, True), (128, 192, 2, True), (192, 192, 1, True), (192, FEATURES, 2, False))

# Recurrent layers as (input size, hidden size, bidirectional); each returns the whole sequence.
PPG_LSTMS = ((FEATURES, 96, True), (192, 32, True), (64, 8, False))
HR_LSTMS = ((1, 32, True), (64, 24, True), (48, 8, True), (16, 1, False))
HR_HIDDEN = 32
HR_DROPOUT = 0.25
# Keras l2(1e-3) on the kernel of the first Dense layer of the HR head.
HR_L2 = 1e-3

# Keras BatchNormalization defaults (epsilon 1e-3, moving-average momentum 0.99), which the
# reference was trained with; PyTorch's momentum is the weight of the new batch, hence 0.01.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv_unit(
    cin: int, cout: int, stride: int = 1, dilation: int = 1, bn: bool = True, kernel: int = 3
) -> nn.Sequential:
    """conv -> per-channel PReLU -> (BatchNorm), the reference's order (BN after activation).

    Padding dilation * (kernel // 2) keeps the size at stride 1 and halves an even size exactly at
    stride 2 (TF "same" pads stride-2 convs asymmetrically instead; sizes agree, alignment differs
    by half a pixel, which does not matter for a model trained from scratch).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation),
        # Keras initialises PReLU slopes at zero: the network starts as a ReLU network.
        nn.PReLU(cout, init=0.0),
    ]
    if bn:
        layers.append(nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))
    return nn.Sequential(*layers)


class DilatedBlock(nn.Module):
    """Three parallel branches with dilations DILATIONS, each downsampling by 2, then a 1x1 fusion.

    x: float (B, cin, H, W) -> float (B, 3f, H/2, W/2).
    """

    def __init__(self, cin: int, f: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(_conv_unit(cin, f, dilation=d), _conv_unit(f, f, stride=2, bn=False))
            for d in DILATIONS
        )
        width = f * len(DILATIONS)
        self.fuse = nn.Sequential(
            nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.Conv2d(width, width, 1),
            nn.PReLU(width, init=0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def _encoder() -> nn.Sequential:
    """Frame -> features: float (B, 3, 128, 128) -> float (B, 256), B = frames, not windows."""
    return nn.Sequential(
        *(_conv_unit(cin, cout, stride, bn=bn) for cin, cout, stride, bn in STEM),
        *(DilatedBlock(cin, f) for cin, f in DILATED_BLOCKS),
        *(_conv_unit(cin, cout, stride, bn=bn) for cin, cout, stride, bn in TOP),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _lstms(spec: tuple[tuple[int, int, bool], ...]) -> nn.ModuleList:
    return nn.ModuleList(
        nn.LSTM(n_in, hidden, batch_first=True, bidirectional=bi) for n_in, hidden, bi in spec
    )


def _run_lstms(lstms: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for lstm in lstms:
        x, _ = lstm(x)
    return x


class PPGHead(nn.Module):
    """Feature sequence -> PPG: float (N, T, 256) -> float (N, T), >= 0 (ReLU), arbitrary units
    (trained against the reference PPG min-max scaled to [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_in = _bn1d(FEATURES)
        self.lstms = _lstms(PPG_LSTMS)
        width = PPG_LSTMS[-1][1]
        self.norm_out = _bn1d(width)
        self.conv = nn.Conv1d(width, 1, 3, padding=1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d and Conv1d want channels first, LSTMs (batch_first) want time first.
        x = self.norm_in(seq.transpose(1, 2)).transpose(1, 2)
        x = _run_lstms(self.lstms, x)
        x = self.norm_out(x.transpose(1, 2))
        return torch.relu(self.conv(x)).squeeze(1)


class HRHead(nn.Module):
    """PPG -> heart rate: float (N, T) -> float (N,), beats per minute, >= 0 (ReLU)."""

    def __init__(self, frames: int = FRAMES) -> None:
        super().__init__()
        self.norm_in = _bn1d(1)
        self.lstms = _lstms(HR_LSTMS)
        self.dense = nn.Linear(frames * HR_LSTMS[-1][1], HR_HIDDEN)
        self.dropout = nn.Dropout(HR_DROPOUT)
        self.out = nn.Linear(HR_HIDDEN, 1)

    def forward(self, ppg: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(ppg.unsqueeze(1)).transpose(1, 2)
        x = _run_lstms(self.lstms, x).flatten(1)
        x = self.dropout(torch.tanh(self.dense(x)))
        return torch.relu(self.out(x)).squeeze(1)


class TemporalHead(nn.Module):
    """Feature sequence -> (ppg, hr): float (N, T, 256) -> (float (N, T), float (N,) bpm).

    `ppg` and `hr` are the two stages the reference trains one after the other.
    """

    def __init__(self, frames: int = FRAMES) -> None:
        super().__init__()
        self.ppg = PPGHead()
        self.hr = HRHead(frames)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ppg = self.ppg(seq)
        return ppg, self.hr(ppg)


class NBHRNet(nn.Module):
    """NBHRnet: one window of face crops -> (PPG, heart rate).

    Submodules: `encoder` (frame (B, 3, 128, 128) -> (B, 256)) and `head` (TemporalHead:
    (N, T, 256) -> (ppg, hr)), so that the two can be exported and run separately.
    Weights are initialised as Keras would (see `_init_like_keras`).
    """

    def __init__(self, frames: int = FRAMES) -> None:
        super().__init__()
        self.frames = frames
        self.encoder = _encoder()
        self.head = TemporalHead(frames)
        self.apply(_init_like_keras)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float32 (N, T=60, 3, 128, 128), channels first, already normalised: each window
        z-scored per colour channel over all its frames and pixels (model.nbhrnet.normalise_window).

        Returns ppg: float32 (N, T), arbitrary units >= 0; hr: float32 (N,), beats per minute.
        """
        t = x.shape[1]
        feats = self.encoder(x.flatten(0, 1))
        return self.head(feats.reshape(-1, t, feats.shape[-1]))

    def l2_penalty(self) -> torch.Tensor:
        """The reference's kernel regulariser, for the trainer to add to the loss.

        Returns a scalar tensor, HR_L2 * sum of squared weights of the first Dense layer of the
        HR head (its bias is not regularised, as in Keras).
        """
        return HR_L2 * self.head.hr.dense.weight.square().sum()


def _init_like_keras(module: nn.Module) -> None:
    """Keras defaults, which the reference trained with: Glorot-uniform kernels and zero biases;
    LSTMs with orthogonal recurrent kernels and a forget-gate bias of 1."""
    if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LSTM):
        for name, param in module.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)
                # Gates are stacked (input, forget, cell, output); PyTorch sums two bias vectors,
                # so Keras' single forget bias of 1 goes into one of them.
                if name.startswith("bias_ih"):
                    hidden = module.hidden_size
                    param.data[hidden : 2 * hidden] = 1.0


# Parameter and cost counts by formula from the layer sizes above, independently of PyTorch's
# bookkeeping, so that a test can check the model against the paper's figures.


def _conv_params(cin: int, cout: int, kernel: int = 3) -> int:
    return kernel * kernel * cin * cout + cout


def _lstm_params(n_in: int, hidden: int, bidirectional: bool) -> int:
    # Four gates, input and recurrent kernels, and PyTorch's two bias vectors, per direction.
    per_direction = 4 * hidden * (n_in + hidden) + 8 * hidden
    return per_direction * (2 if bidirectional else 1)


def encoder_parameter_count() -> int:
    """Learnable parameters of the per-frame encoder (BatchNorm: scale and shift, 2 per channel)."""
    total = 0
    for cin, cout, _, bn in STEM + TOP:
        total += _conv_params(cin, cout) + cout + (2 * cout if bn else 0)
    for cin, f in DILATED_BLOCKS:
        branch = _conv_params(cin, f) + f + 2 * f + _conv_params(f, f) + f
        width = f * len(DILATIONS)
        total += len(DILATIONS) * branch + 2 * width + _conv_params(width, width, 1) + width
    return total


def ppg_head_parameter_count() -> int:
    """Learnable parameters of the PPG head."""
    width = PPG_LSTMS[-1][1]
    lstms = sum(_lstm_params(*spec) for spec in PPG_LSTMS)
    return 2 * FEATURES + lstms + 2 * width + width * 3 + 1


def hr_head_parameter_count(frames: int = FRAMES) -> int:
    """Learnable parameters of the HR head."""
    lstms = sum(_lstm_params(*spec) for spec in HR_LSTMS)
    flat = frames * HR_LSTMS[-1][1]
    return 2 * 1 + lstms + flat * HR_HIDDEN + HR_HIDDEN + HR_HIDDEN + 1


def analytic_parameter_count(frames: int = FRAMES) -> int:
    """Learnable parameters of NBHRNet(frames), by formula (BatchNorm running statistics are
    buffers, not parameters, and are not counted)."""
    return encoder_parameter_count() + ppg_head_parameter_count() + hr_head_parameter_count(frames)


def conv_flops_per_frame(frame_size: int = FRAME_SIZE) -> int:
    """Cost of all 2-D convolutions for one frame, FLOPs = 2 x multiply-adds, each conv at its
    output resolution (biases, activations, BatchNorm and pooling are left out: they are < 1 %).

    frame_size: side of the square input crop, pixels; a multiple of 16.
    """
    macs = 0
    size = frame_size
    for cin, cout, stride, _ in STEM:
        size //= stride
        macs += size * size * 9 * cin * cout
    for cin, f in DILATED_BLOCKS:
        width = f * len(DILATIONS)
        # Each branch: a dilated conv at the input size, then a stride-2 conv.
        branch = size * size * 9 * cin * f + (size // 2) ** 2 * 9 * f * f
        size //= 2
        macs += len(DILATIONS) * branch + size * size * width * width
    for cin, cout, stride, _ in TOP:
        size //= stride
        macs += size * size * 9 * cin * cout
    return 2 * macs
