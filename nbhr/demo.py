"""Write a small synthetic archive laid out like the NBHR database, with exact ground truth.

Faces come from the public-domain NASA portrait shipped with scikit-image (``astronaut``); skin
is modulated by a PPG wave built from real pulse shapes (``model.synthetic``), then moved,
relit, made noisy and MJPG-compressed like a NICU camera recording.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.data import astronaut

from model.synthetic import hr_trajectory, ppg_wave
from worker.avi import RAW_AVI_LIMIT, RawAviWriter

PPG_RATE_HZ = 60.0
CODECS = ("mjpg", "raw")
"""Sample rate of the PPG/HR/SpO2 files, as in the NBHR database."""

# Face box (left, top, right, bottom) that dlib's HOG detector finds in
# skimage.data.astronaut() (mean of upsample 0 and 1); scaling it sets the face size in frame.
_ASTRONAUT_FACE = (177.0, 80.0, 266.0, 168.0)

# Relative pulsatile amplitude of blue, green and red skin reflectance (the blood-volume-pulse
# signature of de Haan & van Leest 2014, Physiol. Meas. 35:1913), in OpenCV's BGR order.
_PULSE_SIGNATURE_BGR = np.array([0.53, 0.77, 0.33]) / 0.77

# Sensor-noise frames drawn once per recording and reused at random offsets: drawing fresh
# Gaussian noise for every frame would cost more CPU than encoding the frame.
_NOISE_BANK = 4


@dataclass(frozen=True)
class DemoRecording:
    """One recording of the demo archive.

    Attributes:
        recording: video path relative to the archive root, ``video/<id>.avi``.
        ppg: reference file relative to the root, ``PPG/<id>.csv``.
        subject: subject key, ``infant_NNN``.
        has_face: False for the recording whose camera shows only the blanket.
        mean_hr_bpm: mean of the reference HR column, beats per minute.
    """

    recording: str
    ppg: str
    subject: str
    has_face: bool
    mean_hr_bpm: float


@dataclass(frozen=True)
class DemoSummary:
    """What ``write_demo_archive`` wrote.

    Attributes:
        root: archive root.
        manifest: ``root/manifest.csv`` (header ``recording,subject``).
        recordings: the recordings in manifest order (by id, i.e. by start time).
    """

    root: Path
    manifest: Path
    recordings: tuple[DemoRecording, ...]

    @property
    def subjects(self) -> tuple[str, ...]:
        """Distinct subject keys, sorted."""
        return tuple(sorted({r.subject for r in self.recordings}))


@dataclass(frozen=True)
class _Scene:
    """A still image and where its pulse shows.

    Attributes:
        image: float32 (Hs, Ws, 3), BGR intensities 0-255.
        pulse: float32 (Hs, Ws, 3), intensity drop per unit of pulse wave (0 off the skin);
            None where nothing pulses.
        anchor: (x, y) source pixel placed at ``position`` in the frame.
        scale: frame pixels per source pixel.
        position: (x, y) frame pixel of ``anchor`` before motion.
    """

    image: np.ndarray
    pulse: np.ndarray | None
    anchor: tuple[float, float]
    scale: float
    position: tuple[float, float]


@dataclass(frozen=True)
class _Look:
    """Per-subject appearance: mirror, colour gains (BGR), face width / frame width, pulse."""

    flip: bool
    gains_bgr: np.ndarray
    face_fraction: float
    green_pulse: float


def write_demo_archive(
    root: Path,
    subjects: int = 3,
    seconds: float = 30.0,
    seed: int = 0,
    recordings_per_subject: int = 2,
    fps: float = 30.0,
    size: tuple[int, int] = (640, 480),
    jobs: int = 1,
    codec: str = "mjpg",
) -> DemoSummary:
    """Write a synthetic NICU-like archive under ``root``.

    Layout: ``video/<id>.avi`` (MJPG or uncompressed, ``fps``, ``size``), ``PPG/<id>.csv`` (no
    header; columns PPG in template units, HR in bpm, SpO2 in %; one row per 1/60 s), and
    ``manifest.csv``
    (header ``recording,subject``; video path relative to ``root``). Ids are start times
    ``YYYYMMDD_HHMMSS``. ``subjects * recordings_per_subject`` recordings show a face; one
    more, filed under ``infant_001``, shows only the blanket (the infant out of view) and still
    has a reference PPG. The HR column is the exact instantaneous rate that drove the pulse in
    the video, and the video pulse is the PPG column itself (no transit delay).

    Args:
        root: archive directory; created if missing, existing files with the same ids replaced.
        subjects: number of infants (each gets its own face variant).
        seconds: duration of each recording in s.
        seed: everything written is a function of the arguments and this seed.
        recordings_per_subject: face recordings per infant.
        fps: video frame rate in Hz.
        size: (width, height) of the video in pixels.
        jobs: processes that render recordings in parallel (the files are the same for any).
        codec: "mjpg" (motion JPEG, quality 85) or "raw" (uncompressed 24-bit BGR, bottom-up
            rows: what capture software writes and archives like NBHR hold, 0.9 MB a
            640x480 frame; worker.avi.RawAviWriter, AVI 1.0, so at most 4 GiB a recording).

    Returns:
        DemoSummary listing recordings, subjects and the mean reference HR of each recording.
    """
    if subjects < 1 or recordings_per_subject < 1 or seconds <= 0 or fps <= 0:
        raise ValueError("subjects, recordings_per_subject, seconds and fps must be positive")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if codec == "raw" and raw_avi_bytes(seconds, fps, size) > RAW_AVI_LIMIT:
        longest = RAW_AVI_LIMIT / raw_avi_bytes(1.0, fps, size)
        raise ValueError(
            f"uncompressed {size[0]}x{size[1]} recordings at {fps:g} fps fit in one AVI 1.0 file "
            f"up to {longest:.0f} s; ask for fewer --seconds"
        )
    root = Path(root)
    (root / "video").mkdir(parents=True, exist_ok=True)
    (root / "PPG").mkdir(parents=True, exist_ok=True)

    layout_ss, subject_ss, recording_ss = np.random.SeedSequence(seed).spawn(3)
    layout_rng = np.random.default_rng(layout_ss)
    looks = [_draw_look(np.random.default_rng(s)) for s in subject_ss.spawn(subjects)]
    # Infant index per recording (None = the blanket-only recording), in start-time order.
    plan: list[int | None] = [i for i in range(subjects) for _ in range(recordings_per_subject)]
    plan.append(None)
    plan = [plan[i] for i in layout_rng.permutation(len(plan))]
    starts = _start_times(layout_rng, len(plan), seconds)

    tasks = [
        (root, start.strftime("%Y%m%d_%H%M%S"), ss, seconds, fps, size, looks, infant, codec)
        for infant, start, ss in zip(plan, starts, recording_ss.spawn(len(plan)), strict=True)
    ]
    # Each recording draws from its own seed sequence, so the files do not depend on `jobs`.
    if jobs > 1:
        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx)
        try:
            mean_hrs = list(pool.map(_write_recording_task, tasks))
        except BaseException:
            # Ctrl-C, SIGTERM (the CLI's stop_on_sigterm) or a failed recording: stop the
            # others now rather than wait for them to finish writing (minutes for long ones).
            # Imported here: scheduler.local loads SQLAlchemy, which no demo process needs.
            from scheduler.local import end_now

            end_now(pool)
            raise
        pool.shutdown()
    else:
        mean_hrs = [_write_recording_task(t) for t in tasks]
    recordings = [
        DemoRecording(
            recording=f"video/{rec_id}.avi",
            ppg=f"PPG/{rec_id}.csv",
            subject=f"infant_{1 if infant is None else infant + 1:03d}",
            has_face=infant is not None,
            mean_hr_bpm=mean_hr,
        )
        for (_, rec_id, _, _, _, _, _, infant, _), mean_hr in zip(tasks, mean_hrs, strict=True)
    ]

    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["recording", "subject"])
        writer.writerows([r.recording, r.subject] for r in recordings)
    return DemoSummary(root=root, manifest=manifest, recordings=tuple(recordings))


def _start_times(rng: np.random.Generator, n: int, seconds: float) -> list[datetime]:
    """``n`` increasing start times, a recording length plus 2-90 min apart, from June 2019."""
    start = datetime(2019, 6, 3, 8, 0, 0) + timedelta(minutes=int(rng.integers(0, 20 * 24 * 60)))
    times = []
    for _ in range(n):
        times.append(start)
        start += timedelta(seconds=int(np.ceil(seconds)) + int(rng.integers(120, 90 * 60)))
    return times


def _draw_look(rng: np.random.Generator) -> _Look:
    """Appearance of one infant: mirrored or not, skin tint, face size, pulse strength."""
    return _Look(
        flip=bool(rng.integers(0, 2)),
        # Newborn skin is redder than the adult in the photograph.
        gains_bgr=np.array(
            [rng.uniform(0.88, 1.0), rng.uniform(0.9, 1.0), rng.uniform(1.0, 1.08)], np.float32
        ),
        face_fraction=rng.uniform(0.25, 0.36),
        # Peak-to-peak relative change of green skin intensity, 0.8-1.3 % as in rPPG studies.
        green_pulse=rng.uniform(0.008, 0.013),
    )


def _write_recording_task(task: tuple) -> float:
    root, rec_id, ss, seconds, fps, size, looks, infant, codec = task
    rng = np.random.default_rng(ss)
    return _write_recording(root, rec_id, rng, seconds, fps, size, looks, infant, codec)


def _write_recording(
    root: Path,
    rec_id: str,
    rng: np.random.Generator,
    seconds: float,
    fps: float,
    size: tuple[int, int],
    looks: list[_Look],
    infant: int | None,
    codec: str = "mjpg",
) -> float:
    """Write ``PPG/<rec_id>.csv`` and ``video/<rec_id>.avi``; returns the mean HR in bpm."""
    t_ppg = np.arange(int(round(seconds * PPG_RATE_HZ))) / PPG_RATE_HZ
    hr = hr_trajectory(seconds, rng)(t_ppg)
    resp_rate = rng.uniform(30.0, 60.0)
    wave = ppg_wave(t_ppg, hr, rng, resp_rate_bpm=resp_rate)
    spo2 = _spo2(t_ppg, rng)
    np.savetxt(
        root / "PPG" / f"{rec_id}.csv",
        np.column_stack([wave, hr, spo2]),
        fmt=["%.5f", "%.3f", "%.1f"],
        delimiter=",",
    )

    t_video = np.arange(int(round(seconds * fps))) / fps
    pulse = np.interp(t_video, t_ppg, wave - wave.mean())
    if infant is None:
        scene = _blanket_scene(rng, size)
        sway_px = 1.0
    else:
        scene = _face_scene(rng, looks[infant], size)
        sway_px = 4.0
    affines = _motion(rng, t_video, scene, size, sway_px, resp_rate)
    gains = _illumination(rng, t_video)
    path = root / "video" / f"{rec_id}.avi"
    _render(path, scene, pulse, affines, gains, rng, fps, size, codec)
    return float(hr.mean())


def _spo2(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Oxygen saturation in % at times ``t`` (s): 96-98.5 % wandering by about 0.5 %."""
    knots_t = np.arange(0.0, t[-1] + 2.0, 1.0)
    walk = np.zeros(len(knots_t))
    for k in range(1, len(walk)):
        walk[k] = 0.93 * walk[k - 1] + 0.18 * rng.standard_normal()
    return np.clip(rng.uniform(96.0, 98.5) + np.interp(t, knots_t, walk), 94.0, 100.0)


