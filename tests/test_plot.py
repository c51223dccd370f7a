"""`nbhr plot RECORDING --out FILE.png`: a real PNG of a real run, drawn off-screen."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.helpers import nbhr, nbhr_json


def test_plot_draws_a_recording_against_its_reference(
    demo_archive: Path, sqlite_url: str, tmp_path: Path
) -> None:
    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "pos", "--estimator", "green")
    windows = nbhr_json("results", "--db", sqlite_url, "--format", "json")
    face = next(w["recording"] for w in windows if w["face_found"])
    out = tmp_path / "hr.png"
    done = nbhr("plot", face, "--db", sqlite_url, "--out", out)
    assert f"wrote {out}" in done.stdout
    assert nbhr_json("plot", face, "--db", sqlite_url, "--out", out, "--json") == {
        "out": str(out),
        "recording": face,
    }
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] == 1100  # 11 in at 100 dpi
    # Not a blank canvas: lines in several colours (black reference, blue POS, green GREEN).
    colours = {tuple(int(c) // 64 for c in px) for px in image.reshape(-1, 3)[::7]}
    assert len(colours) >= 6 and image.std() > 10

    empty = next(w["recording"] for w in windows if w["face_found"] is False)
    out2 = tmp_path / "empty.png"
    nbhr("plot", empty, "--db", sqlite_url, "--out", out2, "--estimator", "pos")
    assert cv2.imread(str(out2)) is not None

    missing = nbhr("plot", "nope.avi", "--db", sqlite_url, "--out", tmp_path / "x.png", check=False)
    assert missing.returncode == 2 and "no windows" in missing.stderr
    assert not (tmp_path / "x.png").exists()
    assert np.array_equal(cv2.imread(str(out)), image)  # the first file is left as it was
