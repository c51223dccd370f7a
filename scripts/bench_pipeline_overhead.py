"""NBHRnet's pipeline overhead alone (the `pipeline_overhead` entries of `nbhr bench`), with
MJPEG decoded at reduced size (the default) and at full size, alternating, side by side.

    python scripts/bench_pipeline_overhead.py ARCHIVE [--model FILE.onnx] [--repeats 2]

Each entry splits one in-process run of `--estimator nbhrnet` over ARCHIVE's face videos into
CPU seconds inside onnxruntime and the rest (ratio = all / inside).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from nbhr.bench import _split_by_face, bench_pipeline_overhead, nbhrnet_run_options
from scheduler.discover import find_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--model", type=Path, default=Path("model/data/nbhrnet.onnx"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = args.model.resolve()
    reduced = nbhrnet_run_options(model)
    with_face, _ = _split_by_face(sorted(find_videos(args.archive)))
    for _ in range(args.repeats):
        for decode, opts in (
            ("reduced", reduced),
            ("full", replace(reduced, decode_min_width=None)),
        ):
            entry = bench_pipeline_overhead(with_face, model, opts)
            print(json.dumps({"decode": decode, "precision": opts.nbhrnet_precision} | entry))


if __name__ == "__main__":
    main()
