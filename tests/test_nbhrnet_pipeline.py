"""`nbhr run --estimator nbhrnet --model FILE`: the workers run an exported NBHRnet on the same
decoded frames and face boxes as the classical estimators (plumbing, with untrained models;
tests/test_bundled_model.py runs the trained one that ships)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tests.helpers import nbhr, nbhr_json
from training.export import export_onnx
from training.nbhrnet import NBHRNet


def _export(path: Path, hr_bias: float) -> Path:
    """An untrained NBHRnet exported to ONNX; the biases make its outputs non-zero, and the HR
    bias tells two versions apart."""
    torch.manual_seed(0)
    model = NBHRNet()
    with torch.no_grad():
        model.head.hr.out.bias.fill_(hr_bias)
        model.head.ppg.conv.bias.fill_(2.0)  # keeps the PPG above ReLU's zero, so it varies
    export_onnx(model.eval(), path)
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("model") / "nbhrnet.onnx", 140.0)


def test_run_with_nbhrnet(demo_archive: Path, onnx_model: Path, sqlite_url: str) -> None:
    run = ("run", demo_archive, "--db", sqlite_url, "--estimator", "pos", "--estimator", "nbhrnet")
    nbhr(*run, "--model", onnx_model)
    rows = nbhr_json("results", "--db", sqlite_url, "--format", "json")
    net = [r for r in rows if r["estimator"] == "nbhrnet"]
    spans = [r for r in rows if r["estimator"] == "nbhrnet_ppg"]
    key = hashlib.sha256(onnx_model.read_bytes()).hexdigest()[:16]
    assert {r["model"] for r in net + spans} == {key}
    assert {r["estimator"] for r in rows} == {"pos", "nbhrnet", "nbhrnet_ppg"}
    # The second estimate spans the classical 10-s windows, every 2 s: 4 per 16-s recording,
    # on the same grid as POS.
    pos = [r for r in rows if r["estimator"] == "pos"]
    assert sorted((r["recording"], r["t_start"], r["t_end"]) for r in spans) == sorted(
        (r["recording"], r["t_start"], r["t_end"]) for r in pos
    )
    assert len(spans) == 3 * 4
    assert sum(r["face_found"] for r in spans) == 2 * 4
    assert all(r["hr_bpm"] is not None for r in spans if r["face_found"])
    # Three 16-s recordings, one 2-s window every 2 s; the face-less one has no HR.
    assert len(net) == 3 * 8
    with_face = [r for r in net if r["face_found"]]
    assert len(with_face) == 2 * 8
    assert all(r["hr_bpm"] is not None and r["ref_hr_bpm"] is not None for r in with_face)
    # The demo has a reference PPG: every NBHRnet window with a face is scored against it.
    assert all(r["ppg_r"] is not None and -1 <= r["ppg_r"] <= 1 for r in with_face)
    assert all(r["ppg_r"] is None for r in rows if r["estimator"] == "pos")
    ev = nbhr_json("evaluate", "--db", sqlite_url, "--estimator", "nbhrnet", "--json")
    assert ev["ppg_r_n"] == 2 * 8 and -1 <= ev["ppg_r_mean"] <= 1
    assert all(r["t_end"] - r["t_start"] == pytest.approx(2.0) for r in net)
    again = nbhr(*run, "--model", onnx_model)
    assert "nothing to do" in again.stdout


def test_a_model_needs_nbhrnet(onnx_model: Path, demo_archive: Path, sqlite_url: str) -> None:
    out = nbhr("run", demo_archive, "--db", sqlite_url, "--model", onnx_model, check=False)
    assert out.returncode == 2 and "only used by --estimator nbhrnet" in out.stderr


def test_registry_and_two_versions_side_by_side(
    demo_archive: Path, onnx_model: Path, sqlite_url: str, tmp_path: Path
) -> None:
    other = _export(tmp_path / "v2.onnx", 120.0)
    nbhr(
        "models",
        "register",
        onnx_model,
        "--name",
        "nbhrnet",
        "--version",
        "1",
        "--trained-on",
        "nothing (untrained test model)",
        "--db",
        sqlite_url,
    )
    entry = nbhr_json(
        "models", "register", other, "--name", "nbhrnet", "--version", "2", "--db", sqlite_url,
        "--json",
    )  # fmt: skip
    assert (entry["name"], entry["version"]) == ("nbhrnet", "2")
    assert entry["key"] == entry["sha256"][:16] and entry["path"] == str(other.resolve())
    again = nbhr(
        "models",
        "register",
        other,
        "--name",
        "x",
        "--version",
        "9",
        "--db",
        sqlite_url,
        check=False,
    )
    assert again.returncode == 1 and "already registered as nbhrnet:2" in again.stderr
    listed = nbhr_json("models", "list", "--db", sqlite_url, "--json")
    assert [(m["name"], m["version"]) for m in listed] == [("nbhrnet", "1"), ("nbhrnet", "2")]
    assert listed[0]["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert listed[0]["input_spec"]["inputs"]["frames"] == ["batch", 60, 3, 128, 128]

    for version in ("1", "2"):
        nbhr(
            "run",
            demo_archive,
            "--db",
            sqlite_url,
            "--estimator",
            "nbhrnet",
            "--model",
            f"nbhrnet:{version}",
        )
    evals = nbhr_json(
        "evaluate",
        "--db",
        sqlite_url,
        "--estimator",
        "nbhrnet",
        "--model",
        "nbhrnet:1",
        "--model",
        "nbhrnet:2",
        "--level",
        "window",
        "--json",
    )
    assert sorted(e["model"] for e in evals) == ["nbhrnet:1", "nbhrnet:2"]
    # 8 windows with a face in each of the two face recordings; the face-less one lowers
    # coverage only.
    assert all(e["overall"]["n"] == 2 * 8 for e in evals)
    assert all(e["overall"]["coverage"] == pytest.approx(16 / 24) for e in evals)
    bias = {e["model"]: e["overall"]["ba_bias"] for e in evals}
    assert bias["nbhrnet:1"] != bias["nbhrnet:2"]
    # Without --estimator, a model's evaluation covers both of its estimates.
    both = nbhr_json("evaluate", "--db", sqlite_url, "--model", "nbhrnet:2", "--json")
    assert sorted((e["model"], e["estimator"]) for e in both) == [
        ("nbhrnet:2", "nbhrnet"),
        ("nbhrnet:2", "nbhrnet_ppg"),
    ]
    missing = nbhr(
        "run",
        demo_archive,
        "--db",
        sqlite_url,
        "--estimator",
        "nbhrnet",
        "--model",
        "nbhrnet:7",
        check=False,
    )
    assert missing.returncode == 2 and "neither a file nor a registered" in missing.stderr
