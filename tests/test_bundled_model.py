"""The NBHRnet that ships with nbhr (model/data/nbhrnet.onnx, model/MODEL_CARD.md): what the card
says of the file holds, `--estimator nbhrnet` runs it without --model, and it reads heart rate
from video it was not trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from model.nbhrnet import BUNDLED_CARD, BUNDLED_MODEL, NBHRNetRunner
from tests.helpers import nbhr, nbhr_json

# The paper's NBHR figure, which the card's target is; the held-out synthetic video here
# measured about 1 bpm.
PAPER_MAE_BPM = 3.97


def test_the_card_describes_the_file() -> None:
    card = json.loads(BUNDLED_CARD.read_text())
    sha = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()
    assert card["sha256"] == sha
    assert BUNDLED_MODEL.stat().st_size < 10 * 2**20
    assert sha in (BUNDLED_MODEL.parents[1] / "MODEL_CARD.md").read_text()
    spec = NBHRNetRunner(BUNDLED_MODEL).describe()
    assert spec["inputs"]["frames"] == ["batch", 60, 3, 128, 128]
    assert card["metrics"]["heldout_synthetic_hr_mae_bpm"] <= PAPER_MAE_BPM


def test_nbhrnet_runs_the_bundled_model_by_default(demo_archive: Path, sqlite_url: str) -> None:
    """The session's demo archive (seed 7) shares no infant with the training archive (seed 0):
    its faces, pulses and motion are new to the model."""
    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "nbhrnet")
    key = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()[:16]
    rows = nbhr_json("results", "--db", sqlite_url, "--estimator", "nbhrnet", "--format", "json")
    assert rows and {r["model"] for r in rows} == {"nbhrnet:1"}  # the key, by its registered name

    listed = nbhr_json("models", "list", "--db", sqlite_url, "--json")
    assert [(m["name"], m["version"], m["key"]) for m in listed] == [("nbhrnet", "1", key)]
    assert "synthetic" in listed[0]["trained_on"]
    assert listed[0]["metrics"]["val_hr_mae_bpm"] < PAPER_MAE_BPM

    ev = nbhr_json(
        "evaluate",
        *("--db", sqlite_url, "--estimator", "nbhrnet", "--model", "nbhrnet:1"),
        *("--level", "window", "--json"),
    )
    print(ev["overall"], ev["ppg_r_mean"])
    assert ev["overall"]["n"] == 16  # 2 recordings x 8 two-second windows with a face
    assert ev["overall"]["mae"] < PAPER_MAE_BPM
    assert ev["ppg_r_mean"] > 0.7
    # Using it again registers nothing twice.
    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "nbhrnet")
    assert len(nbhr_json("models", "list", "--db", sqlite_url, "--json")) == 1
