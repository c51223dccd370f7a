"""worker.features.FrameFeatures: crops encoded in 60-frame blocks as they arrive, inline or in
a thread beside the caller, with the same features either way."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from model.nbhrnet import FEATURE_SIZE, normalise_window
from worker.features import FrameFeatures


class _Encoder:
    """A stand-in for the encoder's arithmetic (each frame's first values, repeated to the
    feature size) that records which thread ran each block."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.threads: list[str] = []
        self.fail_on_call = fail_on_call

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        if self.fail_on_call is not None and len(self.threads) == self.fail_on_call:
            raise RuntimeError("encoder failed")
        return np.tile(frames.reshape(len(frames), -1)[:, :4], (1, FEATURE_SIZE // 4))


def _crops(n: int, missing: set[int]) -> list[np.ndarray | None]:
    rng = np.random.default_rng(n)
    return [
        None if i in missing else rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        for i in range(n)
    ]


@pytest.mark.parametrize("overlap", [False, True])
def test_blocks_are_encoded_as_they_come(overlap: bool) -> None:
    # 150 frames: blocks of 60, 60 and 30; the second has a frame without a face.
    crops = _crops(150, missing={75})
    encoder = _Encoder()
    with FrameFeatures(encoder, overlap=overlap) as features:
        for crop in crops:
            features.append(crop)
        got, encoded = features.result()
    assert features.n == 150 and got.shape == (150, FEATURE_SIZE)
    assert encoded.tolist() == [True] * 60 + [False] * 60 + [True] * 30
    for a, b in ((0, 60), (120, 150)):  # each block normalised on its own, the short one too
        assert np.array_equal(got[a:b], encoder(normalise_window(np.stack(crops[a:b]))))
    assert not got[60:120].any()
    ran = encoder.threads[:2]  # the two blocks encoded by FrameFeatures
    if overlap:
        assert all(name.startswith("nbhrnet-encoder") for name in ran)
    else:
        assert ran == [threading.current_thread().name] * 2


def test_an_encoder_error_reaches_the_caller_and_the_thread_ends() -> None:
    encoder = _Encoder(fail_on_call=2)
    with (
        pytest.raises(RuntimeError, match="encoder failed"),
        FrameFeatures(encoder, overlap=True) as features,
    ):
        for crop in _crops(180, missing=set()):
            features.append(crop)
        features.result()
    assert not [t for t in threading.enumerate() if t.name.startswith("nbhrnet-encoder")]
