"""Every edit method against retraining, on the three unlearning tasks (issue 9, item 6).

    .venv/bin/python bench/bench_unlearning.py --scale small  [--out docs/results]
    .venv/bin/python bench/bench_unlearning.py --scale medium [--out docs/results]
    .venv/bin/python bench/bench_unlearning.py --scale full   [--out docs/results]
    .venv/bin/python bench/bench_unlearning.py --scale full-tinynet  # full, TinyNet, seed 0

Rows (one run, same model, data and metric code for every row):

- ``gif``, ``fif``, ``pif`` at the **default request**: the request holds only ``edit``, so it
  takes whatever defaults ``gif.request`` holds at the commit the run used (the page records
  it and the normalised request);
- each docs/method.md E10 method (``finetune``, ``gradient_ascent``, ``random_labels``, ``salun``,
  ``l1_sparse``) at 1 epoch (``training: {epochs: 1}``) and at its published recipe (no
  ``training`` block: ``gif.request.RECIPES``, the SalUn repository's settings);
- ``retrain`` with the original model's recipe and seed (the reference every gap is measured
  against), and ``retrain`` with the next seed: the noise floor (how far two exact retrainings
  lie apart);
- the original model, unedited;
- sample removal only, ``gif + holdout``: the default request with ``step.holdout_dataset_id``
  (test-split points outside the measured test set: non-members that tune the edit, E9), the
  documented way to tune a sample removal (absent where the test set takes the whole split).

Tasks: remove class 8; remove a seeded random 10% of the training points; undo docs/models.md's
backdoor (10% of the images carry the checkerboard and label 4; relabel them to their true
classes). Relabel takes only the E10 methods that can train on corrected labels (finetune,
random_labels, retrain); the others are listed as not applicable.

Metrics (``measure``, after the edit, outside its timing): forget accuracy (the forgotten
pairs: the removed points with their labels, or the poisoned points with label 4), retained
training accuracy (a seeded sample), test accuracy (class removal: on the other classes),
removed-class test accuracy, attack success rate (backdoor), MIA efficacy
(``gif.metrics.membership_inference`` on the forgotten pairs), the mean absolute gap to the
retrained model over those, the process CPU seconds of the whole ``run_edit`` call on one
thread (loading, selection, solve, step search and its own before/after metrics; not the
bench's measurement) and the speed-up over retraining in the same run.

Writes ``unlearning-<scale>.md`` / ``.json`` / ``.png`` to ``--out``; the page states which
targets of issue 9 the default request met, with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: import the checkout's packages
    sys.path.insert(0, str(REPO_ROOT))

from experiments.common import (  # noqa: E402
    FASHION_INPUT,
    ArrayDataset,
    fashion_mnist,
    markdown_table,
    poison,
    stratified_indices,
    subset,
    triggered_test_sets,
)
from gif.data import prepare_inputs  # noqa: E402
from gif.edit import LoadedModel, run_edit  # noqa: E402
from gif.errors import GifError  # noqa: E402
from gif.metrics import evaluate, membership_inference  # noqa: E402
from gif.registry import build_model  # noqa: E402
from gif.request import INFLUENCE_METHODS, TRAINING_METHOD_KINDS, EditRequest  # noqa: E402
from gif.spec import ModelSpec  # noqa: E402

CACHE_DIR = REPO_ROOT / ".cache" / "bench_unlearning"
REMOVED_CLASS = 8
BACKDOOR_TARGET = 4
EVAL_BATCH = 512
BASELINES = ("finetune", "gradient_ascent", "random_labels", "salun", "l1_sparse")
GIF_FAMILY = tuple(m for m in INFLUENCE_METHODS if m != "if")  # IF moves every parameter
TASKS = ("class", "sample", "backdoor")
HOLDOUT_ROW = "gif + holdout"  # the sample-removal row that names a holdout set
TASK_TITLES = {"class": f"remove class {REMOVED_CLASS}", "sample": "remove a random 10%",
               "backdoor": f"backdoor relabel (checkerboard → {BACKDOOR_TARGET})"}
# The metrics each task's gap to retraining averages over (all accuracies / efficacies in [0, 1]).
GAP_METRICS = {"class": ("forget", "retain", "test", "removed", "mia"),
               "sample": ("forget", "retain", "test", "mia"),
               "backdoor": ("forget", "retain", "test", "asr", "mia")}
METRIC_NAMES = {"forget": "forget acc", "retain": "retained-train acc", "test": "test acc",
                "removed": "removed-class test acc", "asr": "ASR", "mia": "MIA efficacy"}


# ----------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class Arch:
    """One model of the benchmark: the registry spec and the image size it takes."""

    name: str
    spec: ModelSpec
    image_size: int


TINYNET = Arch("tinynet", ModelSpec(arch="tinynet", arch_kwargs={"in_channels": 1,
                                                                 "num_classes": 10},
                                    input=FASHION_INPUT), 28)
RESNET18 = Arch("resnet18-14x14", ModelSpec(arch="resnet18", arch_kwargs={
    "in_channels": 1, "num_classes": 10, "small_input": True}, input=FASHION_INPUT), 14)


@dataclass(frozen=True)
class Scale:
    """Sizes and the training recipe of one scale. ``recipe`` trains the original model and
    is the ``training`` block of ``retrain`` (constant lr, as ``retrain`` runs it)."""

    name: str
    archs: tuple[Arch, ...]
    train_per_class: int  # 6000: the whole 60k training split
    test_per_class: int  # 1000: the whole 10k test split
    epochs: int
    seeds: tuple[int, ...]
    retain_eval: int = 2000  # retained training points measured
    holdout_size: int = 1000  # the sample-removal holdout (test points outside the test set)
    recipe: dict = field(default_factory=lambda: {"optimizer": "adam", "lr": 1e-3,
                                                  "batch_size": 128})
    # Only for the seconds-long test scale: solver sizes the default request would not take.
    # Empty at every published scale (the default request is the product).
    influence_overrides: dict = field(default_factory=dict)
    tasks: tuple[str, ...] = TASKS
    only_rows: tuple[str, ...] | None = None  # a subset of the rows (the cost scale)
    # The cost scale trains for fewer epochs than the recipe it judges the cost at: retraining
    # at ``recipe_epochs`` is its measured training phase scaled up (epochs cost the same).
    recipe_epochs: int | None = None

    def training(self) -> dict:
        return {**self.recipe, "epochs": self.epochs}

    def describe(self) -> str:
        archs = ", ".join(a.name for a in self.archs)
        recipe = ", ".join(f"{k} {v}" for k, v in self.training().items())
        text = (f"{archs} on Fashion-MNIST, {10 * self.train_per_class:,} training points "
                f"({self.train_per_class}/class), {10 * self.test_per_class:,} test points; "
                f"original and retrained models: {recipe}; model seeds {list(self.seeds)}")
        if self.influence_overrides:
            text += f"; influence requests overridden with {self.influence_overrides}"
        if self.only_rows:
            text += f"; tasks {list(self.tasks)}, rows {list(self.only_rows)} only"
        if self.recipe_epochs:
            text += (f"; the cost target is judged against retraining for "
                     f"{self.recipe_epochs} epochs: the measured retrain's training loop (CPU) "
                     f"× {self.recipe_epochs // self.epochs}, the rest of its run as measured")
        return text


SCALES = {
    "full": Scale("full", (TINYNET, RESNET18), train_per_class=6000, test_per_class=1000,
                  epochs=10, seeds=(0, 1)),
    # The full scale's data and recipe on one architecture and one seed: what two shared cores
    # run in about two hours (``full`` is both architectures and two seeds).
    "full-tinynet": Scale("full-tinynet", (TINYNET,), train_per_class=6000, test_per_class=1000,
                          epochs=10, seeds=(0,)),
    # The full scale's second TinyNet seed (another subset draw, poison and sample indices,
    # and model initialisation), as its own page: a seed costs about 50 minutes of one core.
    "full-tinynet-seed1": Scale("full-tinynet-seed1", (TINYNET,), train_per_class=6000,
                                test_per_class=1000, epochs=10, seeds=(1,)),
    "small": Scale("small", (TINYNET,), train_per_class=200, test_per_class=200, epochs=5,
                   seeds=(0,), retain_eval=1500),
    # The second model of the benchmark at the small scale's sizes: the 14×14 ResNet-18 (11M
    # parameters), evidence for the defaults beyond TinyNet in about an hour and a half of one
    # core (at the full scale's sizes it is hours).
    "small-resnet18": Scale("small-resnet18", (RESNET18,), train_per_class=200,
                            test_per_class=200, epochs=5, seeds=(0,), retain_eval=1500),
    # The full recipe's 10 epochs on a tenth of the data: a model trained to convergence (the
    # backdoor implanted, ASR ≈ 0.97), which ``small`` is not, in about an hour of one core.
    "medium": Scale("medium", (TINYNET,), train_per_class=600, test_per_class=300, epochs=10,
                    seeds=(0,), retain_eval=2000),
    # The cost target at the full data size, cheaply: the default request (gif) on all 60k
    # points against retraining (one epoch measured, × 10). The original is
    # trained for one epoch only, so its quality figures are not the benchmark's.
    "cost": Scale("cost", (TINYNET,), train_per_class=6000, test_per_class=1000, epochs=1,
                  seeds=(0,), tasks=("class",), only_rows=("gif", "retrain"),
                  recipe_epochs=10),
    # The test's scale: seconds. The influence solves are cut short, so it checks the
    # plumbing and the table, never the default request's quality.
    "tiny": Scale("tiny", (TINYNET,), train_per_class=20, test_per_class=10, epochs=1,
                  seeds=(0,), retain_eval=100,
                  influence_overrides={"solver": {"max_iter": 3, "hessian_samples": 32,
                                                  "edit_samples": 32}}),
}


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One unlearning task on one training set: the edit, the data the original model was
    trained on, and the preprocessed sets every row is measured on."""

    name: str
    edit: dict
    train: ArrayDataset  # what the original was trained on, and what the edit is given
    forget: tuple[torch.Tensor, torch.Tensor]  # the forgotten pairs (x, label to forget)
    retain: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    triggered: tuple[torch.Tensor, torch.Tensor] | None  # backdoor: triggered test → target
    # sample removal: test-split points outside ``test`` (non-members that tune the edit, E9's
    # ``step.holdout_dataset_id``; never measured); None where the test set takes them all
    holdout: ArrayDataset | None = None


