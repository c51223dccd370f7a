"""Walk an archive, identify each video by content, name its subject and register it in SQL."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import queries
from db.models import Recording, RecordingState, Reference, Subject
from scheduler.references import ReferenceTable, load_references
from worker.video import VIDEO_EXTENSIONS, VideoError, probe, unreadable_reason

FINGERPRINT_BLOCK = 1 << 20
# Folder names that hold videos in common layouts but say nothing about the subject.
LAYOUT_FOLDERS = {"video", "videos", "vid", "raw", "rgb"}


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file and the problem."""


def find_videos(root: Path) -> list[Path]:
    """Every file under root with a video extension (case-insensitive), sorted.

    Hidden folders are skipped; symbolic links to files are listed (a broken one ends as a
    failed recording with its reason), links to folders are not followed.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
        # A folder named like a video ("x.avi/") is reported, not silently skipped.
        found += [Path(dirpath) / d for d in dirnames if d.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def fingerprint(path: Path) -> str:
    """Content identity: size plus SHA-256 of the first, middle and last MiB.

    The modification time is left out on purpose: copying an archive to another disk changes
    it, and a copied recording must not be processed again.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        for offset in sorted(
            {0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}
        ):
            fh.seek(offset)
            h.update(fh.read(FINGERPRINT_BLOCK))
    return h.hexdigest()[:40]


def unreadable_fingerprint(path: Path) -> str:
    """Stable key for a path that cannot be read, so a rerun finds the same row."""
    return "unreadable:" + hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:29]


def load_manifest(path: Path) -> dict[str, str]:
    """recording -> subject from a CSV with columns recording,subject.

    Keys are the recording path relative to the manifest's folder and the bare file name.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not {"recording", "subject"} <= cols:
                raise ManifestError(
                    f"{path}: needs columns recording,subject; found {','.join(sorted(cols))}"
                )
            mapping = {}
            for line, row in enumerate(reader, start=2):
                rec, subj = (row["recording"] or "").strip(), (row["subject"] or "").strip()
                if not rec or not subj:
                    raise ManifestError(f"{path} line {line}: empty recording or subject")
                mapping[Path(rec).as_posix()] = subj
                mapping.setdefault(Path(rec).name, subj)
            return mapping
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None


def subject_from_path(video: Path, root: Path) -> str:
    """Subject key when no manifest names one: the folder holding the video, unless it is a
    layout folder (NBHR's video/) or the root itself, then the file's stem."""
    parent = video.parent
    if parent.resolve() == root.resolve() or parent.name.lower() in LAYOUT_FOLDERS:
        return video.stem
    return parent.relative_to(root).as_posix()


@dataclass
class Registration:
    """What discovery did: recording ids by outcome, for the planner and the user."""

    new: list[int] = field(default_factory=list)
    known: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    reference_problems: dict[int, str] = field(default_factory=dict)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (skipped, same content)

    @property
    def all_ids(self) -> list[int]:
        return self.new + self.known + self.failed


def register_archive(
    session: Session,
    root: Path,
    manifest: dict[str, str] | None = None,
    table: ReferenceTable | None = None,
    nbhr_rate_hz: float = 60.0,
    progress: Callable[[Path], None] | None = None,
) -> Registration:
    """Upsert subjects, recordings and references for every video under root.

    Known recordings, subjects and which recordings have references are read in three queries
    up front, and new rows are written in one flush, so that registering thousands of files
    costs file reads, not database round trips."""
    root = root.resolve()
    result = Registration()
    by_fingerprint = {r.fingerprint: r for r in session.scalars(select(Recording))}
    subjects = {s.key: s for s in session.scalars(select(Subject))}
    with_references = set(session.scalars(select(Reference.recording_id).distinct()))
    new: list[tuple[Recording, Path]] = []
    for video in find_videos(root):
        if progress is not None:
            progress(video)
        rel = video.relative_to(root).as_posix()
        key = manifest.get(rel, manifest.get(video.name)) if manifest else None
        table_entry = table.lookup(video) if table is not None else None
        if key is None and table_entry is not None and table_entry[1]:
            key = table_entry[1]
        key = key or subject_from_path(video, root)
        try:
            fp = fingerprint(video)
            size = video.stat().st_size
            read_error = None
        except OSError as exc:
            fp, size = unreadable_fingerprint(video), 0
            read_error = unreadable_reason(video, exc)
        rec = by_fingerprint.get(fp)
        if rec is not None:
            if rec.path != str(video):
                if Path(rec.path).exists():
                    result.duplicates.append((str(video), rec.path))
                    continue
                rec.path = str(video)  # the same content moved: follow it
            if rec.id is None:
                continue  # registered earlier in this pass under a path that no longer exists
            if rec.id not in with_references:
                _pair(session, rec, video, table, nbhr_rate_hz, result, had_windows=True)
            (result.failed if rec.status == RecordingState.failed else result.known).append(rec.id)
            continue
        subject = subjects.get(key)
        if subject is None:
            subject = subjects[key] = Subject(key=key, meta={})
            session.add(subject)
        rec = Recording(
            subject=subject,
            path=str(video),
            archive_root=str(root),
            fingerprint=fp,
            size_bytes=size,
            status=RecordingState.new,
        )
        try:
            if read_error is not None:
                raise VideoError(read_error)
            info = probe(video)
            rec.fps, rec.n_frames = info.fps, info.n_frames
            rec.width, rec.height = info.width, info.height
            rec.duration_s = info.duration_s
        except VideoError as exc:
            rec.status = RecordingState.failed
            rec.error = str(exc)
        session.add(rec)
        by_fingerprint[fp] = rec
        new.append((rec, video))
    session.flush()  # ids for the new recordings
    for rec, video in new:
        _pair(session, rec, video, table, nbhr_rate_hz, result, had_windows=False)
        (result.failed if rec.status == RecordingState.failed else result.new).append(rec.id)
    session.flush()
    return result


def _pair(
    session: Session,
    rec: Recording,
    video: Path,
    table: ReferenceTable | None,
    nbhr_rate_hz: float,
    result: Registration,
    had_windows: bool,
) -> None:
    """Attach references to a recording that has none yet (new, or a reference that
    appeared since), and bring already-written windows up to date with them."""
    series, source, problem = load_references(video, table, nbhr_rate_hz)
    rec.reference_source = source
    rec.reference_error = problem
    if problem:
        result.reference_problems[rec.id] = problem
    if series:
        queries.store_references(session, rec.id, series)
        if had_windows:
            queries.refill_reference_hr(session, rec.id)
