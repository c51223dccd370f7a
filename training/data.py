"""Training windows for NBHRnet: face-crop windows with their reference PPG and HR, from an
NBHR-layout archive, a UBFC-rPPG folder, the project's database or a synthetic demo archive.

Frames are decoded, tracked and cropped with the workers' own code (worker.faces, worker.crops),
so a model never trains on crops made differently from the ones it will be run on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from db import queries
from db.engine import make_engine, session_scope
from model.reference import ReferenceSeries, ppg_target, reference_hr
from scheduler.discover import find_videos, load_manifest, subject_from_path
from scheduler.references import NBHR_PPG_RATE_HZ, load_references
from worker.crops import MODEL_FPS, WINDOW_FRAMES, face_crop, windows_of
from worker.process import face_detector
from worker.track import tracked_frames
from worker.video import VideoError, probe

log = logging.getLogger(__name__)

WINDOW_S = WINDOW_FRAMES / MODEL_FPS
CACHE_CHUNK = 64


@dataclass(frozen=True)
class Window:
    """One NBHRnet training example.

    subject: subject key, for subject-wise splits.
    recording: video path.
    t_start: window start, seconds from the video's first frame.
    frames: uint8 (60, 128, 128, 3), RGB face crops at 30 fps (worker.crops).
    ppg: float32 (60,), reference PPG at the frame times, Gaussian-smoothed (sigma 2 samples),
        min-max scaled to [0, 1].
    hr_bpm: mean reference HR over the window, beats per minute (the HR series, else the
        PPG's spectral peak).
    """

    subject: str
    recording: str
    t_start: float
    frames: np.ndarray
    ppg: np.ndarray
    hr_bpm: float


def _crops(video: Path, fps: float, n_frames: int) -> Iterator[np.ndarray | None]:
    """Per-frame face crops of a video in frame order (None where no face was tracked)."""
    for _, frame, box in tracked_frames(video, 0, n_frames, fps, face_detector(), part=True):
        yield None if box is None else face_crop(frame, box)


def video_windows(
    video: Path, subject: str, references: dict[str, ReferenceSeries], hop: int = WINDOW_FRAMES
) -> Iterator[Window]:
    """Windows of one video that have a face in every frame and a usable reference PPG.

    references: kind -> series ("ppg" required, "hr" used when present), times in seconds from
    the video's first frame. hop: step between windows in 30-fps frames (1..60).
    Raises VideoError when the video cannot be opened.
    """
    ppg = references.get("ppg")
    if ppg is None:
        return
    info = probe(video)
    crops = _crops(video, info.fps, info.n_frames)
    for k, frames in windows_of(crops, info.fps, info.n_frames, hop):
        if frames is None:
            continue
        t0 = k * hop / MODEL_FPS
        target = ppg_target(ppg, t0)
        hr = reference_hr(references, t0, t0 + WINDOW_S) if target is not None else None
        if hr is None:
            continue
        yield Window(subject, str(video), t0, frames, target, float(hr))


def _safe_windows(
    video: Path, subject: str, references: dict[str, ReferenceSeries], hop: int
) -> Iterator[Window]:
    # One unreadable file in a 1000-video archive must not end a training run.
    try:
        yield from video_windows(video, subject, references, hop)
    except VideoError as exc:
        log.warning("skipping %s: %s", video, exc)


def _file_references(
    video: Path, ppg_rate_hz: float = NBHR_PPG_RATE_HZ
) -> dict[str, ReferenceSeries]:
    series, _, problem = load_references(video, nbhr_rate_hz=ppg_rate_hz)
    if problem:
        log.warning("%s: %s", video, problem)
    return {s.kind: s for s in series}


def nbhr_windows(
    root: Path,
    manifest: Path | None = None,
    ppg_rate_hz: float = NBHR_PPG_RATE_HZ,
    hop: int = WINDOW_FRAMES,
    jobs: int = 1,
) -> Iterator[Window]:
    """Windows of an NBHR-layout archive: root/video/<id>.avi with root/PPG/<id>.csv.

    Subjects come from `manifest` (CSV recording,subject; default root/manifest.csv if present),
    else from the path (scheduler.discover.subject_from_path, i.e. the video's id).
    jobs: processes that decode and crop videos in parallel (windows come in the same order).
    """
    root = Path(root)
    manifest = manifest or root / "manifest.csv"
    mapping = load_manifest(manifest) if manifest.is_file() else {}
    tasks = []
    for video in find_videos(root / "video"):
        try:
            rel = video.resolve().relative_to(manifest.parent.resolve()).as_posix()
        except ValueError:
            rel = video.name
        subject = mapping.get(rel) or mapping.get(video.name) or subject_from_path(video, root)
        tasks.append((video, subject, ppg_rate_hz, hop))
    if jobs <= 1:
        for task in tasks:
            yield from _video_task(task)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        for windows in pool.imap(_video_task, tasks):
            yield from windows


def _video_task(task: tuple[Path, str, float, int]) -> list[Window]:
    video, subject, ppg_rate_hz, hop = task
    return list(_safe_windows(video, subject, _file_references(video, ppg_rate_hz), hop))


def ubfc_windows(root: Path, hop: int = WINDOW_FRAMES) -> Iterator[Window]:
    """Windows of a UBFC-rPPG folder: <subject>/vid.avi with <subject>/ground_truth.txt;
    the subject is the folder's name."""
    for video in find_videos(Path(root)):
        if video.name.lower() != "vid.avi" or not (video.parent / "ground_truth.txt").is_file():
            continue
        yield from _safe_windows(video, video.parent.name, _file_references(video), hop)


def db_windows(db_url: str, hop: int = WINDOW_FRAMES) -> Iterator[Window]:
    """Windows of every recording in the project's database that has a PPG reference and a
    file that can still be read (subjects as registered there)."""
    engine = make_engine(db_url)
    try:
        # Read everything first: no transaction stays open during hours of decoding.
        with session_scope(engine) as s:
            todo = [
                (Path(path), subject, queries.load_references(s, rec_id))
                for rec_id, path, subject in queries.recordings_with_reference(s)
            ]
    finally:
        engine.dispose()
    for video, subject, refs in todo:
        if "ppg" not in refs:
            continue
        if not video.is_file():
            log.warning("skipping %s: file not found", video)
            continue
        yield from _safe_windows(video, subject, refs, hop)


def synthetic_windows(
    out_dir: Path,
    subjects: int = 8,
    seconds: float = 30.0,
    seed: int = 0,
    hop: int = WINDOW_FRAMES,
    jobs: int = 1,
) -> Iterator[Window]:
    """Windows of a synthetic demo archive (nbhr.demo), written to out_dir on first use, with
    `jobs` processes rendering and cropping.

    The archive is decoded like a real one, so synthetic data takes the real crop path.
    Raises ValueError when out_dir holds a demo archive written with other arguments.
    """
    from nbhr.demo import write_demo_archive  # imports scikit-image: only when asked for

    out_dir = Path(out_dir)
    stamp = out_dir / "synthetic.json"
    args = {"subjects": subjects, "seconds": seconds, "seed": seed}
    if stamp.is_file():
        if json.loads(stamp.read_text()) != args:
            raise ValueError(
                f"{out_dir} holds a synthetic archive made with {stamp.read_text().strip()}, "
                f"not {json.dumps(args)}; use another directory"
            )
    else:
        write_demo_archive(out_dir, subjects=subjects, seconds=seconds, seed=seed, jobs=jobs)
        # Stamped only once complete, so an interrupted write is redone.
        stamp.write_text(json.dumps(args))
    return nbhr_windows(out_dir, hop=hop, jobs=jobs)


def subject_split(
    windows: Sequence[Window], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Window], list[Window]]:
    """(train, validation) with every subject's windows on one side only.

    About val_fraction of the subjects (at least one, never all) go to validation, chosen by a
    seeded shuffle; both lists keep the input order. Raises ValueError for fewer than two
    subjects or a fraction outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    subjects = sorted({w.subject for w in windows})
    if len(subjects) < 2:
        raise ValueError(
            f"a subject-wise split needs at least 2 subjects, the windows have {len(subjects)}"
            + (f" ({subjects[0]})" if subjects else "")
        )
    n_val = min(len(subjects) - 1, max(1, round(val_fraction * len(subjects))))
    order = np.random.default_rng(seed).permutation(len(subjects))
    val = {subjects[i] for i in order[:n_val]}
    return [w for w in windows if w.subject not in val], [w for w in windows if w.subject in val]


class WindowCache(Sequence[Window]):
    """Windows on disk, read back lazily through memory maps.

    Layout of the directory: frames_NNNNN.npy, uint8 (<=64, 60, 128, 128, 3) per chunk of
    CACHE_CHUNK windows; ppg.npy float32 (N, 60); hr.npy float32 (N,); index.json with
    subject, recording and t_start per row. index.json is written last, so a directory
    without it is an unfinished write.
    """

    def __init__(self, path: Path, rows: list[dict], chunk: int) -> None:
        self.path = path
        self._rows = rows
        self._chunk = chunk
        # Targets are small (240 bytes a window) and read whole; only frames are mapped.
        self._ppg = np.load(path / "ppg.npy")
        self._hr = np.load(path / "hr.npy")

    @property
    def subjects(self) -> list[str]:
        """Subject of each row, in row order (len(cache) items)."""
        return [r["subject"] for r in self._rows]

    @classmethod
    def write(cls, path: Path, windows: Iterable[Window]) -> WindowCache:
        """Write windows to `path` (replacing a cache there), holding one chunk of frames in
        memory at a time, and open the result."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "index.json").unlink(missing_ok=True)
        for old in path.glob("frames_*.npy"):
            old.unlink()
        rows: list[dict] = []
        ppg: list[np.ndarray] = []
        hr: list[float] = []
        chunk: list[np.ndarray] = []
        n_chunks = 0

        def flush() -> None:
            nonlocal n_chunks
            np.save(path / f"frames_{n_chunks:05d}.npy", np.stack(chunk))
            chunk.clear()
            n_chunks += 1

        for w in windows:
            rows.append({"subject": w.subject, "recording": w.recording, "t_start": w.t_start})
            ppg.append(np.asarray(w.ppg, dtype=np.float32))
            hr.append(w.hr_bpm)
            chunk.append(np.asarray(w.frames, dtype=np.uint8))
            if len(chunk) == CACHE_CHUNK:
                flush()
        if chunk:
            flush()
        np.save(path / "ppg.npy", np.array(ppg, np.float32).reshape(-1, WINDOW_FRAMES))
        np.save(path / "hr.npy", np.array(hr, np.float32))
        tmp = path / "index.json.tmp"
        tmp.write_text(json.dumps({"chunk": CACHE_CHUNK, "rows": rows}))
        os.replace(tmp, path / "index.json")
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> WindowCache:
        """Open a cache written by `write`; FileNotFoundError when there is none (or it is
        unfinished)."""
        path = Path(path)
        index = path / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"no finished window cache in {path} (no index.json)")
        meta = json.loads(index.read_text())
        return cls(path, meta["rows"], meta["chunk"])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Window:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for a cache of {len(self)}")
        i %= len(self)
        # Mapped per access, not kept open: a cache of thousands of chunks must not run the
        # process out of file descriptors.
        frames = np.load(self.path / f"frames_{i // self._chunk:05d}.npy", mmap_mode="r")
        row = self._rows[i]
        return Window(
            subject=row["subject"],
            recording=row["recording"],
            t_start=row["t_start"],
            frames=frames[i % self._chunk],
            ppg=self._ppg[i],
            hr_bpm=float(self._hr[i]),
        )
