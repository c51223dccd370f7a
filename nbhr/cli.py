"""The `nbhr` command line: demo data, runs, status, results, evaluation, schema, benchmark."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from db.engine import DatabaseError, check_connection, default_url, make_engine, session_scope
from db.migrate import upgrade
from training.cli import distill as distill_command
from training.cli import export_onnx as export_onnx_command
from training.cli import quantize as quantize_command
from training.cli import train as train_command

if TYPE_CHECKING:
    from scheduler.local import LocalPool

DB_OPTION = click.option(
    "--db",
    "db_url",
    envvar="NBHR_DB_URL",
    default=default_url,
    show_default="sqlite:///nbhr.sqlite or $NBHR_DB_URL",
    help="Database URL, e.g. sqlite:///nbhr.sqlite or postgresql+psycopg://user@host/db.",
)


# The population's heart-rate band: `run` searches it for HR, `hrv` and `report` keep beat
# intervals inside it.
POPULATION_OPTION = click.option(
    "--population",
    type=click.Choice(["neonate", "adult"]),
    default="neonate",
    show_default=True,
    help="HR band: 80-240 (neonate) or 40-180 bpm (adult).",
)
HR_RANGE_OPTION = click.option("--hr-range", help="HR band LO-HI in bpm; overrides --population.")


def friendly_errors(fn: Callable) -> Callable:
    """Turn expected failures (database down, bad files) into a one-line error, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabaseError as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            cause = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(f"database error: {cause}") from None

    return wrapper


def open_db(db_url: str, migrate: bool = True) -> Engine:
    engine = make_engine(db_url)
    check_connection(engine)
    if migrate:
        upgrade(engine)
    return engine


