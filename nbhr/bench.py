"""`nbhr bench`: what each stage of the pipeline costs on this machine, measured in one run.

Stages: decoding, face detection (cheap pass and full retry cascade), skin-colour reduction,
each estimator per window, and the whole pipeline end to end (video seconds per CPU second
in one process, and per wall second on the local pool).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from db.engine import make_engine, session_scope
from db.migrate import upgrade
from model.bands import Band
from model.classical import ESTIMATORS, make_estimator
from model.nbhrnet import ENCODER_BATCH
from scheduler.discover import find_videos, load_manifest, register_archive
from scheduler.local import LocalPool
from scheduler.plan import plan_job
from worker.faces import DETECT_WIDTH, Box, FaceDetector, skin_mean
from worker.options import ProcessingOptions
from worker.process import crop_decode_width, init_process
from worker.video import PART_DECODING, VideoError, iter_frames, probe


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Clock:
    """Wall and CPU seconds of this process over a block; children_cpu: the CPU seconds of
    the child processes that ended within it (a process pool shut down inside the block)."""

    def __enter__(self) -> _Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.children0 = _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        self.children_cpu = _children_cpu() - self.children0


def _frames(path: Path, n: int) -> list[np.ndarray]:
    return [f for _, f in iter_frames(path, 0, n)]


def bench_decode(
    videos: list[Path], widths: dict[Path, int | None] | None = None
) -> dict[str, Any]:
    """Every frame of `videos` decoded, at full size or at each video's `widths` entry (as
    iter_frames' min_width); the clock covers decoding alone."""
    counts = {v: probe(v).n_frames for v in videos}
    n = 0
    with _Clock() as c:
        for v in videos:
            for _ in iter_frames(v, 0, counts[v], (widths or {}).get(v)):
                n += 1
    info = probe(videos[0])
    return {
        "frames": n,
        "resolution": f"{info.width}x{info.height}",
        "codec": info.codec,
        "frames_per_cpu_s": n / c.cpu,
        "ms_per_frame": 1000 * c.cpu / n,
    }


def bench_tracking(
    videos: list[Path], widths: dict[Path, int | None] | None = None, pairs: int = 2
) -> dict[str, Any]:
    """Decode, track the face (detection at 2 Hz) and cut NBHRnet's crop of every frame of
    `videos` (at each one's `widths` entry, as iter_frames' min_width), reading whole frames
    and reading only the part around each box (worker.track.tracked_frames(part=True): the
    face's rows of an uncompressed AVI; the face's part of each MJPEG frame, decoded by
    worker._jpegpart where it was built). Run alternately `pairs` times in this process;
    CPU ms a frame, the lowest of the runs (this project's machines are shared and noisy).
    For MJPEG with the part decoder, also the entropy floors (bench_entropy_floor)."""
    from worker.crops import face_crop
    from worker.track import tracked_frames

    detector = FaceDetector()
    infos = {v: probe(v) for v in videos}
    n_frames = sum(info.n_frames for info in infos.values())
    times: dict[str, list[float]] = {"whole": [], "parts": []}
    boxes: dict[Path, dict[int, Box | None]] = {v: {} for v in videos}  # for the floor
    for _ in range(pairs):
        for label, part in (("whole", False), ("parts", True)):
            with _Clock() as c:
                for v, info in infos.items():
                    w = (widths or {}).get(v)
                    for i, frame, box in tracked_frames(
                        v, 0, info.n_frames, info.fps, detector, w, part=part
                    ):
                        if part:
                            boxes[v][i] = box
                        if box is not None:
                            face_crop(frame, box)
            times[label].append(1000 * c.cpu / n_frames)
    whole, parts = min(times["whole"]), min(times["parts"])
    out = {
        "ms_per_frame_whole": whole,
        "ms_per_frame_parts": parts,
        "speedup": whole / parts,
        "part_decoder_built": PART_DECODING,
    }
    if PART_DECODING:
        out |= bench_entropy_floor(videos, widths, boxes) or {}
    return out


def bench_entropy_floor(
    videos: list[Path],
    widths: dict[Path, int | None] | None,
    boxes: dict[Path, dict[int, Box | None]],
) -> dict[str, float] | None:
    """CPU ms a frame of reading each MJPEG frame's entropy-coded data down to its face's last
    row (`ms_per_frame_entropy_floor`): libjpeg asked for a strip 8 rows high at the bottom of
    crop_region(box), so that the rows above are only entropy-decoded and skipped, and nothing
    else of the frame is decoded. Baseline JPEG without restart markers (these files have
    none) must be read that far, bit by bit, by any decoder before the face's pixels can be
    had, so this is what no pipeline that crops the face can go below. Also the same down to
    the face's first row only (`ms_per_frame_entropy_above_face`, a strip at the top of
    crop_region): the difference is the entropy-coded data of the face's own rows, which even
    a decoder that skipped the rows above unread (restart markers, or an infinitely fast
    skip) would have to decode. boxes: each video's frame index -> box, as tracked_frames
    gives them (bench_tracking collects them as it times the parts). The lowest of 3 passes
    over each video's packets (held in memory, one video at a time); None for other codecs."""
    from worker._jpegpart import decode_part

    from worker.crops import crop_region
    from worker.video import MjpegPackets

    cpu = {"bottom": 0.0, "top": 0.0}  # the lowest of 3 passes over each video, summed
    n_frames = 0
    for v in videos:
        packets = MjpegPackets.open(v, 0, probe(v).n_frames, (widths or {}).get(v))
        if packets is None:
            return None
        height, width, _ = packets.shape
        strips: dict[str, list] = {"bottom": [], "top": []}  # (packet, strip) of each face
        for index, packet in packets:
            box = boxes[v].get(index)
            if box is not None:
                x0, y0, x1, y1 = crop_region(box, width, height)
                strips["bottom"].append((packet, (x0, max(y1 - 8, 0), x1, y1)))
                strips["top"].append((packet, (x0, y0, x1, min(y0 + 8, y1))))
        out = np.empty(packets.shape, np.uint8)
        for edge, jobs in strips.items():
            runs = []
            for _ in range(3):
                with _Clock() as c:
                    for packet, strip in jobs:
                        decode_part(packet, packets.scale, *strip, out)
                runs.append(c.cpu)
            cpu[edge] += min(runs)
        n_frames += len(boxes[v])
    if not n_frames:
        return None
    return {
        "ms_per_frame_entropy_floor": 1000 * cpu["bottom"] / n_frames,
        "ms_per_frame_entropy_above_face": 1000 * cpu["top"] / n_frames,
    }