def _face_scene(rng: np.random.Generator, look: _Look, size: tuple[int, int]) -> _Scene:
    """The astronaut's face in this infant's look, placed at a random spot of the frame."""
    rgb = astronaut()
    mask = _skin_mask(rgb)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    image *= look.gains_bgr * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    left, top, right, bottom = _ASTRONAUT_FACE
    anchor_x, anchor_y = 0.5 * (left + right), 0.5 * (top + bottom)
    if look.flip:
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        anchor_x = rgb.shape[1] - 1 - anchor_x
    amplitude = (look.green_pulse * _PULSE_SIGNATURE_BGR).astype(np.float32)
    pulse = image * mask[..., None] * amplitude

    width, height = size
    scale = look.face_fraction * rng.uniform(0.95, 1.05) * width / (right - left)
    # Keep the view, plus room for motion, inside the photograph where possible.
    margin = 0.03 * width
    src_h, src_w = rgb.shape[:2]
    x_lo, x_hi = width + margin - (src_w - anchor_x) * scale, anchor_x * scale - margin
    y_lo, y_hi = height + margin - (src_h - anchor_y) * scale, anchor_y * scale - margin
    x_lo, x_hi = max(x_lo, 0.35 * width), min(x_hi, 0.65 * width)
    y_lo, y_hi = max(y_lo, 0.3 * height), min(y_hi, 0.6 * height)
    position = (
        rng.uniform(x_lo, x_hi) if x_lo < x_hi else 0.5 * width,
        rng.uniform(y_lo, y_hi) if y_lo < y_hi else y_hi,
    )
    return _Scene(image, pulse, (anchor_x, anchor_y), scale, position)


