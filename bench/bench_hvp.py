"""Cost of one Hessian-vector product (method.md E6) relative to one gradient, per HVP mode.

    .venv/bin/python bench/bench_hvp.py [--samples 64] [--batch-size 32] [--repeats 3]
                                        [--models tinynet,resnet18] [--threads 2]
                                        [--peak-memory 8,24]

For each model (TinyNet and ResNet-18 ``small_input`` with 1 channel on 28×28, models.md) and the
same random batch, it times

- ``gradient``: ``gif.hvp.mean_loss_grad`` (the baseline, ratio 1.0);
- ``jvp``: forward-over-reverse HVP;
- ``double_backward``: HVP through the retained gradient graph (its one-off graph build is
  reported separately as ``setup``, with the graph's size);

With ``--peak-memory``, it also measures (in fresh processes, RSS growth) the peak memory of one
ResNet-18 ``jvp`` HVP per micro-batch size and extrapolates it to the default micro-batch 256.

It prints wall seconds per product (median of ``--repeats``) and the ratio to the gradient in
wall and in CPU time (the steadier one on a shared machine), all measured in the same run. Only
the ratios are meaningful across machines.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch

from gif.hvp import make_hvp, mean_loss_grad
from gif.registry import build_model
from gif.spec import ModelSpec

SPECS = {
    "tinynet": ModelSpec(arch="tinynet", arch_kwargs={"in_channels": 1, "num_classes": 10}),
    "resnet18": ModelSpec(
        arch="resnet18", arch_kwargs={"in_channels": 1, "num_classes": 10, "small_input": True}
    ),
}


def median_seconds(function, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``function()`` over ``repeats`` runs, after a warm-up run.

    CPU time (all threads of this process) is the steadier cost measure on a shared machine.
    """
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def bench_model(name: str, *, samples: int, batch_size: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(SPECS[name]).eval()
    x = torch.randn(samples, 1, 28, 28)
    y = torch.randint(0, 10, (samples,))
    p = sum(param.numel() for param in model.parameters())
    vector = torch.randn(p)
    rows = []
    gradient, gradient_cpu = median_seconds(
        lambda: mean_loss_grad(model, x, y, batch_size=batch_size), repeats
    )
    rows.append(
        {
            "model": name,
            "p": p,
            "what": "gradient",
            "seconds": gradient,
            "cpu": gradient_cpu,
            "setup": 0.0,
        }
    )
    for mode in ("jvp", "double_backward"):
        start = time.perf_counter()
        hvp = make_hvp(model, x, y, batch_size=batch_size, mode=mode)
        setup = time.perf_counter() - start
        seconds, cpu = median_seconds(lambda hvp=hvp: hvp(vector), repeats)
        graph_mb = (hvp.graph_bytes or 0) / 2**20
        rows.append(
            {
                "model": name,
                "p": p,
                "what": f"hvp {mode}",
                "seconds": seconds,
                "cpu": cpu,
                "setup": setup,
                "graph_mb": graph_mb,
            }
        )
        del hvp
    auto = make_hvp(model, x, y, batch_size=batch_size, mode="auto")
    rows.append(
        {"model": name, "p": p, "what": f"auto picks {auto.mode}", "seconds": None, "setup": None}
    )
    for row in rows:
        row["ratio"] = None if row["seconds"] is None else row["seconds"] / gradient
        row["cpu_ratio"] = None if row["seconds"] is None else row["cpu"] / gradient_cpu
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| model | p | measured | wall s / product | × gradient (wall) | × gradient (CPU) "
        "| one-off setup s | retained graph MB |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.3f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cpu_ratio = "" if row["cpu_ratio"] is None else f"{row['cpu_ratio']:.2f}"
        setup = "" if not row.get("setup") else f"{row['setup']:.3f}"
        graph = f"{row['graph_mb']:.0f}" if row.get("graph_mb") else ""
        print(
            f"| {row['model']} | {row['p']:,} | {row['what']} | {seconds} | {ratio} | "
            f"{cpu_ratio} | {setup} | {graph} |"
        )


def peak_memory_child(mode: str, samples: int) -> None:
    """(Child process.) RSS growth of one ResNet-18 HVP on one micro-batch of ``samples``."""
    model = build_model(SPECS["resnet18"]).eval()
    x = torch.randn(samples, 1, 28, 28)
    y = torch.randint(0, 10, (samples,))
    hvp = make_hvp(model, x, y, batch_size=samples, mode=mode)
    vector = torch.randn(hvp.size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hvp(vector)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)  # ru_maxrss is in KiB on Linux


def peak_memory_table(sizes: list[int], threads: int) -> None:
    """Peak extra memory of a jvp HVP (memory-bounded mode) per micro-batch size, in fresh
    processes, and the per-sample slope extrapolated to the default micro-batch of 256."""
    measured = {}
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--threads", str(threads), "--peak-child", f"jvp,{size}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        measured[size] = float(out)
    print("| ResNet-18 jvp HVP, micro-batch | peak extra RSS MB |")
    print("|---:|---:|")
    for size, megabytes in measured.items():
        print(f"| {size} | {megabytes:.0f} |")
    if len(measured) >= 2:
        (small, low), (large, high) = min(measured.items()), max(measured.items())
        slope = (high - low) / (large - small)
        print(f"| 256 (extrapolated, {slope:.1f} MB/sample) | {low + slope * (256 - small):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tinynet,resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--peak-memory", default="", help="micro-batch sizes, e.g. 8,24: ResNet-18 jvp peak RSS"
    )
    parser.add_argument("--peak-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_child:
        mode, size = args.peak_child.split(",")
        peak_memory_child(mode, int(size))
        return
    rows = []
    for name in args.models.split(","):
        rows += bench_model(
            name, samples=args.samples, batch_size=args.batch_size, repeats=args.repeats
        )
    print(
        f"samples={args.samples} batch_size={args.batch_size} repeats={args.repeats} "
        f"threads={args.threads} device=cpu torch={torch.__version__}"
    )
    print_table(rows)
    if args.peak_memory:
        print()
        peak_memory_table([int(size) for size in args.peak_memory.split(",")], args.threads)


if __name__ == "__main__":
    main()