def bench_faces(face_video: Path, empty_video: Path | None) -> dict[str, Any]:
    detector = FaceDetector()
    frames = _frames(face_video, 60)[::6]
    out: dict[str, Any] = {"detector": "dlib HOG frontal (dlib-bin wheel, no model file)"}
    with _Clock() as c:
        found = [detector.detect(f, full=False) for f in frames]
    out["ms_per_detection"] = 1000 * c.cpu / len(frames)
    out["found_share"] = sum(b is not None for b in found) / len(frames)
    out["ms_per_video_s_at_2hz"] = 2 * out["ms_per_detection"]
    box = next((b for b in found if b is not None), None)
    if box is not None:
        # What the tracker pays once it follows the face: the search near its last box.
        with _Clock() as c:
            near = [detector.detect(f, full=False, near=box) for f in frames * 3]
        out["ms_per_detection_near_last_box"] = 1000 * c.cpu / len(near)
        out["found_share_near_last_box"] = sum(b is not None for b in near) / len(near)
        with _Clock() as c:
            for f in frames * 10:
                skin_mean(f, box)
        out["skin_mean_ms_per_frame"] = 1000 * c.cpu / (len(frames) * 10)
    if empty_video is not None:
        empties = _frames(empty_video, 30)[::10]
        with _Clock() as c:
            for f in empties:
                detector.detect(f, full=True)
        out["ms_per_failed_full_cascade"] = 1000 * c.cpu / len(empties)
    return out


def bench_estimators(fps: float = 30.0, window_s: float = 10.0) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    t = np.arange(int(fps * window_s)) / fps
    pulse = np.sin(2 * np.pi * 2.3 * t)
    rgb = np.array([180.0, 120.0, 100.0]) * (1 + 0.01 * np.outer(pulse, [0.33, 0.77, 0.53]))
    rgb += rng.normal(0, 0.2, rgb.shape)
    out = {}
    for name in sorted(ESTIMATORS):
        est = make_estimator(name, Band.for_population("neonate"))
        reps = 50
        with _Clock() as c:
            for _ in range(reps):
                est.estimate(rgb, fps)
        ms = 1000 * c.cpu / reps
        out[name] = {"ms_per_window": ms, "window_s": window_s}
    return out


def face_frames(face_videos: list[Path], n: int) -> np.ndarray:
    """`n` normalised 128x128 face crops cut from the videos as workers cut them (repeated when
    the videos hold fewer). Timings need real crops: on random frames onnxruntime's PRelu
    runs about 1.5x slower (its per-element branch mispredicts on random signs), which once
    made inference alone look dearer than the whole pipeline. Only the first 2n/30 + 4 s of
    each video are read (twice what n frames at 30 fps take, for stretches without a face),
    so a long recording is not held whole."""
    from training.quantize import calibration_frames

    seconds = 2 * n / 30 + 4
    frames = calibration_frames(face_videos, max_frames=n, stride=1, seconds=seconds).frames
    return np.resize(frames, (n, *frames.shape[1:]))


def bench_nbhrnet(model: Path, frames: np.ndarray, repeats: int = 3) -> dict[str, Any]:
    """onnxruntime cost of one 60-frame window of `model` through its whole fp32 graph, on 1
    and 2 threads, batch 1 and 8: wall and CPU (all threads) seconds per window, after one
    warm-up batch. frames: at least 480 normalised face crops (face_frames)."""
    from model.nbhrnet import NBHRNetRunner

    out: dict[str, Any] = {"model": str(model)}
    for threads in (1, 2):
        runner = NBHRNetRunner(model, threads=threads)
        for batch in (1, 8):
            x = frames[: batch * 60].reshape(batch, 60, *frames.shape[1:])
            runner.predict(x, batch_size=batch)  # warm-up: session creation, first run
            with _Clock() as c:
                for _ in range(repeats):
                    runner.predict(x, batch_size=batch)
            n = repeats * batch
            out[f"threads{threads}_batch{batch}"] = {
                "wall_s_per_window": c.wall / n,
                "cpu_s_per_window": c.cpu / n,
            }
    return out