def _skin_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft skin mask of the astronaut photograph: float32 (H, W) in [0, 1].

    Skin-coloured pixels (YCrCb box) inside an ellipse around the face; the ellipse keeps out
    hair, suit and background of similar colour, the blur avoids a visible pulsing edge.
    """
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    skin = cv2.inRange(ycrcb, (60, 135, 85), (255, 175, 128))
    left, top, right, bottom = _ASTRONAUT_FACE
    ellipse = np.zeros_like(skin)
    center = (round(0.5 * (left + right)), round(0.5 * (top + bottom) - 0.05 * (bottom - top)))
    axes = (round(0.6 * (right - left)), round(0.72 * (bottom - top)))
    cv2.ellipse(ellipse, center, axes, 0.0, 0.0, 360.0, 255, -1)
    skin = cv2.morphologyEx(skin & ellipse, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return cv2.GaussianBlur(skin.astype(np.float32) / 255.0, (0, 0), 2.0)


def _blanket_scene(rng: np.random.Generator, size: tuple[int, int]) -> _Scene:
    """A folded plaid blanket filling the frame: an empty crib, no skin, no face."""
    width, height = size
    pad = int(0.1 * width)
    h, w = height + 2 * pad, width + 2 * pad

    def smooth_noise(sigma: float) -> np.ndarray:
        field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        return field / (field.std() + 1e-6)

    folds = smooth_noise(0.06 * width)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx += 6.0 * smooth_noise(0.08 * width)
    yy += 6.0 * smooth_noise(0.08 * width)
    period = rng.uniform(0.05, 0.1) * width
    stripes_x = (np.mod(xx, period) < 0.3 * period).astype(np.float32)
    stripes_y = (np.mod(yy, period) < 0.3 * period).astype(np.float32)
    base = np.array(
        [(235, 215, 190), (200, 205, 240), (205, 235, 240), (210, 230, 205)][rng.integers(0, 4)],
        np.float32,
    )
    tint = rng.uniform(0.75, 0.9, 3).astype(np.float32)
    plaid = 1.0 - 0.5 * (stripes_x + stripes_y)[..., None] * (1.0 - tint)
    weave = 1.0 + 0.03 * cv2.GaussianBlur(
        rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.7
    )
    shade = (1.0 + 0.12 * folds) * weave
    image = np.clip(base * plaid * shade[..., None] * rng.uniform(0.8, 1.0), 0, 255)
    image = image.astype(np.float32)
    return _Scene(image, None, (w / 2, h / 2), 1.0, (width / 2, height / 2))


def _motion(
    rng: np.random.Generator,
    t: np.ndarray,
    scene: _Scene,
    size: tuple[int, int],
    sway_px: float,
    resp_rate_bpm: float,
) -> np.ndarray:
    """Per-frame source-to-frame affine maps, float64 (T, 2, 3).

    Slow sway (two sinusoids per axis, up to ``sway_px`` each at 640 px width), a small
    rotation (up to 2 degrees) and a sub-pixel breathing nod at the breathing rate.
    """
    k = size[0] / 640.0
    shift = np.zeros((len(t), 2))
    for axis in range(2):
        for _ in range(2):
            amp = rng.uniform(0.3, 1.0) * sway_px * k
            shift[:, axis] += amp * np.sin(
                2 * np.pi * t / rng.uniform(4.0, 15.0) + rng.uniform(0, 2 * np.pi)
            )
    shift[:, 1] += rng.uniform(0.2, 0.8) * k * np.sin(2 * np.pi * resp_rate_bpm / 60.0 * t)
    angle = np.deg2rad(rng.uniform(0.5, 2.0) * sway_px / 4.0) * np.sin(
        2 * np.pi * t / rng.uniform(6.0, 20.0) + rng.uniform(0, 2 * np.pi)
    )
    cos, sin = np.cos(angle) * scene.scale, np.sin(angle) * scene.scale
    affines = np.empty((len(t), 2, 3))
    affines[:, 0, 0], affines[:, 0, 1] = cos, -sin
    affines[:, 1, 0], affines[:, 1, 1] = sin, cos
    ax, ay = scene.anchor
    affines[:, 0, 2] = scene.position[0] + shift[:, 0] - (cos * ax - sin * ay)
    affines[:, 1, 2] = scene.position[1] + shift[:, 1] - (sin * ax + cos * ay)
    return affines


def _illumination(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Global brightness gain per frame, float (T,): slow 2-6 % drift and, half the time, a
    3-8 % step over 0.3 s (a lamp switched or a door opened)."""
    gain = rng.uniform(0.85, 1.0) * (
        1.0
        + rng.uniform(0.02, 0.06)
        * np.sin(2 * np.pi * t / rng.uniform(15.0, 60.0) + rng.uniform(0, 2 * np.pi))
    )
    if rng.random() < 0.5:
        t_step = rng.uniform(0.2, 0.8) * t[-1]
        step = rng.choice([-1.0, 1.0]) * rng.uniform(0.03, 0.08)
        gain *= 1.0 + step * np.clip((t - t_step) / 0.3, 0.0, 1.0)
    return gain