def emit_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    """Print rows as an aligned table, CSV or a JSON array."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        if fmt == "table":
            click.echo("no rows")
        return
    cols = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
        return
    text = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, str) and "/" in v and len(v) > 40:
        return "…" + v[-39:]
    return str(v)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nbhr")
def main() -> None:
    """Heart rate from archived facial video, stored in SQL, checked against reference vitals."""


# --- demo ----------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--subjects", default=3, show_default=True, type=click.IntRange(1, 500))
@click.option(
    "--recordings",
    default=2,
    show_default=True,
    type=click.IntRange(1, 50),
    help="Recordings per subject.",
)
@click.option(
    "--seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(12, 3600),
    help="Length of each recording.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--size",
    default="640x480",
    show_default=True,
    help="Frame size WxH in pixels (the face keeps its share of the frame).",
)
@click.option(
    "--codec",
    type=click.Choice(["mjpg", "raw"]),
    default="mjpg",
    show_default=True,
    help="mjpg (motion JPEG) or raw (uncompressed 24-bit AVI, bottom-up rows, as capture "
    "software writes it: 0.9 MB a 640x480 frame, at most 4 GiB a recording).",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Processes rendering recordings (the archive is the same for any number).",
)
@click.option("--json", "as_json", is_flag=True, help="What was written, as JSON.")
def demo(
    directory: Path,
    subjects: int,
    recordings: int,
    seconds: float,
    seed: int,
    size: str,
    codec: str,
    jobs: int,
    as_json: bool,
) -> None:
    """Write a SYNTHETIC NICU-like archive (NBHR layout) to DIRECTORY."""
    from dataclasses import asdict

    from nbhr.demo import write_demo_archive
    from scheduler.local import stop_on_sigterm

    try:
        width, height = (int(v) for v in size.lower().split("x"))
        if width < 64 or height < 64:
            raise ValueError
    except ValueError:
        message = f"expected WxH, at least 64x64, got {size!r}"
        raise click.BadParameter(message, param_hint="--size") from None
    try:
        with stop_on_sigterm():  # `kill` ends the --jobs processes too
            summary = write_demo_archive(
                directory,
                subjects=subjects,
                seconds=seconds,
                seed=seed,
                recordings_per_subject=recordings,
                size=(width, height),
                jobs=jobs,
                codec=codec,
            )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        recs = [asdict(r) for r in summary.recordings]
        out = {"root": str(directory), "manifest": str(summary.manifest), "recordings": recs}
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(
        f"wrote {len(summary.recordings)} recordings of {len(summary.subjects)} subjects "
        f"(+1 without a face) to {directory} (synthetic: a real photograph, a simulated pulse)"
    )


# --- run -----------------------------------------------------------------------------------


def _options_from_cli(
    estimators: tuple[str, ...],
    roi: str,
    population: str,
    hr_range: str | None,
    window_s: float,
    hop_s: float,
    segment_s: float,
    model: Path | None = None,
    nbhrnet_hop_s: float = 2.0,
    nbhrnet_precision: str = "fp32",
    decode: str = "full",
):
    from model.bands import Band
    from model.nbhrnet import NBHRNetRunner
    from worker.faces import Box
    from worker.options import CLASSICAL, NBHRNET, NBHRNET_WINDOW_S, ProcessingOptions

    runner = NBHRNetRunner(model) if model else None
    try:
        band = Band.parse(hr_range) if hr_range else Band.for_population(population)
        if roi not in ("face", "full"):
            Box.parse(roi)
        # CLASSICAL names model.classical's estimators without importing it (and scipy.signal,
        # half a second) into a process that runs no segment.
        unknown = [e for e in estimators if e not in CLASSICAL and e != NBHRNET]
        if unknown:
            raise ValueError(
                f"unknown estimator {unknown[0]!r}; available: "
                f"{', '.join(sorted([*CLASSICAL, NBHRNET]))}"
            )
        opts = ProcessingOptions(
            estimators=tuple(dict.fromkeys(estimators)) or CLASSICAL,
            roi=roi,
            population=population,
            hr_lo_bpm=band.lo_bpm,
            hr_hi_bpm=band.hi_bpm,
            window_s=window_s,
            hop_s=hop_s,
            segment_s=segment_s,
            model_path=str(model.resolve()) if model else None,
            model_sha256=runner.sha256 if runner else None,
            nbhrnet_hop_s=nbhrnet_hop_s,
            **_precision_options(runner, nbhrnet_precision),
            decode_min_width=_decode_min_width(decode, estimators, roi),
        )
        opts.validate()
        if runner is not None and nbhrnet_hop_s != NBHRNET_WINDOW_S:
            runner.require_framewise()  # windows between 2-s grid points need the halves
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return opts


def _decode_min_width(decode: str, estimators: tuple[str, ...], roi: str) -> int | None:
    """--decode reduced: MJPEG decoded at the face detector's working width (320 px) or wider,
    where it changes nothing but cost, on --roi face or full (a fixed box is given in full-size
    pixels). With NBHRnet (--roi face only), each segment decodes no smaller than its face's
    128-px crop needs (worker.process.crop_decode_width)."""
    from worker.faces import DETECT_WIDTH
    from worker.options import NBHRNET

    if decode == "full" or roi not in ("face", "full") or (NBHRNET in estimators and roi != "face"):
        return None
    return DETECT_WIDTH


def _threads_per_process(threads: int | None, processes: int) -> int:
    """--threads as given, else the cores shared out among the processes (at least 1)."""
    return threads or max(1, (os.cpu_count() or 1) // processes)


def _precision_options(runner: Any, precision: str) -> dict[str, Any]:
    """ProcessingOptions fields for NBHRnet's encoder precision: "auto" takes int8 when the model
    has an int8 encoder made from it (and its encoder/head halves), else fp32."""
    if runner is None:
        return {}
    if precision == "auto":
        precision = "int8" if runner.framewise and runner.int8_sha256 else "fp32"
    if precision == "fp32":
        return {}
    runner.require_framewise()
    if runner.int8_sha256 is None:
        raise ValueError(
            f"--nbhrnet-precision int8: {runner.path.name} has no int8 encoder made from it; "
            "make one with `nbhr quantize`"
        )
    return {"nbhrnet_precision": "int8", "model_int8_sha256": runner.int8_sha256}


# Options shared by `run` and `enqueue`: what to process and how (the job's options).
_PLAN_OPTIONS = [
    click.option(
        "--estimator",
        "estimators",
        multiple=True,
        help="pos, chrom, green, pbvn or nbhrnet; repeat for several (default: the four "
        "classical ones).",
    ),
    click.option(
        "--roi",
        default="face",
        show_default=True,
        help="face (tracked), full (whole frame) or X,Y,W,H (fixed box, pixels).",
    ),
    POPULATION_OPTION,
    HR_RANGE_OPTION,
    click.option(
        "--manifest",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CSV recording,subject (default: DIRECTORY/manifest.csv if present).",
    ),
    click.option(
        "--reference-table",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CSV recording,hr_bpm with one mean reference HR per recording.",
    ),
    click.option(
        "--ppg-rate",
        default=60.0,
        show_default=True,
        type=click.FloatRange(1, 10000),
        help="Sample rate (Hz) of NBHR-layout PPG/<id>.csv reference files.",
    ),
    click.option(
        "--window-s",
        default=10.0,
        show_default=True,
        type=float,
        help="Analysis window length, seconds.",
    ),
    click.option(
        "--hop-s", default=2.0, show_default=True, type=float, help="Window step, seconds."
    ),
    click.option(
        "--segment-s",
        default=60.0,
        show_default=True,
        type=float,
        help="Video seconds per unit of work.",
    ),
    click.option(
        "--nbhrnet-hop-s",
        default=2.0,
        show_default=True,
        type=float,
        help="Step between NBHRnet's 2-s windows (2, 1, 0.5, ...): each frame's CNN features"
        " are computed once, so overlapping windows cost only the small recurrent head.",
    ),
    click.option(
        "--nbhrnet-precision",
        type=click.Choice(["auto", "fp32", "int8"]),
        default="auto",
        show_default=True,
        help="NBHRnet's per-frame encoder: int8 (static quantisation of a ReLU copy, about "
        "3.5x faster; model/MODEL_CARD.md gives its accuracy) or fp32. auto: int8 when the "
        "model has an int8 encoder (`nbhr quantize`), else fp32. The two are separate model "
        "versions in results.",
    ),
    click.option(
        "--decode",
        type=click.Choice(["reduced", "full"]),
        default="reduced",
        show_default=True,
        help="reduced: MJPEG frames are decoded straight to 1/2, 1/4 or 1/8 size, no narrower "
        "than the face detector's 320 px and, with NBHRnet, than its face crops need (judged "
        "per segment on its first frame), on --roi face or full; fixed boxes always get "
        "full-size frames.",
    ),
    click.option(
        "--model",
        envvar="NBHR_MODEL",
        help="NBHRnet for --estimator nbhrnet: a registered name:version or an ONNX file"
        " (default: the bundled model nbhrnet:1, see model/MODEL_CARD.md).",
    ),
    click.option("--retry-failed", is_flag=True, help="Run failed segments again."),
]


def plan_options(fn: Callable) -> Callable:
    for option in reversed(_PLAN_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@DB_OPTION
@click.option(
    "--workers",
    "-j",
    default=2,
    show_default=True,
    type=click.IntRange(1, 256),
    envvar="NBHR_WORKERS",
    help="Local worker processes.",
)
@click.option(
    "--threads",
    "model_threads",
    default=None,
    type=click.IntRange(1, 256),
    envvar="NBHR_MODEL_THREADS",
    help="Threads per worker process for NBHRnet (default: cores / workers, at least 1; "
    "workers x threads should not exceed the cores). With more than one, a process decodes "
    "in one thread while NBHRnet runs in the others.",
)
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary, no progress bar.")
@friendly_errors
def run(
    directory: Path,
    db_url: str,
    workers: int,
    model_threads: int | None,
    as_json: bool,
    **plan_args: Any,
) -> None:
    """Find every video under DIRECTORY, estimate HR per window, store it in the database."""
    from db import queries
    from nbhr import analysis
    from scheduler.local import LocalPool, stop_on_sigterm

    model_threads = _threads_per_process(model_threads, workers)
    # A pool's processes start first, and import and build their face detectors while this
    # process registers and plans the archive; they end while it sums up the results.
    pool = LocalPool(
        db_url,
        workers,
        model_threads,
        [str(directory.resolve())],
        detector=plan_args["roi"] == "face",
        wait=False,
    )
    # `kill` or `timeout` stops the run as Ctrl-C does, pool processes included.
    with stop_on_sigterm(), pool:
        engine, reg, plan, outcomes = _run_job(directory, db_url, pool, as_json, plan_args)
    with session_scope(engine) as s:
        fails = queries.failures(s)
        subjects = analysis.results(s, level="subject")
    summary = {
        "job_id": plan.job_id,
        "videos": len(reg.all_ids),
        "new": len(reg.new),
        "segments_run": len(outcomes),
        "segments_failed": sum(o.state == "failed" for o in outcomes),
        "windows_written": sum(o.n_windows for o in outcomes),
        "failures": fails,
        "reference_problems": sorted(set(reg.reference_problems.values())),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for f in fails:
        click.echo(f"failed: {f['recording']}: {f['error']}")
    for problem in summary["reference_problems"]:
        click.echo(f"reference: {problem}")
    if subjects:
        click.echo("\nper-subject HR (bpm):")
        emit_rows(
            [
                {
                    k: r[k]
                    for k in (
                        "subject",
                        "estimator",
                        "n_recordings",
                        "hr_bpm",
                        "hr_min_bpm",
                        "hr_max_bpm",
                        "coverage",
                        "ref_hr_bpm",
                    )
                }
                for r in subjects
            ],
            "table",
        )


def _run_job(
    directory: Path, db_url: str, pool: LocalPool, as_json: bool, plan_args: dict[str, Any]
) -> tuple[Engine, Any, Any, list[Any]]:
    """`run`'s work on a started LocalPool: register and plan the archive, run the job's
    segments with a progress bar, mark the job finished. Returns (engine, Registration, Plan,
    the segments' outcomes)."""
    from scheduler.local import Terminated

    engine, reg, plan = register_and_plan(directory, db_url, "local", **plan_args)
    say = (lambda *a, **k: None) if as_json else click.echo
    say(
        f"{len(reg.all_ids)} videos: {len(reg.new)} new, {len(reg.known)} known, "
        f"{len(reg.failed)} unusable"
    )
    for skipped, same in reg.duplicates:
        say(f"skipped {skipped}: same content as {same}")
    outcomes = []
    if plan.job_id is None:
        say("nothing to do: every recording is already processed with these options")
    else:
        say(
            f"job {plan.job_id}: {len(plan.segment_ids)} segments of {plan.recordings} recordings "
            f"({plan.video_s / 60:.1f} min of video) on {pool.workers} process(es) x "
            f"{pool.model_threads} thread(s)"
        )
        stream = pool.run(plan.segment_ids)
        show = not as_json and sys.stderr.isatty()
        with (
            click.progressbar(
                stream,
                length=len(plan.segment_ids),
                label="segments",
                file=sys.stderr,
                show_pos=True,
                show_eta=True,
            )
            if show
            else contextlib.nullcontext(stream) as bar
        ):
            try:
                for outcome in bar:
                    outcomes.append(outcome)
            except KeyboardInterrupt as stop:
                # Ctrl-C, or SIGTERM (scheduler.local.stop_on_sigterm); the shell's codes.
                killed = isinstance(stop, Terminated)
                click.echo(
                    f"\n{'terminated' if killed else 'interrupted'} after {len(outcomes)} of "
                    f"{len(plan.segment_ids)} segments; run the same command again to resume",
                    err=True,
                )
                sys.exit(128 + (signal.SIGTERM if killed else signal.SIGINT))
        _finish_job(engine, plan.job_id)
    return engine, reg, plan, outcomes


def register_and_plan(
    directory: Path,
    db_url: str,
    executor: str,
    estimators: tuple[str, ...],
    roi: str,
    population: str,
    hr_range: str | None,
    manifest: Path | None,
    reference_table: Path | None,
    ppg_rate: float,
    window_s: float,
    hop_s: float,
    segment_s: float,
    model: str | None,
    nbhrnet_hop_s: float,
    nbhrnet_precision: str,
    decode: str,
    retry_failed: bool,
) -> tuple[Engine, Any, Any]:
    """What `run` and `enqueue` share: check the options, register every video under
    `directory`, and plan (and commit) a job of segments. Returns (engine, Registration, Plan)."""
    from scheduler.discover import ManifestError, load_manifest, register_archive
    from scheduler.plan import plan_job
    from scheduler.references import ReferenceFileError, load_reference_table
    from worker.options import NBHRNET

    if model:
        model_file: Path | None = _model_file(db_url, model)
    elif NBHRNET in estimators:
        model_file = _bundled_model(db_url)
    else:
        model_file = None
    opts = _options_from_cli(
        estimators,
        roi,
        population,
        hr_range,
        window_s,
        hop_s,
        segment_s,
        model_file,
        nbhrnet_hop_s,
        nbhrnet_precision,
        decode,
    )
    try:
        manifest = manifest or (directory / "manifest.csv")
        mapping = load_manifest(manifest) if manifest.is_file() else None
        table = load_reference_table(reference_table) if reference_table else None
    except (ManifestError, ReferenceFileError) as exc:
        raise click.UsageError(str(exc)) from None
    engine = open_db(db_url)
    with session_scope(engine) as s:
        reg = register_archive(s, directory, mapping, table, ppg_rate)
        plan = plan_job(s, str(directory.resolve()), reg.all_ids, opts, executor, retry_failed)
    return engine, reg, plan


def _bundled_model(db_url: str) -> Path:
    """The NBHRnet that ships with nbhr (model/data/nbhrnet.onnx), registered on first use as
    nbhrnet:1 with its card's metrics, and its int8 encoder as nbhrnet:BUNDLED_INT8_VERSION,
    so that their windows carry a name in `nbhr models list` and `nbhr evaluate --model
    nbhrnet:1`. A database that already holds a file, or another model under that name and
    version, is left as it is."""
    from db import queries
    from model.nbhrnet import (
        BUNDLED_CARD,
        BUNDLED_INT8_VERSION,
        BUNDLED_MODEL,
        BUNDLED_NAME,
        BUNDLED_VERSION,
        NBHRNetRunner,
        int8_encoder_path,
    )

    runner = NBHRNetRunner(BUNDLED_MODEL)
    card = json.loads(BUNDLED_CARD.read_text())
    versions = [(BUNDLED_VERSION, BUNDLED_MODEL, runner.sha256, card["metrics"])]
    if runner.int8_sha256 is not None:
        int8 = (int8_encoder_path(BUNDLED_MODEL), runner.int8_sha256, card.get("int8", {}))
        versions.append((BUNDLED_INT8_VERSION, *int8))
    with session_scope(open_db(db_url)) as s:
        for version, path, sha, metrics in versions:
            ref = f"{BUNDLED_NAME}:{version}"
            if queries.model_by_sha(s, sha) is None and queries.model_by_ref(s, ref) is None:
                spec = runner.describe()  # opens the whole graph: only when registering
                where = str(path.resolve())
                queries.register_model(
                    s, BUNDLED_NAME, version, where, sha, spec, card["trained_on"], metrics
                )
    return BUNDLED_MODEL


def _model_file(db_url: str, ref: str) -> Path:
    """An ONNX file, given as a path or as a registered name:version."""
    from db import queries

    if Path(ref).is_file():
        return Path(ref)
    with session_scope(open_db(db_url)) as s:
        model = queries.model_by_ref(s, ref)
        path = Path(model.path) if model is not None else None
    if path is None:
        raise click.UsageError(f"--model {ref!r} is neither a file nor a registered name:version")
    if path.name.endswith(".encoder.int8.onnx"):
        parent = path.name.removesuffix(".encoder.int8.onnx") + ".onnx"
        raise click.UsageError(
            f"model {ref} is the int8 encoder of {parent}: run that model with "
            "--nbhrnet-precision int8"
        )
    if not path.is_file():
        raise click.UsageError(f"model {ref} is registered at {path}, which no longer exists")
    return path


def _finish_job(engine: Engine, job_id: int) -> None:
    from db.models import Job, utcnow

    with session_scope(engine) as s:
        s.get_one(Job, job_id).finished_at = utcnow()


# --- distributed: enqueue / worker / requeue / beat --------------------------------------

BROKER_OPTION = click.option(
    "--broker",
    "broker_url",
    envvar="NBHR_BROKER_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="Celery broker URL (Redis).",
)
QUEUE_OPTION = click.option(
    "--queue",
    envvar="NBHR_QUEUE",
    default="nbhr",
    show_default=True,
    help="Queue the segment tasks go to.",
)


def _celery(broker_url: str, db_url: str | None = None, queue: str | None = None) -> Any:
    """The configured Celery app (worker.celery_app reads its settings from the environment,
    which worker processes inherit)."""
    os.environ["NBHR_BROKER_URL"] = broker_url
    if db_url:
        os.environ["NBHR_DB_URL"] = db_url
    if queue:
        os.environ["NBHR_QUEUE"] = queue
    from worker import celery_app

    celery_app.app.conf.broker_url = broker_url
    celery_app.app.conf.task_default_queue = celery_app.queue_name()
    return celery_app.app


def _check_broker(app: Any) -> None:
    """A one-line error when the broker cannot be reached."""
    from kombu.exceptions import OperationalError as BrokerError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except (BrokerError, OSError) as exc:
        raise click.ClickException(
            f"broker {mask_broker(app.conf.broker_url)} unreachable: {exc}"
        ) from None


def mask_broker(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return maybe_sanitize_url(url)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@DB_OPTION
@BROKER_OPTION
@QUEUE_OPTION
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@friendly_errors
def enqueue(
    directory: Path, db_url: str, broker_url: str, queue: str, as_json: bool, **plan_args: Any
) -> None:
    """Discover and plan DIRECTORY like `run`, commit, then publish one task per segment for
    `nbhr worker` processes; prints the job id."""
    from scheduler.queue import requeue

    app = _celery(broker_url, queue=queue)
    _check_broker(app)
    started = time.monotonic()
    _, reg, plan = register_and_plan(directory, db_url, "celery", **plan_args)
    # Segments still waiting from an earlier enqueue keep their message: no second one.
    published = requeue(plan.segment_ids, queue) if plan.job_id is not None else 0
    summary = {
        "job_id": plan.job_id,
        "videos": len(reg.all_ids),
        "new": len(reg.new),
        "segments_planned": len(plan.segment_ids),
        "segments_published": published,
        "queue": queue,
        "seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif plan.job_id is None:
        click.echo("nothing to do: every recording is already processed with these options")
    else:
        waiting = len(plan.segment_ids) - published
        click.echo(
            f"job {plan.job_id}: {len(plan.segment_ids)} segments of {plan.recordings} "
            f"recordings, {published} published on {queue}"
            + (f" ({waiting} still had a message)" if waiting else "")
            + f"; {len(reg.all_ids)} videos, {len(reg.new)} new; {summary['seconds']} s"
        )


@main.command()
@DB_OPTION
@BROKER_OPTION
@click.option(
    "--queues",
    "-Q",
    envvar="NBHR_QUEUE",
    default="nbhr",
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 512),
    default=None,
    envvar="NBHR_CONCURRENCY",
    help="Worker processes (default: one per core).",
)
@click.option(
    "--threads",
    "model_threads",
    type=click.IntRange(1, 256),
    default=None,
    help="onnxruntime threads per process (default: cores / processes, at least 1).",
)
@click.option(
    "--archive-root",
    "archive_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory the worker may read videos under (repeatable; env NBHR_ARCHIVE_ROOTS, "
    "os.pathsep-separated). Required: files elsewhere, symbolic links out included, are refused.",
)
@click.option("--hostname", "-n", default=None, help="Worker name (default nbhr@<host>).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@friendly_errors
def worker(
    db_url: str,
    broker_url: str,
    queues: str,
    concurrency: int | None,
    model_threads: int | None,
    archive_roots: tuple[str, ...],
    hostname: str | None,
    loglevel: str,
) -> None:
    """Run a Celery worker for segment tasks: late acknowledgement, requeue of tasks whose
    process died, one task per process at a time, processes x threads = cores."""
    cores = os.cpu_count() or 1
    concurrency = concurrency or cores
    threads = _threads_per_process(model_threads, concurrency)
    os.environ["NBHR_MODEL_THREADS"] = str(threads)
    # What this worker publishes (requeue and watch passes) goes to the first queue it consumes.
    os.environ["NBHR_QUEUE"] = queues.split(",")[0].strip()
    if archive_roots:
        os.environ["NBHR_ARCHIVE_ROOTS"] = os.pathsep.join(
            str(Path(r).resolve()) for r in archive_roots
        )
    from worker.celery_app import archive_roots as configured_roots

    try:
        configured_roots()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    open_db(db_url)  # reachable, and migrated, before any task runs
    app = _celery(broker_url, db_url)
    _check_broker(app)
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        f"--hostname={hostname or 'nbhr@%h'}",
        "--pool=prefork",
        "--without-mingle",
        "--without-gossip",
    ]
    app.worker_main(argv)


@main.command()
@DB_OPTION
@BROKER_OPTION
@QUEUE_OPTION
@click.option("--job", "job_id", type=int, default=None, help="Only this job's segments.")
@click.option("--json", "as_json", is_flag=True, help='{"requeued": n, "queue": name}.')
@friendly_errors
def requeue(db_url: str, broker_url: str, queue: str, job_id: int | None, as_json: bool) -> None:
    """Publish again every queued segment and every running one whose lease ran out (after a
    broker restart lost messages, or a worker died)."""
    from db import queries
    from scheduler.queue import requeue as publish_again

    app = _celery(broker_url, queue=queue)
    _check_broker(app)
    with session_scope(open_db(db_url)) as s:
        ids = queries.segments_to_requeue(s, job_id)
    n = publish_again(ids, queue)
    if as_json:
        click.echo(json.dumps({"requeued": n, "queue": queue}))
        return
    click.echo(f"requeued {n} segments on {queue}")


@main.command()
@DB_OPTION
@BROKER_OPTION
@QUEUE_OPTION
@click.option(
    "--every",
    "every_s",
    type=click.FloatRange(1, None),
    default=60.0,
    show_default=True,
    help="Seconds between requeue passes.",
)
@click.option(
    "--watch",
    "watch_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Archive root to scan for new recordings every --every seconds (repeatable); new ones"
    " are planned with the options of the root's latest job and queued.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@friendly_errors
def beat(
    db_url: str,
    broker_url: str,
    queue: str,
    every_s: float,
    watch_roots: tuple[str, ...],
    loglevel: str,
) -> None:
    """Run Celery beat: a requeue pass every --every seconds, and a scan of each --watch root,
    both run by the workers. Its schedule lives in memory (no schedule file, nothing pickled)."""
    from worker.celery_app import REQUEUE_TASK, WATCH_TASK

    open_db(db_url)
    app = _celery(broker_url, db_url, queue)
    _check_broker(app)
    # A pass that waited longer than the interval is dropped: the next one does its work.
    options = {"queue": queue, "expires": every_s}
    schedule: dict[str, dict] = {
        "requeue": {
            "task": REQUEUE_TASK,
            "schedule": every_s,
            "args": (queue,),
            "options": options,
        }
    }
    for root in watch_roots:
        resolved = str(Path(root).resolve())
        schedule[f"watch {resolved}"] = {
            "task": WATCH_TASK,
            "schedule": every_s,
            "args": (resolved, queue),
            "options": options,
        }
    app.conf.beat_schedule = schedule
    app.start(["beat", f"--loglevel={loglevel}", "--scheduler=celery.beat:Scheduler"])


# --- status / results / evaluate ----------------------------------------------------------


@main.command()
@DB_OPTION
@click.option(
    "--job", "job_id", type=int, default=None, help="Progress of this job (default: latest)."
)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def status(db_url: str, job_id: int | None, as_json: bool) -> None:
    """Recordings and segments by state, failures, windows written, processing speed, the
    job's progress and ETA, and per-worker throughput; safe to run while a job runs."""
    from db import queries
    from db.models import Recording, Segment

    engine = open_db(db_url)
    with session_scope(engine) as s:
        speed = queries.processing_speed(s)
        data = {
            "recordings": queries.state_counts(s, Recording.status),
            "segments": queries.state_counts(s, Segment.state),
            "windows": queries.window_count(s),
            "failures": queries.failures(s),
            "video_s_per_s": speed["video_s_per_s"],
            "last_job_video_s": speed["video_s"],
            "job": queries.job_progress(s, job_id),
            "workers": queries.worker_stats(s, job_id),
        }
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    rec, seg = data["recordings"], data["segments"]
    click.echo("recordings: " + ", ".join(f"{k} {v}" for k, v in rec.items()))
    click.echo("segments:   " + ", ".join(f"{k} {v}" for k, v in seg.items()))
    click.echo(f"windows:    {data['windows']}")
    if data["video_s_per_s"]:
        click.echo(
            f"speed:      {data['video_s_per_s']:.1f} video s per wall s (last job, "
            f"{data['last_job_video_s']:.0f} s of video)"
        )
    job = data["job"]
    if job is not None:
        n = job["segments"]
        total = sum(n.values())
        eta = job["eta_s"]
        click.echo(
            f"job {job['job_id']}:     {n['done'] + n['failed']}/{total} segments finished, "
            f"{job['video_s_left']:.0f} s of video left"
            + (f", {job['video_s_per_s']:.1f} video s per wall s" if job["video_s_per_s"] else "")
            + (f", ETA {_duration(eta)}" if eta else "")
            + f" ({job['hosts']} host(s))"
        )
    for w in data["workers"]:
        rate = w["video_s_per_busy_s"]
        click.echo(
            f"worker:     {w['worker']}: {w['segments']} segments, {w['video_s']:.0f} s of video"
            + (f", {rate:.1f} video s per busy s" if rate else "")
        )
    for f in data["failures"]:
        click.echo(f"failed:     {f['recording']}: {f['error']}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# Window filters shared by `results` and `evaluate` (nbhr.analysis.WindowFilter).
_FILTER_OPTIONS = [
    click.option(
        "--min-quality",
        type=float,
        help="Windows whose quality (SNR, dB) is below this are not usable estimates: they "
        "lower coverage instead of adding error.",
    ),
    click.option(
        "--face-only",
        is_flag=True,
        help="Leave out windows where the tracked face was lost (instead of counting them "
        "as misses).",
    ),
]


def filter_options(fn: Callable) -> Callable:
    for option in reversed(_FILTER_OPTIONS):
        fn = option(fn)
    return fn


def select_options(fn: Callable) -> Callable:
    """--subject, --recording and --estimator: which windows a reading command looks at."""
    for option in reversed(
        [
            click.option("--subject"),
            click.option("--recording", help="Path or file name of a recording."),
            click.option("--estimator"),
        ]
    ):
        fn = option(fn)
    return fn


def band_options(fn: Callable) -> Callable:
    """--population and --hr-range: which beat intervals are plausible (hrv, report)."""
    return POPULATION_OPTION(HR_RANGE_OPTION(fn))


def _band(population: str, hr_range: str | None) -> Any:
    from model.bands import Band

    try:
        return Band.parse(hr_range) if hr_range else Band.for_population(population)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _window_filter(min_quality: float | None, face_only: bool) -> Any:
    from nbhr.analysis import WindowFilter

    return WindowFilter(min_quality=min_quality, face_only=face_only)


@main.command()
@DB_OPTION
@select_options
@click.option(
    "--level",
    type=click.Choice(["window", "recording", "subject"]),
    default="window",
    show_default=True,
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
    help="parquet needs --out and the pyarrow package (pip install -e '.[parquet]').",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of the terminal.",
)
@filter_options
@friendly_errors
def results(
    db_url: str,
    subject: str | None,
    recording: str | None,
    estimator: str | None,
    level: str,
    fmt: str,
    out: Path | None,
    min_quality: float | None,
    face_only: bool,
) -> None:
    """HR estimates per window, recording or subject, with the reference where known."""
    from nbhr import analysis

    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet writes a file: give --out FILE.parquet")
    engine = open_db(db_url)
    filt = _window_filter(min_quality, face_only)
    with session_scope(engine) as s:
        rows = analysis.results(s, level, subject, recording, estimator, filt)
    if fmt == "parquet":
        _write_parquet(rows, out)
        click.echo(f"wrote {len(rows)} rows to {out}")
    elif out is not None:
        with out.open("w") as f, contextlib.redirect_stdout(f):
            emit_rows(rows, fmt)
        click.echo(f"wrote {len(rows)} rows to {out}", err=True)
    else:
        emit_rows(rows, fmt)


def _write_parquet(rows: list[dict[str, Any]], out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise click.UsageError(
            "--format parquet needs pyarrow: pip install -e '.[parquet]'"
        ) from None
    pq.write_table(pa.Table.from_pylist(rows), str(out))


@main.command()
@DB_OPTION
@select_options
@click.option(
    "--brady-bpm", default=100.0, show_default=True, help="Bradycardia: window HR below this."
)
@click.option(
    "--tachy-bpm", default=180.0, show_default=True, help="Tachycardia: window HR above this."
)
@click.option(
    "--min-duration-s", default=0.0, show_default=True, help="Shorter episodes are not listed."
)
@filter_options
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def rhythm(
    db_url: str,
    subject: str | None,
    recording: str | None,
    estimator: str | None,
    brady_bpm: float,
    tachy_bpm: float,
    min_duration_s: float,
    min_quality: float | None,
    face_only: bool,
    as_json: bool,
) -> None:
    """Bradycardia and tachycardia episodes per recording (neonatal limits by default), in the
    estimated HR and in the reference HR of the same windows, with their durations."""
    from nbhr import analysis

    if brady_bpm >= tachy_bpm:
        raise click.UsageError(f"--brady-bpm {brady_bpm:g} must be below --tachy-bpm {tachy_bpm:g}")
    engine = open_db(db_url)
    filt = _window_filter(min_quality, face_only)
    with session_scope(engine) as s:
        rows = analysis.rhythm(
            s, subject, recording, estimator, brady_bpm, tachy_bpm, min_duration_s, filt
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = []
    for r in rows:
        est, ref = r["estimate"], r["reference"]
        table.append(
            {
                "recording": r["recording"],
                "estimator": r["estimator"] + (f" ({r['model']})" if r["model"] else ""),
                "brady_n": sum(e["kind"] == "bradycardia" for e in est["episodes"]),
                "brady_s": est["bradycardia_s"],
                "tachy_n": sum(e["kind"] == "tachycardia" for e in est["episodes"]),
                "tachy_s": est["tachycardia_s"],
                "ref_brady_s": ref["bradycardia_s"],
                "ref_tachy_s": ref["tachycardia_s"],
            }
        )
    click.echo(f"episodes: HR < {brady_bpm:g} bpm (brady), > {tachy_bpm:g} bpm (tachy); seconds")
    emit_rows(table, "table")


@main.command()
@DB_OPTION
@select_options
@band_options
@click.option("--intervals", is_flag=True, help="With --json: the kept beat intervals themselves.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def hrv(
    db_url: str,
    subject: str | None,
    recording: str | None,
    estimator: str | None,
    population: str,
    hr_range: str | None,
    intervals: bool,
    as_json: bool,
) -> None:
    """Heart-rate variability per recording: beats found in each estimator's pulse signal
    (NBHRnet: its PPG output, as nbhrnet_ppg), cleaned intervals, SDNN and RMSSD, beside the
    same from the reference PPG over the same stretch of time."""
    from nbhr import analysis

    band = _band(population, hr_range)
    engine = open_db(db_url)
    with session_scope(engine) as s:
        rows = analysis.hrv(s, band, subject, recording, estimator, intervals)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = []
    for r in rows:
        est, ref = r["estimate"], r["reference"] or {}
        table.append(
            {
                "recording": r["recording"],
                "estimator": r["estimator"] + (f" ({r['model']})" if r["model"] else ""),
                "beats": est["n_beats"],
                "rejected": est["n_rejected"],
                "hr_bpm": est["hr_bpm"],
                "sdnn_ms": est["sdnn_ms"],
                "rmssd_ms": est["rmssd_ms"],
                "ref_hr_bpm": ref.get("hr_bpm"),
                "ref_sdnn_ms": ref.get("sdnn_ms"),
                "ref_rmssd_ms": ref.get("rmssd_ms"),
            }
        )
    if not table:
        click.echo("no beats in the database yet: run `nbhr run DIR` first")
        return
    click.echo(f"beat intervals kept within {band} bpm and 20 % of their neighbours' median")
    emit_rows(table, "table")


@main.command()
@DB_OPTION
@click.argument("recording")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG file to write.",
)
@click.option("--estimator", "estimators", multiple=True, help="Repeat for several (default: all).")
@click.option(
    "--min-quality",
    type=float,
    help="Windows below this quality (SNR, dB) are drawn as hollow grey markers (default: "
    "those the recording's aggregate HR leaves out).",
)
@click.option("--json", "as_json", is_flag=True, help='{"out": file, "recording": ...}.')
@friendly_errors
def plot(
    db_url: str,
    recording: str,
    out: Path,
    estimators: tuple[str, ...],
    min_quality: float | None,
    as_json: bool,
) -> None:
    """One recording's estimated HR over time against the reference HR (and SpO2), with
    low-quality windows and lost-face stretches marked. RECORDING: its path or file name."""
    from nbhr import plots

    engine = open_db(db_url)
    with session_scope(engine) as s:
        try:
            fig = plots.recording_figure(s, recording, estimators, min_quality)
        except plots.PlotError as exc:
            raise click.UsageError(str(exc)) from None
    plots.save(fig, out)
    if as_json:
        click.echo(json.dumps({"out": str(out), "recording": recording}))
        return
    click.echo(f"wrote {out}")


@main.command()
@DB_OPTION
@click.option("--subject", help="Only this subject's recordings.")
@click.option(
    "--estimator", "estimators", multiple=True, help="Repeat for several (default: all present)."
)
@filter_options
@click.option(
    "--level",
    type=click.Choice(["window", "recording", "subject"]),
    default="window",
    show_default=True,
    help="Points of the scatter and Bland-Altman plots (the tables show every level).",
)
@click.option(
    "--max-plots",
    type=click.IntRange(min=0),
    help="Draw at most this many recordings over time (default: every one; a figure is about "
    "25 kB); the rest are still listed with their tables.",
)
@band_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="What was written, as one JSON object.")
@friendly_errors
def report(
    db_url: str,
    subject: str | None,
    estimators: tuple[str, ...],
    min_quality: float | None,
    face_only: bool,
    level: str,
    max_plots: int | None,
    population: str,
    hr_range: str | None,
    out: Path,
    as_json: bool,
) -> None:
    """One self-contained HTML report: overview and failures, estimators and model versions
    side by side, a per-subject table, scatter and Bland-Altman plots, what quality floors buy,
    and every recording's HR over time against the reference HR and SpO2."""
    from nbhr import report as reporting

    band = _band(population, hr_range)
    engine = open_db(db_url)
    filt = _window_filter(min_quality, face_only)
    with session_scope(engine) as s:
        built = reporting.build_report(s, subject, estimators, filt, level, max_plots, band)
    reporting.write_report(built, out)
    if as_json:
        click.echo(json.dumps({"out": str(out)} | built.summary))
        return
    click.echo(
        f"wrote {out}: {built.summary['recordings']} recordings, "
        f"{built.summary['subjects']} subjects, {len(built.summary['estimators'])} estimators"
    )


METRIC_LABELS = (
    ("n", "n"),
    ("coverage", "coverage"),
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("mape", "MAPE%"),
    ("pearson_r", "r"),
    ("ba_bias", "bias"),
    ("ba_loa_low", "LoA-"),
    ("ba_loa_high", "LoA+"),
    ("within_5bpm", "<=5bpm"),
    ("within_10pct", "<=10%"),
)


@main.command()
@DB_OPTION
@click.option(
    "--estimator",
    "estimators",
    multiple=True,
    help="Estimator to evaluate; repeat for several (default: every one present).",
)
@click.option(
    "--level",
    type=click.Choice(["window", "recording", "subject"]),
    default="recording",
    show_default=True,
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object for one estimator, a JSON array for several.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Model version (name:version or key) to evaluate; repeat to compare versions.",
)
@filter_options
@click.option(
    "--quality-sweep",
    is_flag=True,
    help="Coverage against error as the quality floor rises (none, then the 0/25/50/75/90 % "
    "quantiles of each estimator's window qualities).",
)
@friendly_errors
def evaluate(
    db_url: str,
    estimators: tuple[str, ...],
    level: str,
    models: tuple[str, ...],
    as_json: bool,
    min_quality: float | None,
    face_only: bool,
    quality_sweep: bool,
) -> None:
    """Agreement with the reference vitals: MAE, RMSE, MAPE, r, Bland-Altman, hit rates."""
    from db import queries
    from nbhr import analysis

    engine = open_db(db_url)
    filt = _window_filter(min_quality, face_only)
    with session_scope(engine) as s:
        keys = [_model_key(s, ref) for ref in models]
        pairs = [
            (e, k)
            for e, k in queries.estimators_present(s)
            if (not estimators or e in estimators) and (not keys or k in keys)
        ]
        if quality_sweep:
            sweeps = [
                {"estimator": e, "model": analysis.model_label(s, k), "level": level}
                | {"sweep": analysis.quality_sweep(s, e, level, k, face_only)}
                for e, k in pairs
            ]
        else:
            evals = [analysis.evaluate(s, e, level, k, filt) for e, k in pairs]
    if quality_sweep:
        _print_sweeps(sweeps, as_json)
        return
    if as_json:
        click.echo(json.dumps(evals[0] if len(evals) == 1 else evals, indent=1))
        return
    if not evals:
        click.echo("no windows in the database yet: run `nbhr run DIR` first")
        return
    click.echo(f"agreement with reference HR, {level} level (HR in bpm, shares 0-1):")
    emit_rows(
        [
            {"estimator": e["estimator"], "model": e["model"]}
            | {lab: e["overall"][k] for k, lab in METRIC_LABELS}
            for e in evals
        ],
        "table",
    )


def _print_sweeps(sweeps: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(sweeps, indent=1))
        return
    for sweep in sweeps:
        model = f" ({sweep['model']})" if sweep["model"] else ""
        click.echo(f"{sweep['estimator']}{model}, {sweep['level']} level: quality floor (dB)")
        emit_rows(sweep["sweep"], "table")


def _model_key(session: Any, ref: str) -> str:
    """The windows' model key for a registered 'name:version' or a key itself."""
    from db import queries

    model = queries.model_by_ref(session, ref)
    if model is not None:
        return model.key
    if ref in queries.model_labels(session) or all(c in "0123456789abcdef" for c in ref):
        return ref
    raise click.UsageError(f"no registered model {ref!r} (see `nbhr models list`)")


# --- models --------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """The NBHRnet model registry: ONNX files by name and version."""


@models.command("list")
@DB_OPTION
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models_list(db_url: str, as_json: bool) -> None:
    """Registered models, oldest first per name."""
    from db import queries

    engine = open_db(db_url)
    with session_scope(engine) as s:
        rows = [
            {
                "name": m.name,
                "version": m.version,
                "key": m.key,
                "sha256": m.sha256,
                "path": m.path,
                "trained_on": m.trained_on,
                "input_spec": m.input_spec,
                "metrics": m.metrics,
            }
            for m in queries.list_models(s)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    emit_rows(
        [{k: r[k] for k in ("name", "version", "key", "trained_on", "path")} for r in rows],
        "table",
    )


@models.command("register")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--version", "version", required=True)
@click.option("--trained-on", help="What the model was trained on (free text).")
@click.option(
    "--metrics",
    "metrics_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file of the model's validation metrics.",
)
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="The registered entry as JSON.")
@friendly_errors
def models_register(
    file: Path,
    name: str,
    version: str,
    trained_on: str | None,
    metrics_file: Path | None,
    db_url: str,
    as_json: bool,
) -> None:
    """Register an exported NBHRnet ONNX FILE as NAME:VERSION (stores its SHA-256 and spec)."""
    from db import queries
    from model.nbhrnet import NBHRNetRunner

    runner = NBHRNetRunner(file)
    try:
        spec = runner.describe()
        metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    engine = open_db(db_url)
    try:
        with session_scope(engine) as s:
            m = queries.register_model(
                s, name, version, str(file.resolve()), runner.sha256, spec, trained_on, metrics
            )
            key = m.key
    except ValueError as exc:
        raise click.ClickException(f"{name}:{version}: {exc}") from None
    if as_json:
        entry = {"name": name, "version": version, "key": key, "sha256": runner.sha256}
        click.echo(json.dumps(entry | {"path": str(file.resolve())}))
        return
    click.echo(f"registered {name}:{version} (key {key})")


# --- db ------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@DB_OPTION
@friendly_errors
def db_upgrade(db_url: str) -> None:
    """Apply Alembic migrations up to the newest schema."""
    from db.engine import mask_url

    engine = open_db(db_url, migrate=False)
    head = upgrade(engine)
    click.echo(f"{mask_url(db_url)} is at schema revision {head}")


# --- training (torch is imported only when these run) ------------------------------------

main.add_command(train_command)
main.add_command(export_onnx_command)
main.add_command(distill_command)
main.add_command(quantize_command)


# --- bench ---------------------------------------------------------------------------------


@main.command()
@click.argument(
    "directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--workers", "-j", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An NBHRnet ONNX file: also time it per window and run --estimator nbhrnet end to end.",
)
@click.option(
    "--max-video-min",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Refuse a DIR holding more video than this many minutes (default 15).",
)
@click.option("--json", "as_json", is_flag=True)
def bench(
    directory: Path | None,
    workers: int,
    model: Path | None,
    max_video_min: float | None,
    as_json: bool,
) -> None:
    """Measure decode, face detection, estimators and end-to-end speed (default: on a fresh
    small demo archive); with --model, NBHRnet's onnxruntime cost and its end-to-end speed.
    DIR should be a sample (the README's figures come from 6.5 minutes of video): the bench
    reads it 7 times over, more than 20 with --model, in several layouts and settings."""
    from nbhr.bench import BENCH_MAX_VIDEO_MIN, archive_video_min, run_bench

    if directory is not None:
        limit = BENCH_MAX_VIDEO_MIN if max_video_min is None else max_video_min
        minutes = archive_video_min(directory)
        if minutes > limit:
            raise click.ClickException(
                f"{directory} holds {minutes:.1f} min of video, more than --max-video-min "
                f"{limit:g}: the bench reads its archive 7 times over (more than 20 with "
                "--model) and holds each MJPEG video's packets in memory. Bench a folder of a "
                "few short recordings (symbolic links will do), or raise --max-video-min."
            )
    result = run_bench(directory, workers, model)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    echo_bench(result)


def _placed(overhead: dict[str, Any]) -> str:
    """What decoding, tracking and cropping alone would make of the pipeline's ratio, and the
    entropy floors', where the bench measured them (nbhr.bench._with_floor)."""
    parts = [
        f"{label} {overhead[key]:.2f}x"
        for key, label in (
            ("ratio_tracking", "decode+track+crop alone"),
            ("ratio_floor_entropy", "entropy floor"),
            ("ratio_floor_face_rows", "the face's rows alone"),
        )
        if key in overhead
    ]
    return f" ({', '.join(parts)})" if parts else ""


def echo_bench(result: dict[str, Any]) -> None:
    """`nbhr bench`'s result (run_bench) as text, one stage a line."""
    d, f, e2e = result["decode"], result["faces"], result["end_to_end"]
    click.echo(
        f"decode        {d['frames_per_cpu_s']:.0f} frames per CPU s "
        f"({d['resolution']} {d['codec']}, {d['ms_per_frame']:.2f} ms/frame)"
    )
    click.echo(
        f"face detect   {f['ms_per_detection']:.1f} ms per detection "
        f"({f['ms_per_video_s_at_2hz']:.0f} ms per video s at 2 Hz), "
        f"{f.get('ms_per_detection_near_last_box', float('nan')):.1f} ms near the last box"
    )
    if "ms_per_failed_full_cascade" in f:
        click.echo(f"no face       {f['ms_per_failed_full_cascade']:.0f} ms per full retry cascade")
    for name, est in result["estimators"].items():
        click.echo(f"{name:<13} {est['ms_per_window']:.2f} ms per {est['window_s']:g}-s window")
    one, pool = e2e["one_process"], e2e["pool"]
    click.echo(
        f"end to end    {one['video_s_per_cpu_s']:.1f} video s per CPU s (1 process); "
        f"{pool['video_s_per_wall_s']:.1f} video s per wall s on {pool['workers']} processes"
    )
    pos = result["pos_per_core"]
    click.echo(
        f"pos per core  {pos['full_decode']['video_s_per_cpu_s']:.1f} video s per CPU s decoding "
        f"full-size frames, {pos['reduced_decode']['video_s_per_cpu_s']:.1f} reduced "
        f"({pos['speedup']:.2f}x)"
    )
    for label, fmt in result.get("formats", {}).items():
        line = (
            f"{label:<13} {fmt['mb_per_frame']:.2f} MB a frame, decode "
            f"{fmt['decode_ms_per_frame_full']:.2f} ms/frame full size, "
            f"{fmt['decode_ms_per_frame_as_run']:.2f} as run; pos "
            f"{fmt['pos_video_s_per_cpu_s']:.1f} video s per CPU s"
        )
        track = fmt.get("tracking")
        if track:
            line += (
                f"; decode+track+crop {track['ms_per_frame_whole']:.2f} ms/frame whole, "
                f"{track['ms_per_frame_parts']:.2f} in parts"
            )
        if "pipeline_overhead" in fmt:
            overhead = fmt["pipeline_overhead"]
            line += f"; nbhrnet pipeline {overhead['ratio']:.2f}x inference" + _placed(overhead)
        click.echo(line)
    net = result.get("nbhrnet")
    if net:
        for key in ("threads1_batch1", "threads1_batch8", "threads2_batch1", "threads2_batch8"):
            t = net[key]
            click.echo(
                f"nbhrnet {key:<16} {t['wall_s_per_window']:.3f} s wall, "
                f"{t['cpu_s_per_window']:.3f} s CPU per 60-frame window"
            )
        e2e = net["end_to_end"]
        one, pool, wide = e2e["one_process"], e2e["pool"], e2e["one_process_threads"]
        click.echo(
            f"nbhrnet e2e   {one['video_s_per_wall_s']:.2f} video s per wall s on 1 process x 1 "
            f"thread, {pool['video_s_per_wall_s']:.2f} on {pool['workers']} x 1 "
            f"({e2e['pool_speedup']:.2f}x; rounds "
            f"{', '.join(f'{r:.2f}x' for r in e2e.get('pool_speedup_rounds', []))}), "
            f"{wide['video_s_per_wall_s']:.2f} on 1 x {wide['threads']}"
        )
        archive = net.get("nbhr_archive")
        if archive:
            click.echo(
                f"NBHR archive  {archive['video_h']:g} h of video in "
                f"{archive['wall_h_one_machine']:.2f} h on this machine "
                f"({archive['workers']} x {archive['threads']}, hop 2 s); "
                f"{archive['machines_for_one_hour']} such machine(s) for at most 1 h"
            )
        alone = e2e.get("inference_alone")
        if alone:
            click.echo(
                f"nbhrnet alone {alone['speedup']:.2f}x on {alone['pool']['workers']} processes "
                f"at once against 1 (no decoding, no start-up), {alone['cpu_ratio']:.3f}x the "
                "CPU per window"
            )
        for key, batch in net.get("encoder_batch", {}).items():
            click.echo(
                f"nbhrnet encoder at {key.removeprefix('frames_')} frames a call: "
                f"{batch['cpu_ms_per_frame_one_process']:.3f} CPU ms a frame in 1 process, "
                f"{batch['cpu_ms_per_frame_pool']:.3f} in each of the pool's at once "
                f"({batch['speedup']:.2f}x)"
            )
        precision = net.get("precision", {})
        for key in ("whole_graph_fp32", "encoder_fp32_and_head", "encoder_int8_and_head"):
            if key in precision:
                t = precision[key]
                click.echo(
                    f"nbhrnet {key:<22} {t['cpu_s_per_window']:.3f} CPU s per window "
                    f"({t['speedup_vs_whole_graph_fp32']:.2f}x), convolutions at "
                    f"{t['conv_g_per_s']:.0f} G/s"
                )
        peak = precision.get("core_peak_g_per_s", {})
        if peak.get("fp32"):
            click.echo(
                f"core peak     {peak['fp32']:.0f} GFLOP/s fp32, {peak['int8']:.0f} GOP/s int8 "
                "(onnxruntime matrix products, 1 thread)"
            )
        track = net.get("tracking")
        if track:
            click.echo(
                f"decode+track  {track['ms_per_frame_whole']:.2f} CPU ms a frame reading whole "
                f"frames, {track['ms_per_frame_parts']:.2f} reading the face's part "
                f"({track['speedup']:.2f}x)"
            )
        overhead = net.get("pipeline_overhead")
        if overhead:
            click.echo(
                f"nbhrnet pipeline {overhead['ratio']:.2f}x the CPU time inside onnxruntime "
                f"({overhead['end_to_end_cpu_s']:.1f} against {overhead['inference_cpu_s']:.1f} s)"
                + _placed(overhead)
            )
