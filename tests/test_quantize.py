"""Static int8 quantisation of NBHRnet's encoder (training/quantize.py, `nbhr quantize`): the file
it writes belongs to its model, runs on real face crops, and stays close to the fp32 encoder."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from model.nbhrnet import BUNDLED_MODEL, NBHRNetRunner, companion_paths, int8_encoder_path
from tests.helpers import copy_bundled_model, nbhr, nbhr_json
from training.quantize import calibration_frames, quantize_encoder


@pytest.fixture(scope="module")
def calibration(face_videos: list[Path]):
    return calibration_frames(face_videos, max_frames=90, stride=10)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model and its fp32 halves in a folder of their own (no int8 encoder yet)."""
    return copy_bundled_model(tmp_path_factory.mktemp("quantize"))


def test_calibration_frames_are_normalised_face_crops(calibration, face_videos) -> None:
    assert calibration.frames.shape == (90, 3, 128, 128)
    assert calibration.frames.dtype == np.float32
    assert set(calibration.sources) == {str(v) for v in face_videos}
    # Each frame comes from a block z-scored per channel: values of both signs, unit-ish spread.
    assert 0.5 < float(calibration.frames.std()) < 1.5
    assert calibration.frames.min() < -1 and calibration.frames.max() > 1


def test_int8_encoder_belongs_to_its_model(model_copy: Path, calibration) -> None:
    runner = NBHRNetRunner(model_copy, precision="int8")
    assert runner.int8_sha256 is None
    with pytest.raises(ValueError, match="nbhr quantize"):
        runner.encode_frames(calibration.frames[:2])

    out = quantize_encoder(model_copy, calibration, method="minmax")
    assert out == int8_encoder_path(model_copy) and out.is_file()
    assert out.stat().st_size < companion_paths(model_copy)[0].stat().st_size / 2

    int8 = NBHRNetRunner(model_copy, precision="int8")
    assert int8.int8_sha256 is not None
    got = int8.encode_frames(calibration.frames)
    want = NBHRNetRunner(model_copy).encode_frames(calibration.frames)
    assert not np.array_equal(got, want)  # it is not the fp32 encoder under another name
    cosine = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.mean() > 0.98

    # Beside another model's file it is not used: its parent hash differs.
    other = model_copy.with_name("other.onnx")
    shutil.copy(model_copy, other)
    with other.open("ab") as f:
        f.write(b"\0")  # another file (an appended byte changes the hash, not the graph)
    for half in companion_paths(model_copy):
        shutil.copy(half, half.with_name(half.name.replace(model_copy.stem, "other")))
    shutil.copy(out, int8_encoder_path(other))
    assert NBHRNetRunner(other).int8_sha256 is None


def test_quantize_command_and_precision_option(
    tmp_path: Path, demo_archive: Path, face_videos: list[Path]
) -> None:
    model = tmp_path / "m.onnx"
    for path in (BUNDLED_MODEL, *companion_paths(BUNDLED_MODEL)):
        shutil.copy(path, tmp_path / path.name.replace(BUNDLED_MODEL.stem, "m"))
    url = f"sqlite:///{tmp_path / 'q.sqlite'}"
    args = ("run", demo_archive, "--db", url, "--estimator", "nbhrnet", "--model", model)
    out = nbhr(*args, "--nbhrnet-precision", "int8", check=False)
    assert out.returncode == 2 and "nbhr quantize" in out.stderr

    made = nbhr_json(
        "quantize", model, face_videos[0], "--frames", "30", "--method", "minmax", "--json"
    )
    assert made["path"] == str(int8_encoder_path(model)) and int8_encoder_path(model).is_file()
    assert (made["frames"], made["videos"], made["method"]) == (30, 1, "minmax")
    assert 0.9 < made["cosine_mean"] <= 1.0 and made["cosine_min"] <= made["cosine_mean"]
    bad = tmp_path / "not a video.avi"
    bad.write_text("text")
    out = nbhr("quantize", model, bad, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"Error: {bad}: not a video" in out.stderr


def test_calibration_reads_a_video_only_as_far_as_it_needs(face_videos: list[Path]) -> None:
    """A video is read only until it has given max_frames frames, and one block of its crops
    is held at a time: a long recording costs no more memory than a short one, and the frames
    are those the whole video gives first."""
    whole = calibration_frames(face_videos[:1], max_frames=10_000, stride=1)
    tracemalloc.start()
    try:
        few = calibration_frames(face_videos[:1], max_frames=30, stride=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(few.frames, whole.frames[:30])
    # Read whole, the 16-s video's 480 crops are 24 MB and their normalised frames 94 MB.
    print(f"peak {peak / 1e6:.1f} MB")
    assert peak < 60e6


def test_calibration_reads_only_the_seconds_asked(face_videos: list[Path]) -> None:
    """nbhr bench's face_frames asks for a few seconds, so a long recording is not held whole;
    what it gets is the start of what the whole video gives (blocks are normalised apart)."""
    whole = calibration_frames(face_videos[:1], max_frames=10_000, stride=1)
    first = calibration_frames(face_videos[:1], max_frames=10_000, stride=1, seconds=4.5)
    assert len(whole.frames) == 480  # 16 s at 30 fps, a face throughout: eight blocks
    assert len(first.frames) == 120  # 4.5 s: the two whole 60-frame blocks in it
    np.testing.assert_array_equal(first.frames, whole.frames[:120])