def _render(
    path: Path,
    scene: _Scene,
    pulse: np.ndarray,
    affines: np.ndarray,
    gains: np.ndarray,
    rng: np.random.Generator,
    fps: float,
    size: tuple[int, int],
    codec: str = "mjpg",
) -> None:
    """Compose and encode the frames (MJPG or raw): pulse on skin, motion, light, sensor noise.

    Args:
        path: .avi file to write.
        scene: the still scene.
        pulse: float (T,), zero-mean pulse wave per frame (template units).
        affines: float (T, 2, 3), source-to-frame map per frame.
        gains: float (T,), brightness gain per frame.
        rng: random generator for the sensor noise.
        fps: frame rate in Hz.
        size: (width, height) in pixels.
        codec: "mjpg" or "raw" (write_demo_archive).
    """
    width, height = size
    image, pulse_map, affines = _crop_to_view(scene, affines, size)
    noise_sd = rng.uniform(1.5, 3.0)
    pad = 32
    bank = rng.standard_normal((_NOISE_BANK, height + pad, width + pad, 3), dtype=np.float32)
    bank *= noise_sd
    picks = rng.integers(0, [_NOISE_BANK, pad, pad], size=(len(pulse), 3))

    writer = _video_writer(path, fps, size, codec)
    src = np.empty_like(image)
    frame = np.empty((height, width, 3), np.float32)
    try:
        for k in range(len(pulse)):
            if pulse_map is not None:
                cv2.scaleAdd(pulse_map, -pulse[k], image, dst=src)
            cv2.warpAffine(
                image if pulse_map is None else src,
                affines[k],
                size,
                dst=frame,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT,
            )
            b, dy, dx = picks[k]
            cv2.scaleAdd(frame, gains[k], bank[b, dy : dy + height, dx : dx + width], dst=frame)
            writer.write(cv2.convertScaleAbs(frame))
    finally:
        writer.release()