def bench_nbhrnet_overlap(model: Path, frames: np.ndarray) -> dict[str, Any]:
    """NBHRnet inference alone over `frames` (normalised face crops at 30 fps) on 1 thread, per
    video second of CPU: windows every 2 s against every 0.5 s through the per-frame fp32
    encoder and the head (features computed once), and every 0.5 s through the whole-model
    graph (each window's frames encoded again), which is what overlap would cost without shared
    features."""
    from model.nbhrnet import NBHRNetRunner

    runner = NBHRNetRunner(model, threads=1)
    if not runner.framewise:
        return {"skipped": f"{model.name} has no encoder/head companions"}
    x = np.ascontiguousarray(frames, dtype=np.float32)
    n = len(x)
    seconds = n / 30
    runner.encode_frames(x[:60])  # warm-up: sessions, first runs
    runner.run_head(np.zeros((1, 60, 256), np.float32))
    out: dict[str, Any] = {"video_s": seconds}
    for label, hop in (("hop_2s", 60), ("hop_0.5s", 15)):
        with _Clock() as c:
            feats = runner.encode_frames(x)
            firsts = range(0, n - 60 + 1, hop)
            runner.run_head(np.stack([feats[k : k + 60] for k in firsts]))
        out[label] = {"windows": len(firsts), "cpu_s_per_video_s": c.cpu / seconds}
    firsts = range(0, n - 60 + 1, 15)
    windows = np.stack([x[k : k + 60] for k in firsts[:4]])
    runner.predict(windows[:1], batch_size=1)
    with _Clock() as c:
        runner.predict(windows, batch_size=1)
    out["hop_0.5s_whole_graph"] = {
        "windows": len(firsts),
        "cpu_s_per_video_s": c.cpu / len(windows) * len(firsts) / seconds,
    }
    out["ratio_hop_0.5s_to_2s"] = (
        out["hop_0.5s"]["cpu_s_per_video_s"] / out["hop_2s"]["cpu_s_per_video_s"]
    )
    return out


def bench_nbhrnet_precision(
    model: Path, face_videos: list[Path], windows: int = 2, repeats: int = 2
) -> dict[str, Any]:
    """NBHRnet's cost per 60-frame window on 1 thread, on real face crops cut as workers cut
    them: the plain fp32 single graph (the export's whole model, one window at a time) against
    the fp32 encoder and the int8 encoder, each followed by the head. CPU seconds per window
    (best of `repeats`), the speed-up over the single graph, and the convolutions' GFLOP/s
    (GOP/s at int8) against this core's peak measured by `core_peak`."""
    from model.nbhrnet import (
        CONV_FLOPS_PER_FRAME,
        NBHRNetRunner,
        companion_paths,
        int8_encoder_path,
    )

    fp32 = NBHRNetRunner(model, threads=1)
    if not fp32.framewise:
        return {"skipped": f"{model.name} has no encoder/head companions"}
    frames = face_frames(face_videos[:1], 60 * windows)
    # Normalised in 60-frame blocks, so each block is what the whole graph takes as a window.
    whole = frames.reshape(windows, 60, *frames.shape[1:])

    def cpu_per_window(fn: Any) -> float:
        fn()  # warm-up: sessions, first runs
        cpu = []
        for _ in range(repeats):
            with _Clock() as c:
                fn()
            cpu.append(c.cpu)
        return min(cpu) / windows

    timings = {"whole_graph_fp32": cpu_per_window(lambda: fp32.predict(whole, batch_size=1))}
    runners = {"fp32": fp32}
    if fp32.int8_sha256 is not None:
        runners["int8"] = NBHRNetRunner(model, threads=1, precision="int8")
    for name, runner in runners.items():

        def framewise(runner: NBHRNetRunner = runner) -> None:
            runner.run_head(runner.encode_frames(frames).reshape(windows, 60, -1))

        timings[f"encoder_{name}_and_head"] = cpu_per_window(framewise)
    peak = core_peak()
    # The int8 encoder may be a student with its own layout (`nbhr distill --first-stride 2`
    # computes 4 % less), so each graph is credited with the convolutions it has.
    fp32_flops = encoder_conv_flops(companion_paths(model)[0]) or CONV_FLOPS_PER_FRAME
    flops = {"fp32": fp32_flops, "int8": encoder_conv_flops(int8_encoder_path(model)) or fp32_flops}
    out: dict[str, Any] = {"windows": windows, "frames_from": str(face_videos[0])}
    for key, seconds in timings.items():
        kind = "int8" if "int8" in key else "fp32"
        rate = flops[kind] * 60 / seconds / 1e9
        out[key] = {
            "cpu_s_per_window": seconds,
            "speedup_vs_whole_graph_fp32": timings["whole_graph_fp32"] / seconds,
            "conv_gflop_per_frame": flops[kind] / 1e9,
            "conv_g_per_s": rate,
            "share_of_core_peak": rate / peak[kind] if peak.get(kind) else None,
        }
    out["core_peak_g_per_s"] = peak
    return out