def build_tasks(arch: Arch, scale: Scale, seed: int) -> list[Task]:
    """The three tasks on a seeded class-balanced subset (the whole split at 6000/class)."""
    train_all = fashion_mnist("train", image_size=arch.image_size)
    test_all = fashion_mnist("test", image_size=arch.image_size)
    clean = subset(train_all, stratified_indices(train_all.y, scale.train_per_class, seed),
                   "train")
    test_idx = stratified_indices(test_all.y, scale.test_per_class, 0)
    test = subset(test_all, test_idx, "test")
    holdout = holdout_set(test_all, test_idx, scale.holdout_size)
    prep = lambda x: prepare_inputs(x, arch.spec.input, False)  # noqa: E731
    test_pair = (prep(test.x), test.y.long())
    rng = np.random.default_rng(seed)
    n = len(clean.y)

    def pairs(dataset: ArrayDataset, idx: np.ndarray, labels=None):
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        y = dataset.y[idx_t] if labels is None else labels
        return prep(dataset.x[idx_t]), y.long()

    def retain_sample(excluded: np.ndarray) -> np.ndarray:
        rest = np.setdiff1d(np.arange(n), excluded)
        return np.sort(rng.choice(rest, min(scale.retain_eval, len(rest)), replace=False))

    class_idx = np.flatnonzero(clean.y.numpy() == REMOVED_CLASS)
    sample_idx = np.sort(rng.choice(n, round(0.1 * n), replace=False))
    poisoned = poison(clean, fraction=0.1, target=BACKDOOR_TARGET, seed=seed)
    bad = poisoned.indices.numpy()
    triggered = triggered_test_sets(test, BACKDOOR_TARGET)["triggered_as_target"]
    return [
        Task("class", {"kind": "remove_class", "class": REMOVED_CLASS}, clean,
             pairs(clean, class_idx), pairs(clean, retain_sample(class_idx)), test_pair, None),
        Task("sample", {"kind": "remove_samples", "indices": sample_idx.tolist()}, clean,
             pairs(clean, sample_idx), pairs(clean, retain_sample(sample_idx)), test_pair, None,
             holdout),
        Task("backdoor", {"kind": "relabel", "indices": bad.tolist(),
                          "labels": poisoned.true_labels.tolist()}, poisoned.dataset,
             pairs(poisoned.dataset, bad), pairs(poisoned.dataset, retain_sample(bad)),
             test_pair, (prep(triggered.x), triggered.y.long())),
    ]


