"""Processing options of a job, and the window grid they define over a video.

The options are stored with the job (JSON) so that a segment task needs only ids; their
hash (config_key) tells whether a recording has already been processed this way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from model.bands import Band
from model.nbhrnet import PRECISIONS

CLASSICAL = ("pos", "chrom", "green", "pbvn")
NBHRNET = "nbhrnet"
# NBHRnet's second estimate: HR from the spectrum of its PPG output, stitched over the classical
# window (window_s, every hop_s). Written whenever "nbhrnet" runs; not requested on its own.
NBHRNET_PPG = "nbhrnet_ppg"
NBHRNET_WINDOW_S = 2.0  # 60 frames at 30 fps
NBHRNET_FPS = 30.0


@dataclass(frozen=True)
class ProcessingOptions:
    """How to turn a recording into windows.

    roi: "face" (track the face), "full" (whole frame) or "X,Y,W,H" (fixed box, pixels).
    window_s / hop_s: analysis window length and step, seconds.
    segment_s: video seconds per unit of work (cut on window boundaries).
    """

    estimators: tuple[str, ...] = CLASSICAL
    roi: str = "face"
    population: str = "neonate"
    hr_lo_bpm: float = field(default_factory=lambda: Band.for_population("neonate").lo_bpm)
    hr_hi_bpm: float = field(default_factory=lambda: Band.for_population("neonate").hi_bpm)
    window_s: float = 10.0
    hop_s: float = 2.0
    segment_s: float = 60.0
    # NBHRnet (estimator "nbhrnet"): the ONNX file and its SHA-256, which names the model version
    # in every window it writes.
    model_path: str | None = None
    model_sha256: str | None = None
    # Step between NBHRnet's 2-s windows, seconds: 2 s tiles the video; 0.5 s gives four
    # overlapping windows per 2 s from the same per-frame CNN features.
    nbhrnet_hop_s: float = NBHRNET_WINDOW_S
    # Precision of NBHRnet's per-frame encoder: "fp32" (the exported graph) or "int8" (its static
    # quantisation, training.quantize), and then the SHA-256 of that int8 file.
    nbhrnet_precision: str = "fp32"
    model_int8_sha256: str | None = None
    # Decode MJPEG frames straight to a reduced size at least this wide (worker.video.jpeg_scale)
    # for the classical estimators; None decodes at full size.
    decode_min_width: int | None = None

    @property
    def model_key(self) -> str:
        """How windows name the model that made them: the first 16 hex digits of its SHA-256,
        or of its int8 encoder's at int8 precision (an int8 model is a model version of its own:
        its estimates differ a little from the fp32 model's)."""
        sha = self.model_int8_sha256 if self.nbhrnet_precision == "int8" else self.model_sha256
        return (sha or "")[:16]

    @property
    def plan_window_s(self) -> float:
        """The shortest window any requested estimator uses; segments are planned on its grid
        so that no estimator loses windows at the end of a recording."""
        return min(self.window_s, NBHRNET_WINDOW_S) if NBHRNET in self.estimators else self.window_s

    @property
    def band(self) -> Band:
        return Band(self.hr_lo_bpm, self.hr_hi_bpm)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimators"] = list(self.estimators)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessingOptions:
        data = dict(data)
        data["estimators"] = tuple(data["estimators"])
        return cls(**data)

    @property
    def config_key(self) -> str:
        """Stable hash of everything that changes the windows a run writes."""
        data = self.to_json()
        data["estimators"] = sorted(data["estimators"])
        if self.nbhrnet_hop_s == NBHRNET_WINDOW_S:
            # Jobs planned before the option existed keep their key (and their finished work).
            del data["nbhrnet_hop_s"]
        if self.nbhrnet_precision == "fp32":
            del data["nbhrnet_precision"], data["model_int8_sha256"]
        if self.decode_min_width is None:
            del data["decode_min_width"]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        """Raise ValueError (readable) for inconsistent options."""
        if not self.estimators:
            raise ValueError("at least one estimator is needed")
        if NBHRNET in self.estimators and not self.model_path:
            raise ValueError("estimator nbhrnet needs a model file (model_path)")
        if self.model_path and NBHRNET not in self.estimators:
            raise ValueError("--model is only used by --estimator nbhrnet")
        if self.nbhrnet_precision not in PRECISIONS:
            raise ValueError(
                f"NBHRnet precision must be one of {', '.join(PRECISIONS)}, "
                f"not {self.nbhrnet_precision!r}"
            )
        if self.nbhrnet_precision == "int8" and not self.model_int8_sha256:
            raise ValueError("int8 precision needs the model's int8 encoder (model_int8_sha256)")
        frames = self.nbhrnet_hop_s * NBHRNET_FPS
        step = round(frames)
        if abs(frames - step) > 1e-6 or step < 1 or round(NBHRNET_WINDOW_S * NBHRNET_FPS) % step:
            raise ValueError(
                f"--nbhrnet-hop-s {self.nbhrnet_hop_s:g} must divide {NBHRNET_WINDOW_S:g} s into "
                f"whole frames at {NBHRNET_FPS:g} fps (e.g. 2, 1, 0.5, 0.2)"
            )
        if self.decode_min_width is not None and (
            self.roi not in ("face", "full") or (NBHRNET in self.estimators and self.roi != "face")
        ):
            raise ValueError(
                "reduced-size decoding is for --roi face (or full, without NBHRnet): a fixed "
                "box is given in full-size pixels, and NBHRnet's crops are sized by the face"
            )
        if self.window_s <= 0 or self.hop_s <= 0 or self.segment_s <= 0:
            raise ValueError("--window-s, --hop-s and --segment-s must be positive")
        if self.hop_s > self.window_s:
            raise ValueError(f"--hop-s {self.hop_s:g} is longer than --window-s {self.window_s:g}")
        ratio = self.segment_s / self.hop_s
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"--segment-s {self.segment_s:g} must be a multiple of --hop-s {self.hop_s:g} "
                "(segments are cut on window boundaries)"
            )


@dataclass(frozen=True)
class WindowGrid:
    """Windows of `win` frames every `hop` frames over a video of `n_frames` frames."""

    fps: float
    n_frames: int
    win: int
    hop: int

    @classmethod
    def for_video(
        cls, fps: float, n_frames: int, opts: ProcessingOptions, window_s: float | None = None
    ) -> WindowGrid:
        return cls(
            fps=fps,
            n_frames=n_frames,
            win=max(2, round((window_s or opts.window_s) * fps)),
            hop=max(1, round(opts.hop_s * fps)),
        )

    @property
    def n_windows(self) -> int:
        return 0 if self.n_frames < self.win else (self.n_frames - self.win) // self.hop + 1

    def start_time(self, k: int) -> float:
        """Start of window k, seconds; also the boundary used to cut segments."""
        return k * self.hop / self.fps

    def index_at(self, t: float) -> int:
        """The window index whose start time is t (t taken from start_time)."""
        return round(t * self.fps / self.hop)

    def frames(self, k: int) -> tuple[int, int]:
        """[first, stop) frame indices of window k."""
        first = k * self.hop
        return first, first + self.win

    def segments(self, segment_s: float, hop_s: float) -> list[tuple[float, float]]:
        """(t_start, t_end) per segment; a segment owns the windows that start in it."""
        per = max(1, round(segment_s / hop_s))
        n = self.n_windows
        return [(self.start_time(k0), self.start_time(min(k0 + per, n))) for k0 in range(0, n, per)]