def _video_writer(path: Path, fps: float, size: tuple[int, int], codec: str) -> Any:
    """An object with write(frame) and release()."""
    if codec == "raw":
        return RawAviWriter(path, fps, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    # Honoured by OpenCV's own MJPEG writer; the FFmpeg backend keeps its default quantiser.
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 85)
    return writer


def raw_avi_bytes(seconds: float, fps: float, size: tuple[int, int]) -> int:
    """Bytes of an uncompressed 24-bit AVI of this length and size (frames and their index)."""
    stride = (size[0] * 3 + 3) & ~3
    return int(round(seconds * fps)) * (stride * size[1] + 8 + 16) + 4096


def _crop_to_view(
    scene: _Scene, affines: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Cut the scene to the source region any frame shows, so per-frame work scales with it.

    Returns the cropped image and pulse map (float32; None if ``scene.pulse`` is) and the
    affines shifted to match.
    """
    width, height = size
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], float)
    lin, off = affines[:, :, :2], affines[:, :, 2]
    inv = np.linalg.inv(lin)
    src_pts = np.einsum("kij,knj->kni", inv, corners[None] - off[:, None, :])
    src_h, src_w = scene.image.shape[:2]
    x0 = int(np.clip(np.floor(src_pts[..., 0].min()) - 2, 0, src_w - 1))
    y0 = int(np.clip(np.floor(src_pts[..., 1].min()) - 2, 0, src_h - 1))
    x1 = int(np.clip(np.ceil(src_pts[..., 0].max()) + 3, x0 + 1, src_w))
    y1 = int(np.clip(np.ceil(src_pts[..., 1].max()) + 3, y0 + 1, src_h))
    shifted = affines.copy()
    shifted[:, :, 2] += lin @ np.array([x0, y0], float)
    image = np.ascontiguousarray(scene.image[y0:y1, x0:x1])
    pulse_map = None if scene.pulse is None else np.ascontiguousarray(scene.pulse[y0:y1, x0:x1])
    return image, pulse_map, shifted