def holdout_set(test_all: ArrayDataset, test_idx: torch.Tensor, size: int) -> ArrayDataset | None:
    """``size`` seeded test-split points outside the measured test set (None if none are left):
    the ``gif + holdout`` row's ``step.holdout_dataset_id``, data the model never trained on
    and the benchmark never measures."""
    chosen = holdout_indices(test_all.num_samples, test_idx, size)
    return None if len(chosen) == 0 else subset(test_all, torch.as_tensor(chosen), "holdout")


def holdout_indices(num_test: int, test_idx: torch.Tensor, size: int) -> np.ndarray:
    """``size`` seeded indices of the test split outside ``test_idx`` (fewer if fewer are left)."""
    rest = np.setdiff1d(np.arange(num_test), test_idx.numpy())
    return np.sort(np.random.default_rng(1).choice(rest, min(size, len(rest)), replace=False))


# ----------------------------------------------------------------------------- training


def train_original(spec: ModelSpec, train: ArrayDataset, training: dict, seed: int) -> dict:
    """The original model, trained as ``retrain`` trains (E10): ``torch.manual_seed(seed)``,
    a fresh registry model, batches from a ``randperm`` of a generator seeded with ``seed``,
    constant lr, train mode."""
    torch.manual_seed(seed)
    model = build_model(spec).train()
    if training["optimizer"] == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=training["lr"])
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=training["lr"])
    generator = torch.Generator().manual_seed(seed)
    x, y = train.x, train.y.long()
    for _ in range(training["epochs"]):
        for batch in torch.randperm(len(y), generator=generator).split(training["batch_size"]):
            optimizer.zero_grad(set_to_none=True)
            inputs = prepare_inputs(x[batch], spec.input, False)
            F.cross_entropy(model(inputs), y[batch]).backward()
            optimizer.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def cached_original(spec: ModelSpec, train: ArrayDataset, training: dict,
                    seed: int) -> tuple[dict, float]:
    """``train_original`` cached under ``.cache/bench_unlearning`` (keyed by spec, data, recipe,
    seed and torch version), with the CPU seconds of the run that filled the cache."""
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256(json.dumps({
        "spec": spec.model_dump(mode="json"), "training": training, "seed": seed,
        "torch": torch.__version__}, sort_keys=True).encode())
    digest.update(train.x.contiguous().numpy().tobytes())
    digest.update(train.y.contiguous().numpy().tobytes())
    stem = CACHE_DIR / digest.hexdigest()[:24]
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.exists() and meta.exists():
        return load_file(weights), json.loads(meta.read_text())["cpu_s"]
    started = time.process_time()
    state = train_original(spec, train, training, seed)
    seconds = time.process_time() - started
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    meta.write_text(json.dumps({"cpu_s": seconds}))
    return state, seconds


def fingerprint(state: dict) -> str:
    """The original's weights as a short sha256 (names, dtypes, shapes, bytes). Training is
    deterministic on one machine, not across machines: the same seed and recipe trained on
    another CPU gave another model (the full-data TinyNet's test accuracy 0.912 against
    0.908), so rows are only reused for an original with this very fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def machine() -> str:
    """What the CPU seconds and the floating-point results depend on: the CPU's model, the
    instruction set torch dispatches to, the torch version."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({platform.machine()}, {capability}), torch {torch.__version__}"


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One request of the benchmark: a label, the method and the request's extra fields."""

    label: str
    method: str
    setting: str
    fields: dict
    holdout: bool = False  # pass the task's holdout set (step.holdout_dataset_id)


def rows_for(task: Task, scale: Scale, seed: int) -> list[Row]:
    """The requests of one task, in table order (see the module docstring)."""
    kind = task.edit["kind"]
    # gif is the default method: its request is ``edit`` alone (plus the tiny scale's overrides)
    rows = [Row(m, m, "default request",
                {**({} if m == "gif" else {"method": m}), **scale.influence_overrides})
            for m in GIF_FAMILY]
    if kind == "remove_samples" and task.holdout is not None:
        # the documented way to tune a sample removal (E9); a full-split test set leaves none
        rows.append(Row(HOLDOUT_ROW, "gif", "default request + step.holdout_dataset_id "
                        f"({task.holdout.num_samples:,} test points outside the test set)",
                        dict(scale.influence_overrides), holdout=True))
    for method in BASELINES:
        rows.append(Row(f"{method} 1 epoch", method, "1 epoch",
                        {"method": method, "training": {"epochs": 1}}))
        rows.append(Row(f"{method} recipe", method, "published recipe", {"method": method}))
    rows.append(Row("retrain", "retrain", f"seed {seed} (reference)",
                    {"method": "retrain", "training": scale.training(), "seed": seed}))
    rows.append(Row("retrain seed+1", "retrain", f"seed {seed + 1} (noise floor)",
                    {"method": "retrain", "training": scale.training(), "seed": seed + 1}))
    return [row if applicable(row.method, kind) else
            Row(row.label, row.method, "not applicable (docs/method.md E10)", row.fields)
            for row in rows if scale.only_rows is None or row.label in scale.only_rows]