def encoder_conv_flops(path: Path, size: int = 128) -> int | None:
    """FLOPs (2 x multiply-adds) of the convolutions of a per-frame encoder file for one
    size x size frame, read off its graph (Conv and QLinearConv nodes; spatial sizes followed
    from the input through strides, pads and dilations). None without the onnx package (the
    train extra) or the file. The exported encoder gives CONV_FLOPS_PER_FRAME."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return None
    if not Path(path).is_file():
        return None
    graph = onnx.load(str(path)).graph
    kernels = {init.name: list(init.dims) for init in graph.initializer}
    sizes = {graph.input[0].name: (size, size)}
    macs = 0
    for node in graph.node:
        known = [sizes[name] for name in node.input if name in sizes]
        if not known:
            continue  # weights, scales, zero points
        h, w = known[0]
        if node.op_type in ("Conv", "QLinearConv"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
                raise ValueError(f"{path}: {node.name} pads with auto_pad, which is not counted")
            cout, cin, kh, kw = kernels[node.input[1 if node.op_type == "Conv" else 3]]
            sh, sw = attrs.get("strides", [1, 1])
            dh, dw = attrs.get("dilations", [1, 1])
            top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
            h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
            w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
            macs += h * w * cout * cin * kh * kw
        elif node.op_type == "GlobalAveragePool":
            h = w = 1
        for name in node.output:
            sizes[name] = (h, w)
    return 2 * macs


def core_peak(size: int = 1024, repeats: int = 10) -> dict[str, Any]:
    """What one core can do, by microbenchmark: onnxruntime's MatMul on fp32 (GFLOP/s) and its
    MatMulInteger on uint8 x int8 (GOP/s, the VNNI path quantised convolutions use), square
    `size` matrices, 1 thread, best of `repeats`. Needs the onnx package (the train extra)
    to build the two graphs; without it the figures are None."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return {"fp32": None, "int8": None, "skipped": "needs the onnx package"}
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    cases = {
        "fp32": (
            helper.make_node("MatMul", ["a", "b"], ["y"]),
            TensorProto.FLOAT,
            TensorProto.FLOAT,
            TensorProto.FLOAT,
            rng.standard_normal((size, size)).astype(np.float32),
            rng.standard_normal((size, size)).astype(np.float32),
        ),
        "int8": (
            helper.make_node("MatMulInteger", ["a", "b"], ["y"]),
            TensorProto.UINT8,
            TensorProto.INT8,
            TensorProto.INT32,
            rng.integers(0, 256, (size, size), dtype=np.uint8),
            rng.integers(-128, 128, (size, size), dtype=np.int8),
        ),
    }
    out: dict[str, Any] = {"matrix": size}
    for kind, (node, ta, tb, ty, a, b) in cases.items():
        graph = helper.make_graph(
            [node],
            kind,
            [
                helper.make_tensor_value_info("a", ta, [size, size]),
                helper.make_tensor_value_info("b", tb, [size, size]),
            ],
            [helper.make_tensor_value_info("y", ty, [size, size])],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(proto.SerializeToString(), options)
        session.run(None, {"a": a, "b": b})
        cpu = []
        for _ in range(repeats):
            with _Clock() as c:
                session.run(None, {"a": a, "b": b})
            cpu.append(c.cpu)
        out[kind] = 2 * size**3 / min(cpu) / 1e9
    return out


def bench_pipeline_overhead(
    face_videos: list[Path], model: Path, opts: ProcessingOptions
) -> dict[str, Any]:
    """What the pipeline around NBHRnet costs: `--estimator nbhrnet` end to end on videos that
    show a face throughout, run segment by segment in this process with 1 thread (decode,
    track, crop, normalise, encode, head, beats, store), its CPU time split into the part
    spent inside onnxruntime and the rest. Both come from the same run, so a change of clock
    speed or a busy neighbour moves them together (timing inference apart, in another run,
    varied by up to 20 % here). One segment of the first video is run before the clock, into
    a database of its own: what a worker process pays once (imports, SQL statement caches,
    onnxruntime's and the detector's set-up) is not a per-frame cost (it added 0.05-0.1 to the
    ratio of a one-minute run here). Also NBHRnet inference alone (encoder and head on
    repeated crops, at the options' precision) on as many frames, for comparison."""
    from worker.process import nbhrnet_runner, process_segment

    def planned(tmp: Path, name: str, videos: list[Path]) -> tuple[Any, list[int]]:
        archive = tmp / name
        archive.mkdir()
        for v in videos:
            (archive / v.name).symlink_to(v.resolve())
        return plan_fresh(f"sqlite:///{tmp / name}.sqlite", archive, opts)

    with tempfile.TemporaryDirectory() as tmp:
        init_process(1)
        warm, warm_ids = planned(Path(tmp), "warm-up", face_videos[:1])
        process_segment(warm, warm_ids[0])
        warm.dispose()
        engine, segment_ids = planned(Path(tmp), "faces", face_videos)
        runner = nbhrnet_runner(
            opts.model_path, opts.model_sha256, opts.nbhrnet_precision, opts.model_int8_sha256
        )
        runner.inference_cpu_s = 0.0
        with _Clock() as c:
            video_s = sum(process_segment(engine, i).video_s for i in segment_ids)
        inside = runner.inference_cpu_s
        engine.dispose()
    n = int(round(video_s * 30))
    x = face_frames(face_videos[:1], 60)
    runner.run_head(runner.encode_frames(x)[None])  # warm-up
    with _Clock() as alone:
        for _ in range(n // 60):
            runner.run_head(runner.encode_frames(x)[None])
    return {
        "video_s": video_s,
        "end_to_end_cpu_s": c.cpu,
        "inference_cpu_s": inside,
        "ratio": c.cpu / inside,
        "inference_alone_cpu_s": alone.cpu,
        "ratio_to_inference_alone": c.cpu / alone.cpu,
    }


def _with_floor(overhead: dict[str, Any], tracking: dict[str, Any]) -> dict[str, Any]:
    """`overhead` (bench_pipeline_overhead) with the ratios that place it, each the same
    inference plus one cost per frame that bench_tracking measured on the same files:
    `ratio_tracking`, plus decoding, tracking and cropping as the pipeline does them
    (`tracking["ms_per_frame_parts"]`: all but normalising, the head, the beats and storing);
    `ratio_floor_entropy`, the lowest ratio any pipeline reading these files with
    libjpeg-turbo could reach, plus only the entropy decoding that
    `tracking["ms_per_frame_entropy_floor"]` measured (MJPEG; not added for other files); and
    `ratio_floor_face_rows`, plus only the entropy decoding of the face's own rows (the floor
    less `ms_per_frame_entropy_above_face`): the least it could reach even skipping the rows
    above the face unread."""
    frames = overhead["video_s"] * 30  # the bench's archives are 30 fps
    inference = overhead["inference_cpu_s"]
    out = dict(overhead)
    floor = tracking.get("ms_per_frame_entropy_floor")
    above = tracking.get("ms_per_frame_entropy_above_face")
    for key, ms in (
        ("ratio_tracking", tracking.get("ms_per_frame_parts")),
        ("ratio_floor_entropy", floor),
        ("ratio_floor_face_rows", None if floor is None or above is None else floor - above),
    ):
        if ms is not None:
            out[key] = (inference + ms * frames / 1000) / inference
    return out


def plan_fresh(url: str, archive: Path, opts: ProcessingOptions) -> tuple[Any, list[int]]:
    """A new database at `url` with every video of `archive` registered (its manifest.csv too,
    if there is one) and planned with `opts`: the engine and the segment ids to run."""
    manifest_path = archive / "manifest.csv"
    manifest = load_manifest(manifest_path) if manifest_path.is_file() else None
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as s:
        reg = register_archive(s, archive, manifest)
        plan = plan_job(s, str(archive), reg.all_ids, opts, "local")
    return engine, plan.segment_ids


def bench_end_to_end(
    archive: Path,
    workers: int,
    opts: ProcessingOptions | None = None,
    layouts: tuple[tuple[str, int, int], ...] | None = None,
    spawn: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Process the archive from scratch once per (label, processes, onnxruntime threads) layout
    (default: one process and `workers` processes), with `opts` (default: the classical
    estimators). Each entry: video s, wall s, CPU s (this process and its pool's processes,
    start-up included) and video s per wall s and per CPU s. spawn: every layout in fresh
    processes, one process too, so that each pays the same start-up (imports, onnxruntime
    sessions, the face detector: 1.1-1.2 s a process here) as `nbhr run` pays, for comparing
    layouts; they start before the archive is registered and planned, as `nbhr run` starts
    its pool, and the clock counts both. Without it a one-process layout runs in this process,
    warm from what ran before it, for rates per core, planned before the clock.
    rounds: run the layouts this many times in turn (A B A B ...) and keep each layout's
    fastest run; `wall_s_rounds` lists them all. On a virtual machine whose neighbours come and
    go, one run of each moved the ratio between layouts by up to 10 %; a busy neighbour only
    ever slows a run down.
    pool_cpu_ratio: the pool's CPU against one process's for the same work, what running side
    by side costs on this machine (shared caches and memory, a busy neighbour): where it is
    well above 1, pool_speedup falls short of the number of processes."""
    out: dict[str, Any] = {}
    opts = opts or ProcessingOptions()
    layouts = layouts or (("one_process", 1, 1), ("pool", workers, 1))
    for _ in range(rounds):
        for label, n, threads in layouts:
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
                pool = LocalPool(url, n, threads, spawn=spawn, detector=opts.roi == "face")
                if pool.in_process:
                    engine, segment_ids = plan_fresh(url, archive, opts)
                    with _Clock() as c, pool:
                        done = list(pool.run(segment_ids))
                else:
                    # As `nbhr run` runs a pool: its processes start while the archive is
                    # registered and planned, so both are on the clock.
                    with _Clock() as c, pool:
                        engine, segment_ids = plan_fresh(url, archive, opts)
                        done = list(pool.run(segment_ids))
                engine.dispose()
            video_s = sum(o.video_s for o in done)
            cpu = c.cpu + c.children_cpu
            entry = {"workers": n, "threads": threads, "video_s": video_s, "wall_s": c.wall}
            entry["video_s_per_wall_s"] = video_s / c.wall
            entry["cpu_s"] = cpu
            entry["video_s_per_cpu_s"] = video_s / cpu
            _keep_fastest(out, label, entry)
    out["estimators"] = list(opts.estimators)
    if "one_process" in out and "pool" in out:
        out["pool_speedup"] = (
            out["pool"]["video_s_per_wall_s"] / out["one_process"]["video_s_per_wall_s"]
        )
        out["pool_cpu_ratio"] = out["pool"]["cpu_s"] / out["one_process"]["cpu_s"]
        walls = (out["one_process"]["wall_s_rounds"], out["pool"]["wall_s_rounds"])
        out["pool_speedup_rounds"] = [one / pool for one, pool in zip(*walls, strict=True)]
    return out


# The NBHR archive (Huang et al. 2021): 1130 recordings of 257 newborns, 9.6 h of 30-fps video.
NBHR_VIDEO_H = 9.6


def archive_estimate(entry: dict[str, Any], video_h: float = NBHR_VIDEO_H) -> dict[str, Any]:
    """The wall time of `video_h` hours of video at the rate of one bench_end_to_end layout's
    `entry` (its video s per wall s, start-up included): on this machine, and the number of
    such machines that would take at most one hour if the work divided evenly among them
    (each with a pool of its own; the database and broker they would share are not counted:
    scripts/bench_distributed.py measures those)."""
    rate = entry["video_s_per_wall_s"]
    hours = video_h / rate
    return {
        "video_h": video_h,
        "video_s_per_wall_s": rate,
        "workers": entry["workers"],
        "threads": entry["threads"],
        "wall_h_one_machine": hours,
        "machines_for_one_hour": max(1, math.ceil(hours)),
    }


def _keep_fastest(out: dict[str, Any], label: str, entry: dict[str, Any]) -> None:
    """Record one round's `entry` of a layout: out[label] becomes the fastest round's entry
    (lowest wall_s), with every round's wall time in `wall_s_rounds`."""
    walls = out.get(label, {}).get("wall_s_rounds", []) + [entry["wall_s"]]
    if label not in out or entry["wall_s"] < out[label]["wall_s"]:
        out[label] = entry
    out[label]["wall_s_rounds"] = walls


def _inference_loop(
    opts: ProcessingOptions,
    frames: np.ndarray,
    windows: int,
    batch: int,
    barrier: Any,
    results: Any,
) -> None:
    """One process of bench_inference_processes: NBHRnet's encoder (`batch` frames a call)
    and head as `nbhr run` runs them with `opts`, on one window of `frames`, `windows` times
    once every process is ready."""
    from worker.process import nbhrnet_runner

    init_process(1)
    runner = nbhrnet_runner(
        opts.model_path, opts.model_sha256, opts.nbhrnet_precision, opts.model_int8_sha256
    )
    runner.run_head(runner.encode_frames(frames, batch)[None])  # warm-up: sessions, first run
    barrier.wait()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(windows):
        runner.run_head(runner.encode_frames(frames, batch)[None])
    results.put((time.perf_counter() - wall0, time.process_time() - cpu0))


def bench_inference_processes(
    opts: ProcessingOptions,
    frames: np.ndarray,
    workers: int,
    windows: int = 40,
    rounds: int = 2,
    batch: int = ENCODER_BATCH,
) -> dict[str, Any]:
    """What `workers` processes at once gain on this machine for NBHRnet's inference alone, the
    bulk of `--estimator nbhrnet`'s CPU, with the model and precision of `opts`
    (nbhrnet_run_options): `windows` windows of `frames` (60 normalised face
    crops) in one process, then as many in each of `workers` processes at once, each started,
    warmed up and released together, so that neither start-up nor decoding counts; `rounds`
    times in turn, keeping each side's fastest (as bench_end_to_end). speedup: workers x one
    process's wall time over the slowest of the pool's; cpu_ratio: the pool's CPU per window
    against one process's. What the cores give compute that runs side by side (shared caches
    and memory bandwidth, the clock, the host's other guests) bounds the pipeline's
    pool_speedup from above. batch: frames per encoder call (ENCODER_BATCH, as `nbhr run`);
    also in the result, with each side's CPU ms per frame."""
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {"windows_per_process": windows, "encoder_batch": batch}
    for _ in range(rounds):
        for label, n in (("one_process", 1), ("pool", workers)):
            barrier, results = ctx.Barrier(n), ctx.Queue()
            args = (opts, frames, windows, batch, barrier, results)
            procs = [ctx.Process(target=_inference_loop, args=args) for _ in range(n)]
            for p in procs:
                p.start()
            got = []
            while len(got) < n:
                try:
                    got.append(results.get(timeout=1.0))
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        for p in procs:
                            p.kill()
                        raise RuntimeError(
                            f"an inference process exited with code {dead[0].exitcode}"
                        ) from None
            for p in procs:
                p.join()
            wall, cpu = max(w for w, _ in got), sum(c for _, c in got)
            _keep_fastest(out, label, {"workers": n, "wall_s": wall, "cpu_s": cpu})
    one, pool = out["one_process"], out["pool"]
    out["speedup"] = workers * one["wall_s"] / pool["wall_s"]
    out["cpu_ratio"] = pool["cpu_s"] / (workers * one["cpu_s"])
    frames_done = windows * len(frames)
    out["cpu_ms_per_frame_one_process"] = 1000 * one["cpu_s"] / frames_done
    out["cpu_ms_per_frame_pool"] = 1000 * pool["cpu_s"] / (workers * frames_done)
    return out


# Frames per encoder call that the bench compares (model.nbhrnet.ENCODER_BATCH is the first).
ENCODER_BATCHES = (ENCODER_BATCH, 4)


def bench_encoder_batches(
    opts: ProcessingOptions, frames: np.ndarray, workers: int, alone: dict[str, Any]
) -> dict[str, Any]:
    """NBHRnet inference alone (bench_inference_processes) at each of ENCODER_BATCHES frames per
    encoder call, in one process and in `workers` at once: the measurement behind
    ENCODER_BATCH. `alone`: bench_inference_processes' result at ENCODER_BATCH, already
    measured (not run again); the others run as many windows and rounds."""
    windows, rounds = alone["windows_per_process"], len(alone["one_process"]["wall_s_rounds"])
    out = {}
    for batch in ENCODER_BATCHES:
        got = (
            alone
            if batch == ENCODER_BATCH
            else bench_inference_processes(opts, frames, workers, windows, rounds, batch)
        )
        out[f"frames_{batch}"] = {
            key: got[key]
            for key in ("cpu_ms_per_frame_one_process", "cpu_ms_per_frame_pool", "speedup")
        }
    return out


def bench_pos_per_core(archive: Path) -> dict[str, Any]:
    """`--estimator pos` end to end in one process (decode, track the face, skin colour, POS,
    store) with MJPEG decoded at full size and at reduced size (`--decode`): video seconds per
    CPU second, in one run. Issue 6 asks for 30 per core, decoding of 640x480 included."""
    out: dict[str, Any] = {}
    for label, width in (("full_decode", None), ("reduced_decode", DETECT_WIDTH)):
        opts = ProcessingOptions(estimators=("pos",), decode_min_width=width)
        entry = bench_end_to_end(archive, 1, opts, (("one_process", 1, 1),))["one_process"]
        out[label] = {k: entry[k] for k in ("video_s", "cpu_s", "video_s_per_cpu_s")}
    out["speedup"] = (
        out["reduced_decode"]["video_s_per_cpu_s"] / out["full_decode"]["video_s_per_cpu_s"]
    )
    return out


# Issue 6's other archive formats: (label, codec, size), rendered from the same demo scenes.
FORMATS = (("raw_640x480", "raw", (640, 480)), ("mjpg_1920x1080", "mjpg", (1920, 1080)))
FORMAT_SEED = 606


def bench_formats(
    model: Path | None, seconds: float = 30.0, formats: tuple = FORMATS
) -> dict[str, Any]:
    """The same synthetic scenes (`nbhr demo --seed 606`, 2 infants x 1 recording of `seconds`,
    plus the empty cot) written in each of `formats`: uncompressed 640x480 24-bit AVI (NBHR's
    kind: 0.9 MB a frame, read straight from the file) and 1920x1080 MJPEG. For each: bytes
    per frame, decoding cost per frame at full size and as `nbhr run` decodes by default,
    `--estimator pos` end to end per CPU second, and with a model NBHRnet's pipeline overhead
    (`bench_pipeline_overhead`). The files are deleted after each format (a raw one is
    about 0.8 GB)."""
    from nbhr.demo import write_demo_archive

    out: dict[str, Any] = {}
    for label, codec, size in formats:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / label
            write_demo_archive(
                root,
                subjects=2,
                seconds=seconds,
                seed=FORMAT_SEED,
                recordings_per_subject=1,
                size=size,
                jobs=2,
                codec=codec,
            )
            with_face, _ = _split_by_face(sorted(find_videos(root)))
            full = bench_decode(with_face)
            widths = {v: crop_decode_width(v, 0, DETECT_WIDTH) for v in with_face}
            as_run = bench_decode(with_face, widths)
            n_frames = full["frames"]
            mb_per_frame = sum(v.stat().st_size for v in with_face) / n_frames / 1e6
            entry: dict[str, Any] = {
                "codec": full["codec"],
                "resolution": full["resolution"],
                "video_s": n_frames / probe(with_face[0]).fps,
                "mb_per_frame": mb_per_frame,
                "decode_ms_per_frame_full": full["ms_per_frame"],
                "decode_ms_per_frame_as_run": as_run["ms_per_frame"],
                "decode_mb_per_cpu_s_full": mb_per_frame * 1000 / full["ms_per_frame"],
                "tracking": bench_tracking(with_face, widths),
            }
            opts = ProcessingOptions(estimators=("pos",), decode_min_width=DETECT_WIDTH)
            pos = bench_end_to_end(root, 1, opts, (("one_process", 1, 1),))["one_process"]
            entry["pos_video_s_per_cpu_s"] = pos["video_s_per_cpu_s"]
            if model is not None:
                opts = nbhrnet_run_options(model)
                overhead = bench_pipeline_overhead(with_face, model, opts)
                entry["pipeline_overhead"] = _with_floor(overhead, entry["tracking"])
            out[label] = entry
    return out


def nbhrnet_run_options(model: Path) -> ProcessingOptions:
    """What `nbhr run --estimator nbhrnet --model MODEL` runs by default: the int8 encoder when
    the model has one, MJPEG decoded at reduced size where the crops allow it."""
    from model.nbhrnet import NBHRNetRunner

    runner = NBHRNetRunner(model)
    int8 = runner.framewise and runner.int8_sha256 is not None
    return ProcessingOptions(
        estimators=("nbhrnet",),
        model_path=str(model.resolve()),
        model_sha256=runner.sha256,
        nbhrnet_precision="int8" if int8 else "fp32",
        model_int8_sha256=runner.int8_sha256 if int8 else None,
        decode_min_width=DETECT_WIDTH,
    )


# The most video `nbhr bench DIR` takes unless --max-video-min says otherwise (the command's
# help says why).
BENCH_MAX_VIDEO_MIN = 15.0


def archive_video_min(archive: Path) -> float:
    """Minutes of video under `archive`, as probe reads them (files it cannot read count 0)."""
    seconds = 0.0
    for v in find_videos(archive):
        try:
            seconds += probe(v).duration_s
        except VideoError:
            continue
    return seconds / 60


def run_bench(archive: Path | None, workers: int, model: Path | None = None) -> dict[str, Any]:
    """All measurements, on `archive` or on a freshly written small demo archive; with an
    NBHRnet `model`, also its onnxruntime cost per window and `--estimator nbhrnet` end to
    end."""
    init_process()
    with tempfile.TemporaryDirectory() as tmp:
        if archive is None:
            from nbhr.demo import write_demo_archive

            archive = Path(tmp) / "demo"
            write_demo_archive(archive, subjects=2, seconds=30.0, seed=1, recordings_per_subject=1)
        videos = find_videos(archive)
        with_face, without = _split_by_face(videos)
        if not with_face:
            raise ValueError(f"no video under {archive} shows a face in its first frame")
        result = {
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                **_cpu_model(),
                "opencv": cv2.__version__,
            },
            "archive": {"path": str(archive), "videos": len(videos)},
            "decode": bench_decode(videos),
            "faces": bench_faces(with_face[0], without[0] if without else None),
            "estimators": bench_estimators(),
            # The four classical estimators as `nbhr run` runs them by default.
            "end_to_end": bench_end_to_end(
                archive,
                workers,
                ProcessingOptions(decode_min_width=DETECT_WIDTH),
                spawn=True,
                rounds=2,
            ),
            "pos_per_core": bench_pos_per_core(archive),
        }
        result["formats"] = bench_formats(model)
        if model is not None:
            from model.nbhrnet import NBHRNetRunner

            frames = face_frames(with_face[:1], 480)
            result["nbhrnet"] = bench_nbhrnet(model, frames)
            opts = nbhrnet_run_options(model)
            result["nbhrnet"]["precision_end_to_end"] = opts.nbhrnet_precision
            # Processes x threads: the pool against one process with as many threads (which
            # encodes beside its decoding, worker.features).
            layouts = (
                ("one_process", 1, 1),
                ("pool", workers, 1),
                ("one_process_threads", 1, workers),
            )
            result["nbhrnet"]["end_to_end"] = bench_end_to_end(
                archive, workers, opts, layouts, spawn=True, rounds=2
            )
            # Point 7 of the plan: the NBHR archive at the default layout's rate (nbhr run -jN).
            result["nbhrnet"]["nbhr_archive"] = archive_estimate(
                result["nbhrnet"]["end_to_end"]["pool"]
            )
            alone = bench_inference_processes(opts, frames[:60], workers)
            result["nbhrnet"]["end_to_end"]["inference_alone"] = alone
            result["nbhrnet"]["encoder_batch"] = bench_encoder_batches(
                opts, frames[:60], workers, alone
            )
            widths = {v: crop_decode_width(v, 0, DETECT_WIDTH) for v in with_face}
            result["nbhrnet"]["tracking"] = bench_tracking(with_face, widths)
            result["nbhrnet"]["overlap"] = bench_nbhrnet_overlap(model, frames[:300])
            result["nbhrnet"]["precision"] = bench_nbhrnet_precision(model, with_face)
            if NBHRNetRunner(model).framewise:
                result["nbhrnet"]["pipeline_overhead"] = _with_floor(
                    bench_pipeline_overhead(with_face, model, opts), result["nbhrnet"]["tracking"]
                )
                # The same with every frame decoded at full size (--decode full).
                result["nbhrnet"]["pipeline_overhead_full_decode"] = bench_pipeline_overhead(
                    with_face, model, replace(opts, decode_min_width=None)
                )
                # The same archive end to end, one process, windows every 2 s and every 0.5 s.
                one = (("one_process", 1, 1),)
                for hop in (2.0, 0.5):
                    e2e = bench_end_to_end(archive, 1, replace(opts, nbhrnet_hop_s=hop), one)
                    entry = e2e["one_process"]
                    result["nbhrnet"]["overlap"][f"end_to_end_hop_{hop:g}s"] = {
                        "cpu_s_per_video_s": entry["cpu_s"] / entry["video_s"],
                        "video_s_per_cpu_s": entry["video_s_per_cpu_s"],
                    }
    return result


def _cpu_model() -> dict[str, Any]:
    """The CPU's model name and the instruction sets the int8 kernels can use, from
    /proc/cpuinfo (Linux; empty elsewhere): the same 2-core machine kind has come with AMD
    and with Intel CPUs here, and the figures differ between them (README)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"cpu_model": fields.get("model name"), "cpu_flags": [f for f in wanted if f in flags]}


def _split_by_face(videos: list[Path]) -> tuple[list[Path], list[Path]]:
    """Videos whose first frame shows a face, and those whose first frame does not."""
    detector = FaceDetector()
    with_face, without = [], []
    for v in videos:
        frame = _frames(v, 1)[0]
        (with_face if detector.detect(frame) is not None else without).append(v)
    return with_face, without
