"""The NBHRnet that ships with nbhr (model/data/nbhrnet.onnx, model/MODEL_CARD.md): what the card
says of the file holds, `--estimator nbhrnet` runs it without --model, and it reads heart rate
from video it was not trained on."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.nbhrnet import (
    BUNDLED_CARD,
    BUNDLED_INT8_VERSION,
    BUNDLED_MODEL,
    NBHRNetRunner,
    int8_encoder_path,
    normalise_blocks,
    normalise_window,
)
from tests.conftest import REPO
from tests.helpers import nbhr, nbhr_json

# The paper's NBHR figure, which the card's target is; the held-out synthetic video here
# measured about 1 bpm.
PAPER_MAE_BPM = 3.97
INT8 = f"nbhrnet:{BUNDLED_INT8_VERSION}"


def test_the_card_describes_the_file() -> None:
    card = json.loads(BUNDLED_CARD.read_text())
    sha = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()
    assert card["sha256"] == sha
    assert BUNDLED_MODEL.stat().st_size < 10 * 2**20
    assert sha in (BUNDLED_MODEL.parents[1] / "MODEL_CARD.md").read_text()
    spec = NBHRNetRunner(BUNDLED_MODEL).describe()
    assert spec["inputs"]["frames"] == ["batch", 60, 3, 128, 128]
    assert card["metrics"]["heldout_synthetic_hr_mae_bpm"] <= PAPER_MAE_BPM
    int8 = hashlib.sha256(int8_encoder_path(BUNDLED_MODEL).read_bytes()).hexdigest()
    assert card["int8"]["sha256"] == int8 == NBHRNetRunner(BUNDLED_MODEL).int8_sha256
    assert int8 in (BUNDLED_MODEL.parents[1] / "MODEL_CARD.md").read_text()
    # Issue 6 allows quantisation 0.3 bpm of MAE on held-out windows.
    fp32_mae = card["int8"]["heldout_synthetic_hr_mae_bpm_fp32_same_run"]
    assert abs(card["int8"]["heldout_synthetic_hr_mae_bpm"] - fp32_mae) <= 0.3


@pytest.fixture(scope="module")
def default_run(demo_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding `nbhr run --estimator nbhrnet` (no --model) on the session's demo,
    then the same at fp32 precision (the default is the int8 encoder that ships beside it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('bundled') / 'nbhr.sqlite'}"
    nbhr("run", demo_archive, "--db", url, "--estimator", "nbhrnet")
    nbhr("run", demo_archive, "--db", url, "--estimator", "nbhrnet", "--nbhrnet-precision", "fp32")
    return url


def _evaluate(url: str, model: str) -> dict:
    return nbhr_json(
        "evaluate",
        *("--db", url, "--estimator", "nbhrnet", "--model", model),
        *("--level", "window", "--json"),
    )


def test_nbhrnet_runs_the_bundled_model_by_default(demo_archive: Path, default_run: str) -> None:
    """The session's demo archive (seed 7) shares no infant with the training archive (seed 0):
    its faces, pulses and motion are new to the model. Both precisions are registered model
    versions, and each reads the heart rate."""
    sqlite_url = default_run
    key = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()[:16]
    int8_key = hashlib.sha256(int8_encoder_path(BUNDLED_MODEL).read_bytes()).hexdigest()[:16]
    rows = nbhr_json("results", "--db", sqlite_url, "--estimator", "nbhrnet", "--format", "json")
    # Windows name their model by key, shown as its registered name.
    assert {r["model"] for r in rows} == {"nbhrnet:1", INT8}

    listed = nbhr_json("models", "list", "--db", sqlite_url, "--json")
    assert [(m["name"], m["version"], m["key"]) for m in listed] == [
        ("nbhrnet", "1", key),
        ("nbhrnet", BUNDLED_INT8_VERSION, int8_key),
    ]
    assert all("synthetic" in m["trained_on"] for m in listed)
    assert listed[0]["metrics"]["val_hr_mae_bpm"] < PAPER_MAE_BPM

    for model in ("nbhrnet:1", INT8):
        ev = _evaluate(sqlite_url, model)
        print(model, ev["overall"], ev["ppg_r_mean"])
        assert ev["overall"]["n"] == 16  # 2 recordings x 8 two-second windows with a face
        assert ev["overall"]["mae"] < PAPER_MAE_BPM
        assert ev["ppg_r_mean"] > 0.7
    # Using it again registers nothing twice.
    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "nbhrnet")
    assert len(nbhr_json("models", "list", "--db", sqlite_url, "--json")) == 2


def test_an_earlier_int8_encoders_windows_keep_their_own_name(sqlite_url: str) -> None:
    """A database from before the int8 encoder last changed holds nbhrnet:1-int8 under the
    earlier file's hash: the shipped one is registered beside it, under its own version, not
    left as an unnamed key."""
    from db import queries
    from db.engine import session_scope
    from nbhr.cli import _bundled_model, open_db

    assert BUNDLED_INT8_VERSION != "1-int8"
    with session_scope(open_db(sqlite_url)) as s:
        earlier = "66bbff0194ffc3a178eaa030e9e45b10fc160adcd707645919ce07f47b48a548"
        queries.register_model(
            s, "nbhrnet", "1-int8", "/gone/nbhrnet.encoder.int8.onnx", earlier, {}
        )
    _bundled_model(sqlite_url)
    listed = nbhr_json("models", "list", "--db", sqlite_url, "--json")
    int8_sha = hashlib.sha256(int8_encoder_path(BUNDLED_MODEL).read_bytes()).hexdigest()
    assert sorted((m["version"], m["key"]) for m in listed) == sorted(
        [
            ("1", NBHRNetRunner(BUNDLED_MODEL).sha256[:16]),
            ("1-int8", earlier[:16]),
            (BUNDLED_INT8_VERSION, int8_sha[:16]),
        ]
    )


def test_int8_encoder_stays_close_to_fp32(default_run: str) -> None:
    """The quantised encoder is another model version, but the same heart rates within a
    fraction of a beat per minute, window by window (issue 6 allows 0.3 bpm of MAE)."""
    by_model: dict[str, dict] = {}
    for r in nbhr_json(
        "results", "--db", default_run, "--estimator", "nbhrnet", "--format", "json"
    ):
        by_model.setdefault(r["model"], {})[(r["recording"], r["t_start"])] = r["hr_bpm"]
    fp32, int8 = by_model["nbhrnet:1"], by_model[INT8]
    assert fp32.keys() == int8.keys()
    pairs = [(fp32[k], int8[k]) for k in fp32 if fp32[k] is not None]
    assert len(pairs) == 16 and all(int8[k] is None for k in fp32 if fp32[k] is None)
    diff = np.abs(np.diff(np.array(pairs), axis=1))
    print("int8 - fp32 |dHR| mean", diff.mean(), "max", diff.max())
    assert 0 < diff.mean() < 0.5
    mae = {m: _evaluate(default_run, m)["overall"]["mae"] for m in ("nbhrnet:1", INT8)}
    assert abs(mae[INT8] - mae["nbhrnet:1"]) <= 0.3


def test_frames_encoded_once_give_the_whole_models_results() -> None:
    """Block-normalised frames through the encoder, cut into windows on the 2-s grid and run
    through the head, give exactly what the whole-model graph gives each window."""
    runner = NBHRNetRunner(BUNDLED_MODEL)
    assert runner.framewise
    video = np.random.default_rng(1).integers(0, 256, (180, 128, 128, 3), dtype=np.uint8)
    features = runner.encode_frames(normalise_blocks(video))
    hr, ppg = runner.run_head(features.reshape(3, 60, -1))
    whole_hr, whole_ppg = runner.predict(
        np.stack([normalise_window(w) for w in np.split(video, 3)])
    )
    np.testing.assert_allclose(hr, whole_hr, atol=1e-3)
    np.testing.assert_allclose(ppg, whole_ppg, atol=1e-5)


def test_a_batch_run_again_takes_no_more_memory() -> None:
    """The whole graph's second run of a batch needs no memory beyond its first's: with
    onnxruntime's memory pattern it took one more block the size of all the batch's
    activations (about 260 MB a window) beside the arena's chunks (NBHRNetRunner._get_session).
    Peak RSS of a fresh process after each run."""
    script = (
        "import resource, numpy as np\n"
        "from model.nbhrnet import BUNDLED_MODEL, NBHRNetRunner\n"
        "runner = NBHRNetRunner(BUNDLED_MODEL)\n"
        "x = np.random.default_rng(0).standard_normal((2, 60, 3, 128, 128), np.float32)\n"
        "for _ in range(2):\n"
        "    runner.predict(x, batch_size=2)\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    first, second = map(int, out.stdout.split())
    assert first > 400  # the batch's activations are there to be counted
    assert second - first < 100, f"peak RSS {first} MB after the first run, {second} after"


def _nbhrnet_windows(url: str, model: str) -> dict[tuple[str, float], float | None]:
    rows = nbhr_json("results", "--db", url, "--estimator", "nbhrnet", "--format", "json")
    return {(r["recording"], r["t_start"]): r["hr_bpm"] for r in rows if r["model"] == model}


def test_overlapping_windows_share_frame_features(
    demo_archive: Path, default_run: str, tmp_path: Path
) -> None:
    """--nbhrnet-hop-s 0.5: four windows per 2 s; those on the 2-s grid are the hop-2 run's."""
    base = default_run
    dense = f"sqlite:///{tmp_path / 'b.sqlite'}"
    nbhr("run", demo_archive, "--db", dense, "--estimator", "nbhrnet", "--nbhrnet-hop-s", "0.5")
    coarse, fine = (
        _nbhrnet_windows(base, INT8),
        _nbhrnet_windows(dense, INT8),
    )
    # Three 16-s recordings: 8 windows every 2 s, 29 every 0.5 s (the last starts at 14 s).
    assert len(coarse) == 3 * 8 and len(fine) == 3 * 29
    for key, hr in coarse.items():
        assert fine[key] == hr
    with_face = [hr for hr in fine.values() if hr is not None]
    assert len(with_face) == 2 * 29  # the face-less recording has none