def applicable(method: str, kind: str) -> bool:
    """E10: relabel takes only the training methods that can fit corrected labels."""
    return method in GIF_FAMILY or kind in TRAINING_METHOD_KINDS[method]


def request_for(row: Row, task: Task) -> EditRequest:
    """The request: ``edit`` plus only the row's own fields (influence rows: nothing else,
    so every default of ``gif.request`` applies)."""
    return EditRequest.model_validate({"edit": task.edit, **row.fields})


def run_row(row: Row, task: Task, spec: ModelSpec, original: dict) -> dict:
    """One ``run_edit`` call, its process CPU seconds (one thread), and the edited weights'
    metrics; a ``GifError`` is a finding and becomes the row's ``error``."""
    request = request_for(row, task)
    started, wall = time.process_time(), time.perf_counter()
    try:
        outcome = run_edit(request, LoadedModel(spec=spec, state_dict=original), task.train, {},
                           holdout=task.holdout if row.holdout else None)
    except GifError as error:
        return {"error": f"{error.code}: {error.message}",
                "cpu_s": time.process_time() - started}
    record = {"cpu_s": time.process_time() - started, "wall_s": time.perf_counter() - wall,
              **measure(spec, outcome.state_dict, task)}
    result = outcome.result
    if "scale" in result:  # the influence methods: what the default request chose
        solver = result.get("solver", {})
        record["details"] = {"scale": result["scale"], "iterations": solver.get("iterations"),
                             "hvps": solver.get("hvps"), "stop_reason": solver.get("stop_reason"),
                             # the step's scalars (the path's surface stays in the result)
                             "step": {k: v for k, v in result.get("step", {}).items()
                                      if isinstance(v, int | float | str | bool)},
                             "warnings": [w["code"] for w in result.get("warnings", [])],
                             # the validation objective of the chosen (k, α): what the path
                             # ranked candidates by (None for step.mode fixed)
                             "objective": (result.get("path") or {}).get("chosen", {})
                             .get("objective"),
                             # preconditioner auto: which scaling the validation split kept,
                             # and the HVPs of every solve (None where no choice was made)
                             "scaling": (solver.get("scaling") or {}).get("chosen"),
                             "hvps_all_solves": (solver.get("scaling") or {})
                             .get("hvps_all_solves")}
    elif "training" in result:
        training = result["training"]
        record["details"] = {"epochs_done": training.get("epochs_done"),
                             "steps": training.get("steps"), "recipe": training.get("recipe"),
                             # the loop's own seconds on its clock (process CPU on the CPU);
                             # ``timings`` are wall seconds, which a shared machine inflates
                             "loop_s": training.get("seconds"), "clock": training.get("clock")}
    record["timings"] = result.get("timings")
    return record


def warm_up(spec: ModelSpec, original: dict, task: Task) -> None:
    """One small untimed edit of each kind of method, so that no timed row pays for the
    first call's lazy imports and allocator warm-up."""
    for fields in ({"solver": {"max_iter": 1, "hessian_samples": 8, "edit_samples": 8},
                    "step": {"mode": "fixed"}},
                   {"method": "finetune", "training": {"epochs": 1}}):
        run_edit(EditRequest.model_validate({"edit": task.edit, **fields}),
                 LoadedModel(spec=spec, state_dict=original), task.train, {})


def measure(spec: ModelSpec, state: dict, task: Task) -> dict:
    """The same metrics for every row (``gif.metrics``, eval mode)."""
    model = build_model(spec)
    model.load_state_dict(state)
    model.eval()

    def accuracy(pair, removed=None) -> dict:
        return evaluate(model, *pair, batch_size=EVAL_BATCH, num_classes=10,
                        removed_class=removed)

    removed = REMOVED_CLASS if task.name == "class" else None
    test = accuracy(task.test, removed)
    out = {"forget": accuracy(task.forget)["accuracy"], "retain": accuracy(task.retain)["accuracy"],
           "test": test["accuracy_remaining_classes"] if removed is not None else test["accuracy"]}
    if removed is not None:
        out["removed"] = test["accuracy_removed_class"]
    if task.triggered is not None:
        out["asr"] = accuracy(task.triggered)["accuracy"]
    out["mia"] = membership_inference(model, members=task.retain, non_members=task.test,
                                      targets=task.forget, batch_size=EVAL_BATCH,
                                      seed=0)["efficacy"]
    return out


def add_gaps(records: list[dict]) -> None:
    """Each record's mean absolute gap to the reference retrain of its (arch, task, seed), the
    speed-up over that retrain's CPU seconds, and the gap over the noise floor's gap."""
    for record in records:
        group = [r for r in records if (r["arch"], r["task"], r["seed"]) ==
                 (record["arch"], record["task"], record["seed"])]
        ref = next((r for r in group if r["row"] == "retrain" and "error" not in r), None)
        if ref is None or "forget" not in record:
            continue
        keys = GAP_METRICS[record["task"]]
        record["gap"] = statistics.fmean(abs(record[k] - ref[k]) for k in keys)
        if record.get("cpu_s"):
            record["speedup"] = ref["cpu_s"] / record["cpu_s"]
    for record in records:
        floor = next((r for r in records if r["row"] == "retrain seed+1" and
                      (r["arch"], r["task"], r["seed"]) ==
                      (record["arch"], record["task"], record["seed"]) and "gap" in r), None)
        if floor is not None and "gap" in record and floor["gap"] > 0:
            record["gap_over_floor"] = record["gap"] / floor["gap"]


# ----------------------------------------------------------------------------- tables


