"""A GIF edit against retraining from scratch: class removal on TinyNet / Fashion-MNIST.

    .venv/bin/python bench/bench_edit_vs_retrain.py [--train-size 20000] [--epochs 4]

1. train TinyNet from scratch on a seeded subset of ``builtin:fashion-mnist:train`` (timed;
   the weights and that time are cached under ``.cache/bench_edit/`` for reruns);
2. remove class 8 ("Bag") with ``gif.edit.run_edit`` (GIF, top-k outputs at each ``--ratios``,
   LSQR, automatic step on the validation split of the training data);
3. retrain from scratch on the data without the class, with the same recipe (the reference);
4. print a table: wall seconds, speed-up of the edit over retraining (same run, same machine),
   forget accuracy (the removed class's training points), test accuracy on the remaining classes
   and on the removed class.

Timings are wall-clock and process CPU time (one thread) on whatever machine runs it; only the
ratios within one run are meaningful. The edit's time includes everything ``run_edit`` does,
its own before/after evaluation included (``timings`` in the JSON output splits it by phase).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gif.checkpoint import read_state_dict, write_safetensors
from gif.data import ArrayDataset, load_dataset, prepare_inputs
from gif.edit import LoadedModel, run_edit
from gif.metrics import evaluate
from gif.registry import build_model
from gif.request import EditRequest
from gif.spec import ModelSpec

SPEC = ModelSpec(
    arch="tinynet",
    arch_kwargs={"in_channels": 1, "num_classes": 10},
    input={"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]},
)


def subset(dataset: ArrayDataset, size: int, seed: int) -> ArrayDataset:
    """A seeded random subset (the whole set when ``size`` is larger)."""
    if size >= dataset.num_samples:
        return dataset
    idx = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(dataset.num_samples, size,
                                                                     replace=False)))
    return ArrayDataset(x=dataset.x[idx], y=dataset.y[idx], name=f"{dataset.name}[{size}]")


def train_from_scratch(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> dict:
    """The recipe both the original model and the retrained reference use: Adam, batch 128."""
    torch.manual_seed(seed)
    model = build_model(SPEC).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(128):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in model.eval().state_dict().items()}


class Clock:
    """Wall and CPU seconds of a block. On a shared machine the CPU time of this (1-thread)
    process is the steadier measure; both are reported."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = {"wall": time.perf_counter() - self.wall,
                        "cpu": time.process_time() - self.cpu}


def cached_original(x: torch.Tensor, y: torch.Tensor, args) -> tuple[dict, dict]:
    """The original model and the seconds its training took (trained once, then cached)."""
    stem = Path(".cache/bench_edit") / f"tinynet_n{args.train_size}_e{args.epochs}_s{args.seed}"
    weights, info = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.exists() and info.exists():
        return read_state_dict(weights), json.loads(info.read_text())["seconds"]
    with Clock() as clock:
        state = train_from_scratch(x, y, epochs=args.epochs, seed=args.seed)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, weights)
    info.write_text(json.dumps({"seconds": clock.seconds, "threads": args.threads}))
    return state, clock.seconds


def measure(state: dict, sets: dict, removed: int) -> dict:
    model = build_model(SPEC)
    model.load_state_dict(state)
    forget = evaluate(model, *sets["forget"], batch_size=1024, num_classes=10)
    test = evaluate(model, *sets["test"], batch_size=1024, num_classes=10, removed_class=removed)
    return {"forget": forget["accuracy"], "test_remaining": test["accuracy_remaining_classes"],
            "test_removed": test["accuracy_removed_class"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--test-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--remove-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared machine's cores spin-wait otherwise)")
    parser.add_argument("--hessian-samples", type=int, default=256)
    parser.add_argument("--edit-samples", type=int, default=256)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3],
                        help="selection ratios (one GIF edit each)")
    parser.add_argument("--validation-fraction", type=float, default=0.02)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = subset(load_dataset("builtin:fashion-mnist:train"), args.train_size, args.seed)
    test = subset(load_dataset("builtin:fashion-mnist:test"), args.test_size, args.seed)
    x = prepare_inputs(train.x, SPEC.input, False)
    y = train.y.long()
    keep = y != args.remove_class
    sets = {"forget": (x[~keep], y[~keep]),
            "test": (prepare_inputs(test.x, SPEC.input, False), test.y.long())}

    original, train_seconds = cached_original(x, y, args)

    edits = []
    for ratio in args.ratios:
        request = EditRequest.model_validate({
            "edit": {"kind": "remove_class", "class": args.remove_class},
            "method": "gif",
            "selection": {"criterion": "topk_outputs", "ratio": ratio},
            "solver": {"algorithm": "lsqr", "max_iter": args.max_iter,
                       "hessian_samples": args.hessian_samples,
                       "edit_samples": args.edit_samples, "batch_size": 256},
            "step": {"mode": "auto", "validation_fraction": args.validation_fraction},
            "seed": args.seed,
        })
        with Clock() as clock:
            outcome = run_edit(request, LoadedModel(SPEC, original), train, {})
        edits.append((ratio, clock.seconds, outcome))

    with Clock() as clock:
        retrained = train_from_scratch(x[keep], y[keep], epochs=args.epochs, seed=args.seed)
    retrain_seconds = clock.seconds

    rows = [{"model": "original (trained from scratch)", "seconds": train_seconds,
             **measure(original, sets, args.remove_class)}]
    for ratio, seconds, outcome in edits:
        result = outcome.result
        rows.append({
            "model": f"GIF edit, ratio {ratio:g} (α={result['scale']:.3g}, "
                     f"{result['solver']['iterations']} it, {result['solver']['hvps']} HVPs)",
            "seconds": seconds, "timings": result["timings"],
            **measure(outcome.state_dict, sets, args.remove_class)})
    rows.append({"model": "retrained without the class (reference)", "seconds": retrain_seconds,
                 **measure(retrained, sets, args.remove_class)})

    print(f"TinyNet / Fashion-MNIST: {args.train_size} train, {args.test_size} test, "
          f"{args.epochs} epochs, remove class {args.remove_class}, "
          f"{torch.get_num_threads()} thread(s); GIF: top-k outputs, LSQR max_iter "
          f"{args.max_iter}, {args.hessian_samples} Hessian samples, {args.edit_samples} edit "
          f"samples, step on {args.validation_fraction:g} of the retained training data")
    print()
    print("| model | wall s | CPU s | speed-up vs retraining (wall / CPU) | forget acc (train) "
          "| test acc (remaining classes) | test acc (removed class) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        wall, cpu = row["seconds"]["wall"], row["seconds"]["cpu"]
        speedup = (f"{retrain_seconds['wall'] / wall:.1f}× / "
                   f"{retrain_seconds['cpu'] / cpu:.1f}×")
        print(f"| {row['model']} | {wall:.1f} | {cpu:.1f} | {speedup} | {row['forget']:.3f} "
              f"| {row['test_remaining']:.3f} | {row['test_removed']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
