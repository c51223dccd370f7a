"""`nbhr run --estimator nbhrnet --model FILE`: the workers run an exported NBHRnet on the same
decoded frames and face boxes as the classical estimators (plumbing; no trained model ships)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tests.helpers import nbhr, nbhr_json
from training.export import export_onnx
from training.nbhrnet import NBHRNet


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained NBHRnet exported to ONNX; its HR bias is set so outputs are not all 0."""
    torch.manual_seed(0)
    model = NBHRNet()
    with torch.no_grad():
        model.head.hr.out.bias.fill_(140.0)
    path = tmp_path_factory.mktemp("model") / "nbhrnet.onnx"
    export_onnx(model.eval(), path)
    return path


def test_run_with_nbhrnet(demo_archive: Path, onnx_model: Path, sqlite_url: str) -> None:
    nbhr(
        "run",
        demo_archive,
        "--db",
        sqlite_url,
        "--estimator",
        "pos",
        "--estimator",
        "nbhrnet",
        "--model",
        onnx_model,
    )
    rows = nbhr_json("results", "--db", sqlite_url, "--format", "json")
    net = [r for r in rows if r["estimator"] == "nbhrnet"]
    key = hashlib.sha256(onnx_model.read_bytes()).hexdigest()[:16]
    assert {r["model"] for r in net} == {key}
    assert {r["estimator"] for r in rows} == {"pos", "nbhrnet"}
    # Three 16-s recordings, one 2-s window every 2 s; the face-less one has no HR.
    assert len(net) == 3 * 8
    with_face = [r for r in net if r["face_found"]]
    assert len(with_face) == 2 * 8
    assert all(r["hr_bpm"] is not None and r["ref_hr_bpm"] is not None for r in with_face)
    assert all(r["t_end"] - r["t_start"] == pytest.approx(2.0) for r in net)
    again = nbhr(
        "run",
        demo_archive,
        "--db",
        sqlite_url,
        "--estimator",
        "pos",
        "--estimator",
        "nbhrnet",
        "--model",
        onnx_model,
    )
    assert "nothing to do" in again.stdout


def test_nbhrnet_needs_a_model_and_a_model_needs_nbhrnet(
    demo_archive: Path, onnx_model: Path, sqlite_url: str
) -> None:
    out = nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "nbhrnet", check=False)
    assert out.returncode == 2 and "needs --model" in out.stderr
    out = nbhr("run", demo_archive, "--db", sqlite_url, "--model", onnx_model, check=False)
    assert out.returncode == 2 and "only used by --estimator nbhrnet" in out.stderr
