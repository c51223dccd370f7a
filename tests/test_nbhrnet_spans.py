"""NBHRnet's second estimate: HR from its 2-s PPG outputs stitched over a longer span."""

from __future__ import annotations

import numpy as np
import pytest

from model.bands import Band
from model.nbhrnet import stitched_ppg_hr
from model.synthetic import ppg_wave

FPS = 30.0
BAND = Band.for_population("neonate")


def _outputs(hr_bpm: float, seconds: float, seed: int) -> list[np.ndarray]:
    """A real-shaped pulse at `hr_bpm`, cut into 2-s windows that each get their own scale and
    offset (as a network's per-window outputs do), plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FPS)) / FPS
    wave = ppg_wave(t, np.full_like(t, hr_bpm), rng)
    windows = wave.reshape(-1, 60)
    scale = rng.uniform(0.2, 3.0, (len(windows), 1))
    offset = rng.uniform(0.0, 5.0, (len(windows), 1))
    return list(windows * scale + offset + 0.05 * rng.standard_normal(windows.shape))


@pytest.mark.parametrize("hr_bpm", [95.0, 143.7, 190.0])
def test_stitched_outputs_give_the_rate_far_finer_than_one_window(hr_bpm: float) -> None:
    hr, snr = stitched_ppg_hr(_outputs(hr_bpm, 10.0, seed=int(hr_bpm)), FPS, BAND)
    # One 2-s window resolves 30 bpm per FFT bin; five joined ones land within 2 bpm.
    assert hr == pytest.approx(hr_bpm, abs=2.0)
    assert snr is not None and snr > 0


def test_flat_outputs_give_no_rate() -> None:
    assert stitched_ppg_hr([np.zeros(60)] * 5, FPS, BAND) == (None, None)