def fmt(values: list[float | None], digits: int = 3) -> str:
    """``mean ± std`` over seeds, the value for one seed, ``–`` for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def task_table(records: list[dict], arch: str, task: str) -> str:
    columns = [c for c in ("forget", "retain", "test", "removed", "asr", "mia")
               if task == "class" or c != "removed"]
    columns = [c for c in columns if task == "backdoor" or c != "asr"]
    header = ["method", "setting", *(METRIC_NAMES[c] for c in columns),
              "mean gap to retrain", "gap ÷ noise floor", "CPU s", "speed-up vs retrain"]
    order = [r for r in records if r["arch"] == arch and r["task"] == task]
    rows = []
    labels = list(dict.fromkeys(r["row"] for r in order))
    for label in labels:
        group = [r for r in order if r["row"] == label]
        first = group[0]
        if first.get("skipped"):
            rows.append([label, first["setting"], *["–"] * (len(columns) + 4)])
            continue
        errors = [r["error"] for r in group if "error" in r]
        name = label if not errors else f"{label} (FAILED {len(errors)}/{len(group)}: " \
                                        f"{errors[0].split(':')[0]})"
        if label in GIF_FAMILY:
            name = f"**{name}**"
        rows.append([name, first["setting"], *[fmt([r.get(c) for r in group]) for c in columns],
                     fmt([r.get("gap") for r in group]),
                     fmt([r.get("gap_over_floor") for r in group], 1),
                     fmt([r.get("cpu_s") for r in group], 1),
                     fmt([r.get("speedup") for r in group], 2)])
    return markdown_table(header, rows)


def mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def retrain_cpu_at_recipe(ref: list[dict], factor: float) -> tuple[float, str]:
    """Retraining's CPU seconds at the recipe: the measured run with its training loop's CPU
    seconds scaled by ``factor`` (recipe epochs over the epochs measured), and how it was
    obtained. A record without the loop's seconds scales the whole run: an upper bound."""
    if factor == 1.0:
        return statistics.fmean(r["cpu_s"] for r in ref), "measured"
    loops = [r.get("details", {}).get("loop_s") for r in ref]
    if all(loop is not None for loop in loops):
        seconds = [r["cpu_s"] + (factor - 1.0) * loop for r, loop in zip(ref, loops, strict=True)]
        return statistics.fmean(seconds), f"training loop × {factor:g}"
    return factor * statistics.fmean(r["cpu_s"] for r in ref), \
        f"whole run × {factor:g}, an upper bound"