def test_decoding_beside_inference_gives_the_same_windows(
    demo_archive: Path, default_run: str, pg_url: str
) -> None:
    """One process with two threads encodes each 60-frame block in a thread of its own while
    the next frames are decoded (worker.features): the windows are the pool's, to the bit."""
    out = nbhr(
        "run", demo_archive, "--db", pg_url, "--estimator", "nbhrnet", "-j1", "--threads", "2"
    )
    assert "1 process(es) x 2 thread(s)" in out.stdout
    pooled, overlapped = (
        _nbhrnet_windows(default_run, INT8),
        _nbhrnet_windows(pg_url, INT8),
    )
    assert len(pooled) == 3 * 8 and overlapped == pooled
    assert sum(hr is not None for hr in overlapped.values()) == 2 * 8


def test_a_25_fps_video_is_resampled_to_the_models_rate(
    face_videos: list[Path], tmp_path: Path
) -> None:
    """At another frame rate than 30 fps a segment's crops are kept, resampled to 30 fps, then
    encoded in blocks: the 16-s demo video's frames written at 25 fps last 19.2 s, which hold
    9 whole 2-s windows, each with a face."""
    archive = tmp_path / "archive"
    archive.mkdir()
    cap = cv2.VideoCapture(str(face_videos[0]))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    cap.release()
    height, width = frames[0].shape[:2]
    out = cv2.VideoWriter(
        str(archive / "clip25.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height)
    )
    for frame in frames:
        out.write(frame)
    out.release()
    url = f"sqlite:///{tmp_path / 'nbhr.sqlite'}"
    nbhr("run", archive, "--db", url, "--estimator", "nbhrnet")
    rows = nbhr_json("results", "--db", url, "--estimator", "nbhrnet", "--format", "json")
    assert len(frames) == 480
    assert sorted(r["t_start"] for r in rows) == pytest.approx([2.0 * k for k in range(9)])
    assert all(r["face_found"] and 80 <= r["hr_bpm"] <= 240 for r in rows)


def test_overlap_needs_the_encoder_and_head(tmp_path: Path, demo_archive: Path) -> None:
    alone = tmp_path / "alone.onnx"
    shutil.copy(BUNDLED_MODEL, alone)
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    args = ("run", demo_archive, "--db", url, "--estimator", "nbhrnet", "--model", alone)
    out = nbhr(*args, "--nbhrnet-hop-s", "0.5", check=False)
    assert out.returncode == 2 and "encoder/head companions" in out.stderr
    out = nbhr(*args[:-2], "--nbhrnet-hop-s", "0.7", check=False)
    assert out.returncode == 2 and "must divide 2 s" in out.stderr


def test_bench_reports_the_cost_of_overlap(face_videos: list[Path]) -> None:
    from nbhr.bench import bench_nbhrnet_overlap, face_frames

    out = bench_nbhrnet_overlap(BUNDLED_MODEL, face_frames(face_videos, 120))
    # 120 frames: windows at 0 and 60 every 2 s; at 0, 15, ..., 60 every 0.5 s.
    assert (out["hop_2s"]["windows"], out["hop_0.5s"]["windows"]) == (2, 5)
    assert out["hop_0.5s_whole_graph"]["windows"] == 5
    assert out["ratio_hop_0.5s_to_2s"] > 0


def test_bench_compares_precisions_on_face_crops(face_videos: list[Path]) -> None:
    from nbhr.bench import bench_nbhrnet_precision

    out = bench_nbhrnet_precision(BUNDLED_MODEL, face_videos, windows=1, repeats=1)
    assert out["windows"] == 1 and out["frames_from"] == str(face_videos[0])
    assert set(out) >= {"whole_graph_fp32", "encoder_fp32_and_head", "encoder_int8_and_head"}
    assert out["whole_graph_fp32"]["speedup_vs_whole_graph_fp32"] == 1.0
    peak = out["core_peak_g_per_s"]
    assert peak["fp32"] > 0 and peak["int8"] > 0
    for key in ("whole_graph_fp32", "encoder_fp32_and_head", "encoder_int8_and_head"):
        entry = out[key]
        assert entry["cpu_s_per_window"] > 0 and entry["conv_g_per_s"] > 0
        assert entry["share_of_core_peak"] > 0
