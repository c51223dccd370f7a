"""One full-size NBHRnet training step (batch 4 windows of 60 x 128 x 128, fused loss, RMSprop)
timed side by side in float32, bfloat16 autocast, and bfloat16 with channels-last
convolutions (what `nbhr train --precision auto` uses on a CPU with AVX512-BF16 or AMX).

    python scripts/bench_train_step.py [--steps 2] [--batch 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from training.nbhrnet import NBHRNet
from training.train import fusion_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 60, 3, 128, 128)
    ppg, hr = torch.rand(args.batch, 60), torch.full((args.batch,), 140.0)
    result = {"threads": torch.get_num_threads(), "batch": args.batch}
    for name, bf16, channels_last in (
        ("fp32", False, False),
        ("bf16", True, False),
        ("bf16_channels_last", True, True),
    ):
        model = NBHRNet().train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt, bf16=bf16) -> None:
            opt.zero_grad()
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                p, h = model(x)
            fusion_loss(p.float(), ppg, h.float(), hr).backward()
            opt.step()

        step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        result[f"{name}_s_per_step"] = round((time.perf_counter() - t0) / args.steps, 3)
    result["bf16_channels_last_speedup"] = round(
        result["fp32_s_per_step"] / result["bf16_channels_last_s_per_step"], 2
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