def targets(records: list[dict], arch: str, meta: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 9's targets for the default ``gif`` request on ``arch``: (target, figures, met).
    ``met`` is None where the run has no figure for it. A cost-only run (``meta["cost_only"]``)
    judges only the cost, against retraining at ``meta["recipe_factor"]`` × its epochs."""
    factor = meta.get("recipe_factor") or 1.0
    def rows(task: str, label: str) -> list[dict]:
        return [r for r in records if r["arch"] == arch and r["task"] == task
                and r["row"] == label and "forget" in r]

    out: list[tuple[str, str, bool | None]] = []
    g, ref = rows("class", "gif"), rows("class", "retrain")
    if meta.get("cost_only"):
        g = []  # an original trained for one epoch: no quality verdicts
    if g and ref:
        removed, diff = mean_of(g, "removed"), mean_of(g, "test") - mean_of(ref, "test")
        out.append(("class removal: removed-class test acc ≤ 1%, other classes within 1 point "
                    "of retraining", f"removed-class {removed:.3f}; other classes "
                    f"{mean_of(g, 'test'):.3f} vs retrain {mean_of(ref, 'test'):.3f} "
                    f"({100 * diff:+.1f} points)", removed <= 0.01 and abs(diff) <= 0.01))
    g, ref = rows("sample", "gif"), rows("sample", "retrain")
    if g and ref and not meta.get("cost_only"):
        fd = mean_of(g, "forget") - mean_of(ref, "forget")
        td = mean_of(g, "test") - mean_of(ref, "test")
        out.append(("sample removal: forget acc within 2 points of retraining's, test acc "
                    "within 1 point", f"forget {mean_of(g, 'forget'):.3f} vs "
                    f"{mean_of(ref, 'forget'):.3f} ({100 * fd:+.1f}); test "
                    f"{mean_of(g, 'test'):.3f} vs {mean_of(ref, 'test'):.3f} ({100 * td:+.1f})",
                    abs(fd) <= 0.02 and abs(td) <= 0.01))
    g, ref = rows("backdoor", "gif"), rows("backdoor", "retrain")
    if g and ref and not meta.get("cost_only"):
        asr, td = mean_of(g, "asr"), mean_of(g, "test") - mean_of(ref, "test")
        out.append(("backdoor: ASR ≤ 2%, clean accuracy within 1 point of retraining on "
                    "corrected data", f"ASR {asr:.3f} (retrain {mean_of(ref, 'asr'):.3f}); "
                    f"clean {mean_of(g, 'test'):.3f} vs {mean_of(ref, 'test'):.3f} "
                    f"({100 * td:+.1f} points)", asr <= 0.02 and abs(td) <= 0.01))
    for task in TASKS:
        g, ref = rows(task, "gif"), rows(task, "retrain")
        if g and ref:
            retrain_s, how = retrain_cpu_at_recipe(ref, factor)
            ratio = mean_of(g, "cpu_s") / retrain_s
            at = f" at {meta['recipe_epochs']} epochs ({how})" if factor != 1.0 else ""
            out.append((f"cost ({TASK_TITLES[task]}): edit CPU ≤ 1/10 of retraining's, and "
                        "never more", f"gif {mean_of(g, 'cpu_s'):.1f} s vs retrain{at} "
                        f"{retrain_s:.1f} s (ratio {ratio:.2f})", ratio <= 0.1))
    for task in TASKS if not meta.get("cost_only") else ():
        g = rows(task, "gif")
        gap, cpu = mean_of(g, "gap"), mean_of(g, "cpu_s")
        if gap is None:  # no gif row or no reference retrain (yet)
            continue
        cheaper = [(label, mean_of(rows(task, label), "gap"), mean_of(rows(task, label), "cpu_s"))
                   for label in dict.fromkeys(r["row"] for r in records
                                              if r["arch"] == arch and r["task"] == task)
                   if label.split(" ")[0] in BASELINES and rows(task, label)]
        within = [c for c in cheaper if c[2] <= cpu]
        beaten = [c for c in within if c[1] < gap]
        text = (f"gif gap {gap:.3f} at {cpu:.1f} s; E10 rows at ≤ that CPU: "
                + (", ".join(f"{n} {gp:.3f} ({s:.1f} s)" for n, gp, s in within) or "none"))
        out.append((f"gap ({TASK_TITLES[task]}): gif's gap ≤ every E10 baseline's at equal "
                    "CPU budget", text, (not beaten) if within else None))
    return out


def targets_table(records: list[dict], arch: str, meta: dict) -> str:
    verdict = {True: "met", False: "**not met**", None: "not measurable in this run"}
    return markdown_table(["target (issue 9)", "figures (default request, this run)", "verdict"],
                          [(t, f, verdict[m]) for t, f, m in targets(records, arch, meta)])


# ----------------------------------------------------------------------------- plot


def plot(records: list[dict], path: Path) -> None:
    """Mean gap to retraining (lower is better) against CPU seconds (log), one panel per
    (arch, task); the noise floor (second retrain seed) as a dashed line. Colours name methods
    only (no good/bad colour coding); the influence methods are filled circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = list(dict.fromkeys((r["arch"], r["task"]) for r in records))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), squeeze=False)
    methods = [*GIF_FAMILY, *BASELINES, "retrain"]
    colors = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    for axis, (arch, task) in zip(axes[0], panels, strict=True):
        group = [r for r in records if (r["arch"], r["task"]) == (arch, task) and "gap" in r
                 and r.get("cpu_s")]
        for label in dict.fromkeys(r["row"] for r in group):
            rows = [r for r in group if r["row"] == label]
            method = label.split(" ")[0]
            if label == "retrain":
                continue  # gap 0 by definition; its CPU time is the vertical line
            marker = ("D" if label == HOLDOUT_ROW else "o" if method in GIF_FAMILY
                      else "s" if "recipe" in label else "^")
            axis.scatter([mean_of(rows, "cpu_s")], [mean_of(rows, "gap")], marker=marker,
                         s=60, color=colors.get(method, "grey"), label=label,
                         edgecolors="black", linewidths=0.5)
        ref = [r for r in group if r["row"] == "retrain"]
        if ref:
            axis.axvline(mean_of(ref, "cpu_s"), color="black", linewidth=1,
                         label="retrain CPU s")
        floor = [r for r in group if r["row"] == "retrain seed+1"]
        if floor:
            axis.axhline(mean_of(floor, "gap"), color="black", linestyle="--", linewidth=1,
                         label="noise floor (retrain, other seed)")
        axis.set_ylim(bottom=0)  # from 0: small differences are not drawn as large ones
        axis.set_xscale("log")
        axis.set_xlabel("CPU seconds of the edit (one thread, log)")
        axis.set_ylabel("mean |gap| to retraining (lower is better)")
        axis.set_title(f"{arch}: {TASK_TITLES[task]}", fontsize=10)
        axis.grid(alpha=0.3, which="both")
        # a log axis over a narrow range labels its minor ticks too, and they overlap
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    legend: dict[str, object] = {}  # every panel's entries (the holdout row is in one panel only)
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=6, fontsize=7)
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------- page


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_request() -> dict:
    """The normalised default request (``edit`` aside): what every influence row ran."""
    body = EditRequest.model_validate({"edit": {"kind": "remove_class", "class": 0}}).normalised()
    body.pop("edit")
    return body


def page(records: list[dict], meta: dict) -> str:
    scale = meta["scale"]
    lines = [f"# Unlearning benchmark — `--scale {scale}`", "",
             f"Command: `{meta['command']}`  ",
             f"Commit: `{meta['commit']}` (the defaults of `gif/request.py` at that commit)  ",
             f"Sizes: {meta['sizes']}  ",
             f"Machine: {meta.get('machine', 'not recorded (before 5 December 2026)')}"
             + machine_note(records, meta) + "  ",
             f"Run: {meta['status']}; wall time {meta['wall_s']:.0f} s, CPU time "
             f"{meta['cpu_s']:.0f} s on one torch thread (shared 2-core machine: only CPU "
             "seconds and ratios within this run mean anything)"
             + reuse_note(meta), "",
             "Every row is one `gif.edit.run_edit` call on the same original model and data; "
             "every metric is computed by the same code (`measure` in "
             "`bench/bench_unlearning.py`). *forget acc*: the forgotten pairs (removed points "
             "with their labels; backdoor: poisoned points with label 4). *test acc*: class "
             "removal on the other classes, otherwise the whole test subset (backdoor: clean "
             "images). *MIA efficacy*: share of the forgotten pairs an SVC on true-class "
             "confidence (retained vs test) calls non-members. *mean gap*: mean |metric − "
             "retrain's| over the task's metric columns. *gap ÷ noise floor*: that gap over "
             "the gap of a second exact retraining (next seed). *CPU s*: process CPU time of "
             "the whole `run_edit` call. *speed-up*: retrain's CPU s ÷ the row's. Backdoor "
             "rows for gradient_ascent, salun and l1_sparse are not applicable: docs/method.md E10 "
             "lets relabel take only finetune, random_labels and retrain.", "",
             f"![gap vs CPU](unlearning-{scale}.png)", "",
             "The default request of the influence rows (`edit` aside):", "",
             "```json", json.dumps(meta["default_request"]), "```", ""]
    for arch in dict.fromkeys(r["arch"] for r in records):
        for task in dict.fromkeys(r["task"] for r in records if r["arch"] == arch):
            seeds = sorted({r["seed"] for r in records if r["arch"] == arch
                            and r["task"] == task})
            lines += [f"## {arch}: {TASK_TITLES[task]} (seeds {seeds})", "",
                      task_table(records, arch, task)]
        lines += [f"## Targets of issue 9 — {arch}, default request", "",
                  targets_table(records, arch, meta)]
    if scale.startswith("full-tinynet"):
        lines += ["## Part of the full scale", "", "This page is the full scale's data and "
                  "recipe on TinyNet with one seed (`full-tinynet`: seed 0; "
                  "`full-tinynet-seed1`: seed 1). The full scale is both seeds and "
                  f"the 14×14 ResNet-18 ({SCALES['full'].describe()}): "
                  "`python bench/bench_unlearning.py --scale full`.", ""]
    elif scale not in ("full", "cost"):
        lines += ["## Not the full scale", "", f"This page is `--scale {scale}`. Issue 9 asks "
                  f"for the full scale ({SCALES['full'].describe()}); its command is "
                  "`python bench/bench_unlearning.py --scale full`. Targets judged here hold "
                  "for these sizes only.", ""]
    return "\n".join(lines) + "\n"


def machine_note(records: list[dict], meta: dict) -> str:
    """Where rows were measured on a machine other than this run's (reused rows of the same
    original: the same weights, other CPU seconds)."""
    others = sorted({r["machine"] for r in records
                     if r.get("machine") and r["machine"] != meta.get("machine")})
    if not others:
        return ""
    count = sum(1 for r in records if r.get("machine") in others)
    return f" ({count} reused rows were measured on {'; '.join(others)})"


def reuse_note(meta: dict) -> str:
    """What the page says of rows ``--resume`` took from an earlier run."""
    if not meta.get("reused_rows"):
        return ""
    source = f"commit `{meta['reused_from']}`" if meta.get("reused_from") else "an earlier run"
    if meta.get("reused_influence_rows", True):
        return (f"; {meta['reused_rows']} rows reused (`--resume`) from a stopped run of the "
                f"same sizes and default request ({source})")
    return (f"; {meta['reused_rows']} retraining and E10 rows reused (`--resume`) from the "
            f"run of {source} on the same cached originals (they do not run the default "
            "request); the influence rows (gif, fif, pif) were run at this commit")


def write_outputs(out: Path, records: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"unlearning-{meta['scale']}"
    stem.with_suffix(".md").write_text(page(records, meta))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records},
                                                    indent=1, default=str))
    plot(records, stem.with_suffix(".png"))


# ----------------------------------------------------------------------------- main


def row_order(records: list[dict]) -> list[dict]:
    """Records in table order: arch, seed, task, then the row order of ``rows_for``."""
    labels = ["original (no edit)", *GIF_FAMILY, HOLDOUT_ROW,
              *(f"{m} {s}" for m in BASELINES for s in ("1 epoch", "recipe")),
              "retrain", "retrain seed+1"]
    archs = list(dict.fromkeys(r["arch"] for r in records))
    return sorted(records, key=lambda r: (archs.index(r["arch"]), r["seed"],
                                          TASKS.index(r["task"]), labels.index(r["row"])))


def reusable(path: Path, meta: dict, rerun_influence: bool = False,
             originals: dict[tuple, str] | None = None) -> tuple[list[dict], str | None]:
    """``--resume``: ``reusable_rows`` of the earlier run of the same scale and sizes whose
    JSON is ``path``; none of another benchmark's sizes (that would mix two benchmarks in one
    table)."""
    if not path.exists():
        return [], None
    earlier = json.loads(path.read_text())
    if earlier["meta"].get("sizes") != meta["sizes"]:
        log(f"--resume: {path} is another benchmark (its sizes differ); starting afresh")
        return [], None
    return reusable_rows(earlier, meta["default_request"], rerun_influence, originals)


def originals_of(records: list[dict]) -> dict[tuple, str | None]:
    """``(arch, seed, task) -> fingerprint`` of each task's original in a run's records
    (``None`` for a page written before originals were fingerprinted)."""
    return {(r["arch"], r["seed"], r["task"]): r.get("original") for r in records
            if r["row"] == "original (no edit)"}


def reusable_rows(earlier: dict, default_request: dict | None = None,
                  rerun_influence: bool = False, originals: dict[tuple, str] | None = None
                  ) -> tuple[list[dict], str | None]:
    """The finished rows of an earlier run (its JSON, ``earlier``), each marked with the
    commit it was measured at (``measured_at``), and those commits. With the same default
    request, every row; with another, or with ``rerun_influence`` (a default of the engine's
    code changed, not a field of the request), only the rows that do not run it (retraining
    and the E10 methods, which train with their own recipe): the influence rows are measured
    again at this run's code. With ``originals`` (this run's ``originals_of``), only the rows
    of a task whose earlier original has the same fingerprint: a row measured on another
    original (another machine, or a page from before fingerprints) compares nothing with
    this run's rows."""
    same_defaults = (earlier["meta"].get("default_request") == default_request
                     and not rerun_influence)
    before = originals_of(earlier["records"])

    def same_original(record: dict) -> bool:
        key = (record["arch"], record["seed"], record["task"])
        return originals is None or (before.get(key) is not None
                                     and before.get(key) == originals.get(key))

    finished = [r for r in earlier["records"]
                if r["row"] != "original (no edit)" and not r.get("skipped")]
    other = [r for r in finished if not same_original(r)]
    if other:
        log(f"--resume: {len(other)} rows were measured on another original (fingerprints "
            f"{sorted({str(before.get((r['arch'], r['seed'], r['task']))) for r in other})} "
            f"against this run's {sorted({str(v) for v in (originals or {}).values()})}); "
            "they run again")
    kept = [{**r, "measured_at": measured_at(r, earlier["meta"])} for r in finished
            if same_original(r)
            and (same_defaults or r.get("method") not in INFLUENCE_METHODS)]
    commit = ", ".join(sorted({r["measured_at"] for r in kept})) or earlier["meta"]["commit"]
    log(f"--resume: reusing {len(kept)} rows measured at {commit}"
        + ("" if same_defaults else "; the influence rows run again ("
           + ("--rerun-influence" if rerun_influence else "its default request differs") + ")"))
    return kept, commit


def measured_at(record: dict, meta: dict) -> str:
    """The commit a row of an earlier run (``meta``) was measured at: its own mark; for a row
    of a page without marks, that run's commit — or, when that run re-ran only the influence
    rows, for its retraining and E10 rows the commit it had taken them from."""
    if record.get("measured_at"):
        return record["measured_at"]
    took_others = meta.get("reused_rows") and not meta.get("reused_influence_rows", True)
    if took_others and record.get("method") not in INFLUENCE_METHODS and meta.get("reused_from"):
        return meta["reused_from"]
    return meta["commit"]


def priority(row: Row) -> int:
    """Run order, so that a run stopped early (the full scale takes hours) holds what matters
    most: the reference retrain (0), the default request (1: gif, and gif + holdout), the
    E10 methods at 1 epoch (2), the noise floor's retrain (3), fif and pif (4), the E10
    methods at their published recipes, each about a retraining's cost (5)."""
    if row.method == "retrain":
        return 0 if row.label == "retrain" else 3
    if row.method == "gif":
        return 1
    if row.method in GIF_FAMILY:
        return 4
    return 2 if row.setting == "1 epoch" else 5


def run(scale: Scale, out: Path, command: str, resume: bool = False,
        rerun_influence: bool = False) -> list[dict]:
    """Every row of the scale, in ``priority`` order over every task; the page is rewritten
    after each one (``--resume`` continues a stopped run)."""
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    meta = {"scale": scale.name, "command": command, "commit": git_commit(),
            "sizes": scale.describe(), "default_request": default_request(),
            "torch_threads": torch.get_num_threads(), "machine": machine(),
            "status": "running",
            "cost_only": scale.only_rows is not None,
            "recipe_epochs": scale.recipe_epochs or scale.epochs,
            "recipe_factor": (scale.recipe_epochs or scale.epochs) / scale.epochs}
    records: list[dict] = []

    def flush(status: str) -> None:
        meta.update(status=status, wall_s=time.perf_counter() - started_wall,
                    cpu_s=time.process_time() - started_cpu)
        records[:] = row_order(records)
        add_gaps(records)
        write_outputs(out, records, meta)

    jobs = []  # (influence?, arch, seed, task, original, row)
    for arch in scale.archs:
        for seed in scale.seeds:
            tasks = [t for t in build_tasks(arch, scale, seed) if t.name in scale.tasks]
            for task in tasks:
                original, train_cpu = cached_original(arch.spec, task.train, scale.training(),
                                                      seed)
                log(f"{arch.name} seed {seed} {task.name}: original trained "
                    f"({train_cpu:.1f} CPU s)")
                if seed == scale.seeds[0] and task is tasks[0]:
                    warm_up(arch.spec, original, task)  # once per architecture
                records.append({"arch": arch.name, "task": task.name, "seed": seed,
                                "row": "original (no edit)", "setting": "–",
                                "train_cpu_s": train_cpu, "original": fingerprint(original),
                                **measure(arch.spec, original, task)})
                jobs += [(priority(row), arch, seed, task, original, row)
                         for row in rows_for(task, scale, seed)]
    done, reused_from = (reusable(out / f"unlearning-{scale.name}.json", meta, rerun_influence,
                                  originals_of(records))
                         if resume else ([], None))
    if done:
        meta["reused_rows"] = len(done)
        meta["reused_from"] = reused_from
        meta["reused_influence_rows"] = any(r.get("method") in INFLUENCE_METHODS for r in done)
    for _, arch, seed, task, original, row in sorted(jobs, key=lambda job: job[0]):
        base = {"arch": arch.name, "task": task.name, "seed": seed, "row": row.label,
                "method": row.method, "setting": row.setting}
        earlier = next((r for r in done if all(r[k] == base[k] for k in
                                               ("arch", "task", "seed", "row"))), None)
        if not applicable(row.method, task.edit["kind"]):
            records.append({**base, "skipped": True})
            continue
        record = earlier or {**base, **run_row(row, task, arch.spec, original),
                             "measured_at": meta["commit"], "machine": meta["machine"]}
        records.append(record)
        log(f"{arch.name} seed {seed} {task.name} {row.label}: " + (
            f"FAILED {record['error'][:80]}" if "error" in record else
            f"forget {record['forget']:.3f} test {record['test']:.3f} "
            f"({record['cpu_s']:.1f} CPU s)") + (" (reused)" if earlier else ""))
        flush("running (partial)")
    flush("finished")
    return records


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished rows of an earlier, stopped run of the same "
                             "scale, sizes and default request (its JSON in --out)")
    parser.add_argument("--rerun-influence", action="store_true",
                        help="with --resume: measure the influence rows (gif, fif, pif) again "
                             "even at the same default request (the engine's code changed)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the page and plot of an earlier run's JSON "
                             "(into --out); runs nothing")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        write_outputs(args.out, data["records"], data["meta"])
        return 0
    torch.set_num_threads(1)  # CPU seconds of one thread: the measure of every row
    command = f"python bench/bench_unlearning.py --scale {args.scale}"
    if args.out.resolve() != (REPO_ROOT / "docs" / "results").resolve():
        command += f" --out {args.out}"
    if args.rerun_influence and not args.resume:
        parser.error("--rerun-influence goes with --resume")
    records = run(SCALES[args.scale], args.out, command, args.resume, args.rerun_influence)
    print()
    print(page(records, json.loads((args.out / f"unlearning-{args.scale}.json")
                                   .read_text())["meta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
