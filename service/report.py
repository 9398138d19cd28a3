"""The job report: one self-contained HTML page per job (``GET /v1/jobs/{id}/report``).

Self-contained means it can be saved, mailed or archived and still show everything: CSS is
inline, the figures of ``gif.plots`` are inlined as ``data:image/png`` URIs, there is no script
and no reference to any other URL (a Content-Security-Policy in the page forbids loading
anything but inline styles and data-URI images). The page is a Jinja2 template
(``service/templates/report.html.j2``) rendered with autoescape on, so every value that came
from a user — model names, eval-set names, error messages — is HTML-escaped by default: a
model named ``<script>…`` shows as text.

This module builds the page's data (plain dicts and strings, numbers already formatted); the
templates only lay it out. A succeeded job shows, from the top: the warnings of its result
(a solve that did not converge, a step search that found nothing better), the numbers that
judge its edit's kind at a glance, the summary, the metrics before/after per set, the figures
that have data (``gif.plots.PLOTS``), the training block of a training method (method.md E10),
the solver, step search, selection, timings and the request. Every section is optional: a
result without ``solver`` (a training method) or with keys this code does not know still
renders, the unknown keys shown as JSON. Any other job shows its status, progress and error.

Changes are coloured by whether they serve the edit (``METRIC_DIRECTIONS``), never by sign.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from gif.builtins import builtin_class_names
from gif.result_warnings import result_warnings
from service.db.models import ACTIVE_STATUSES

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Long index lists (remove_samples / relabel) are shortened in the page; the job JSON has them.
MAX_LIST_ITEMS = 32

# --------------------------------------------------------------------------- colour rules

UP, DOWN, RETRAIN = "up", "down", "retrain"
EDIT_KINDS = ("remove_class", "remove_samples", "relabel")

# Which direction of a metric serves the edit, per edit kind: UP (higher is better), DOWN
# (lower is better), RETRAIN (closer to a retrained model's value is better: judged only when
# a retrain job on the same request exists, neutral otherwise) or None (no judgement: shown
# without colour). Set names: ``forget`` (the edited points, original labels — on a relabel
# their accuracy is the attack success rate of a backdoor), ``relabeled`` (corrected labels),
# ``retain``, ``eval`` (every evaluation set); then the scalar metrics.
#                                      remove_class  remove_samples  relabel
_RULES: tuple[tuple[str, str | None, str | None, str | None], ...] = (
    ("forget.accuracy",                  DOWN,         RETRAIN,        DOWN),
    ("forget.loss",                      UP,           RETRAIN,        UP),
    ("relabeled.accuracy",               None,         None,           UP),
    ("relabeled.loss",                   None,         None,           DOWN),
    ("retain.accuracy",                  UP,           UP,             UP),
    ("retain.loss",                      DOWN,         DOWN,           DOWN),
    # A class removal lowers the overall accuracy by design (the removed class's share):
    # the two class-split accuracies below judge it instead.
    ("eval.accuracy",                    None,         UP,             UP),
    ("eval.loss",                        None,         DOWN,           DOWN),
    ("eval.accuracy_remaining_classes",  UP,           None,           None),
    ("eval.accuracy_removed_class",      DOWN,         None,           None),
    ("score",                            UP,           UP,             UP),
    ("retained_grad_norm",               DOWN,         DOWN,           DOWN),
    ("mia.efficacy",                     UP,           RETRAIN,        None),
)
METRIC_DIRECTIONS: dict[str, dict[str, str | None]] = {
    metric: dict(zip(EDIT_KINDS, directions, strict=True)) for metric, *directions in _RULES
}
SET_ROLES = ("forget", "relabeled", "retain")  # any other set is an evaluation set
# Edit kinds whose every metric is judged by closeness to retraining when a retrain reference
# exists: a sample removal is as good as the retrained model it imitates (method.md E9, E10),
# whichever way that moves a number.
JUDGED_BY_RETRAINING = ("remove_samples",)


def metric_rule_key(set_name: str | None, field: str) -> str:
    """The ``METRIC_DIRECTIONS`` key of ``field`` of set ``set_name`` (None: a scalar)."""
    if set_name is None:
        return field
    role = set_name if set_name in SET_ROLES else "eval"
    return f"{role}.{field}"


def judge(kind: str | None, set_name: str | None, field: str, before: Any, after: Any,
          reference: Any = None) -> str:
    """``good``, ``bad`` or ``neutral``: does ``before → after`` serve an edit of ``kind``?"""
    direction = METRIC_DIRECTIONS.get(metric_rule_key(set_name, field), {}).get(kind or "")
    if kind in JUDGED_BY_RETRAINING and _is_number(reference) and field != "count":
        direction = RETRAIN
    if not (_is_number(before) and _is_number(after)) or direction is None or before == after:
        return "neutral"
    if direction == RETRAIN:
        if not _is_number(reference):
            return "neutral"
        closer = abs(after - reference) - abs(before - reference)
        return "good" if closer < 0 else "bad" if closer > 0 else "neutral"
    better = after > before if direction == UP else after < before
    return "good" if better else "bad"


# Rows of the "at a glance" table per edit kind: (set, field); set "eval" is the first
# evaluation set, None a scalar metric.
_GLANCE: dict[str, tuple[tuple[str | None, str], ...]] = {
    "remove_class": (("forget", "accuracy"), ("eval", "accuracy_removed_class"),
                     ("eval", "accuracy_remaining_classes"), ("retain", "accuracy"),
                     (None, "score")),
    "remove_samples": (("forget", "accuracy"), ("retain", "accuracy"), ("eval", "accuracy"),
                       (None, "mia.efficacy"), (None, "score")),
    "relabel": (("relabeled", "accuracy"), ("forget", "accuracy"), ("retain", "accuracy"),
                ("eval", "accuracy"), (None, "score")),
}

# What the standard sets are, in words, in the "at a glance" table (other sets: their name).
_GLANCE_SET_LABELS: dict[str, dict[str, str]] = {
    "remove_class": {"forget": "removed class (training points)",
                     "retain": "retained training points"},
    "remove_samples": {"forget": "removed points", "retain": "retained training points"},
    "relabel": {"forget": "edited points, original labels",
                "relabeled": "edited points, corrected labels",
                "retain": "retained training points"},
}

COLOUR_LEGEND = {
    "remove_class": "For a class removal, the removed class's accuracy falling is green; the "
                    "overall accuracy, which loses that class by design, is grey.",
    "remove_samples": "For a sample removal, retraining is the reference: with a retrain job "
                      "on the same request, a change is green when it moved closer to the "
                      "retrained model's value; without one, the forgotten points' accuracy, "
                      "loss and membership inference are grey.",
    "relabel": "For a relabel, accuracy on the corrected labels rising is green, and on the "
               "original labels (a backdoor's attack success) falling is green.",
}

# --------------------------------------------------------------------------- formatting


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 4) -> str:
    """A readable value: ints as is, floats to ``digits`` significant digits, — for absent."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _cell(value: Any) -> dict[str, Any]:
    """A table cell: its text and whether it is a number (right-aligned)."""
    return {"text": number(value), "num": _is_number(value)}


def _change(before: Any, after: Any) -> str:
    if not (_is_number(before) and _is_number(after)):
        return "—"
    return f"{after - before:+.4g}" if after != before else "0"


def _label(key: str) -> str:
    return key.replace("_", " ")


def _shorten_lists(value: Any) -> Any:
    """A copy of ``value`` whose long lists show their first items and how many are left."""
    if isinstance(value, dict):
        return {k: _shorten_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            return [*value[:MAX_LIST_ITEMS], f"… {len(value) - MAX_LIST_ITEMS} more"]
        return [_shorten_lists(v) for v in value]
    return value


def _json(value: Any, depth: int = 0) -> str:
    """Indented JSON whose lists of plain values stay on one line (index lists read as rows,
    not one number per line); long lists are shortened first."""
    if depth == 0:
        value = _shorten_lists(value)
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_json(v, depth + 1)}"
                 for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_json(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, default=str)


def _ordered_keys(*mappings: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for mapping in mappings:
        keys += [k for k in mapping if k not in keys]
    return keys


def _scalars(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar in ``mapping``, nested dicts flattened, lists left
    out (histories and curves are figures)."""
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += _scalars(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            out.append((f"{prefix}{key}", value))
    return out


def _kv(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"label": _label(key), **_cell(value)} for key, value in pairs]


# --------------------------------------------------------------------------- the parts


def class_names_for(request: Mapping[str, Any]) -> list[str] | None:
    """Names of the labels of a job's data: the train dataset's if it is a built-in, else those
    of its built-in evaluation sets when they agree; None for uploads (indices are shown)."""
    names = builtin_class_names(request.get("train_dataset_id") or "")
    if names is not None:
        return names
    eval_ids = ((request.get("eval") or {}).get("datasets") or {}).values()
    found = {tuple(n) for n in (builtin_class_names(i) for i in eval_ids if isinstance(i, str))
             if n is not None}
    return list(found.pop()) if len(found) == 1 else None


def figure_data(request: Mapping[str, Any] | None, result: Mapping[str, Any]) -> dict[str, Any]:
    """What the figures are drawn from: the result, with the class names of the job's data
    unless the result names its classes itself. The page and the plot route both use it."""
    data = dict(result)
    if not data.get("class_names") and request:
        names = class_names_for(request)
        if names is not None:
            data["class_names"] = names
    return data


def describe_edit(edit: Mapping[str, Any], class_names: list[str] | None) -> str:
    """``remove class 8 (Bag)``, ``remove 120 training points``, ``relabel 40 training
    points``."""
    kind = edit.get("kind")
    if kind == "remove_class":
        removed = edit.get("class")
        named = (isinstance(removed, int) and class_names and 0 <= removed < len(class_names)
                 and class_names[removed] != str(removed))
        return f"remove class {removed}" + (f" ({class_names[removed]})" if named else "")
    if kind in ("remove_samples", "relabel"):
        verb = "remove" if kind == "remove_samples" else "relabel"
        return f"{verb} {len(edit.get('indices') or [])} training points"
    return str(kind or "unknown edit")


def _set_names(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Metric sets (dicts with an accuracy) in the order forget, relabeled, retain, evals."""
    names = [n for n in _ordered_keys(before, after)
             if isinstance(after.get(n, before.get(n)), dict)
             and "accuracy" in (after.get(n) or before.get(n) or {})]
    return sorted(names, key=lambda n: SET_ROLES.index(n) if n in SET_ROLES else len(SET_ROLES))


_SET_FIELDS = ("accuracy", "accuracy_remaining_classes", "accuracy_removed_class", "loss",
               "count")


def _metric_row(kind, set_name, field, before, after, reference) -> dict[str, Any]:
    return {
        "label": _label(field),
        "metric": f"{set_name}.{field}" if set_name else field,
        "before": _cell(before), "after": _cell(after), "change": _change(before, after),
        "verdict": judge(kind, set_name, field, before, after, reference),
        "reference": _cell(reference),
    }


def _lookup(metrics: Mapping[str, Any], set_name: str | None, field: str) -> Any:
    node: Any = metrics.get(set_name) if set_name else metrics
    for part in field.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def metric_tables(kind: str | None, before: Mapping[str, Any], after: Mapping[str, Any],
                  reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per-set rows (before, after, change, verdict, retrained) and the scalar metrics'."""
    reference = reference or {}
    sets = []
    set_names = _set_names(before, after)
    for name in set_names:
        b, a = before.get(name) or {}, after.get(name) or {}
        rows = [_metric_row(kind, name, field, b.get(field), a.get(field),
                            _lookup(reference, name, field))
                for field in _SET_FIELDS if field in b or field in a]
        sets.append({"name": name, "rows": rows})
    b_scalars, a_scalars = (dict(_scalars({k: v for k, v in metrics.items()
                                           if k not in set_names}))
                            for metrics in (before, after))
    scalars, notes = [], []
    for key in _ordered_keys(b_scalars, a_scalars):
        b, a = b_scalars.get(key), a_scalars.get(key)
        if isinstance(b, str) or isinstance(a, str):  # a name (e.g. the MIA's method)
            text = a if b in (None, a) else f"{b} → {a}"
            notes.append({"label": key, "text": text})
        else:
            scalars.append(_metric_row(kind, None, key, b, a, _lookup(reference, None, key)))
    return {"sets": sets, "scalars": scalars, "notes": notes}


def glance_rows(kind: str | None, before: Mapping[str, Any], after: Mapping[str, Any],
                reference: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The few numbers that judge an edit of ``kind`` (api.md metrics), first eval set."""
    reference = reference or {}
    evals = [n for n in _set_names(before, after) if n not in SET_ROLES]
    rows = []
    for set_name, field in _GLANCE.get(kind or "", ()):
        name = (evals[0] if evals else None) if set_name == "eval" else set_name
        if set_name == "eval" and name is None:
            continue
        b, a = _lookup(before, name, field), _lookup(after, name, field)
        if b is None and a is None:
            continue
        row = _metric_row(kind, name, field, b, a, _lookup(reference, name, field))
        if name:
            described = _GLANCE_SET_LABELS.get(kind or "", {}).get(name, name)
            row["label"] = f"{described}: {_label(field)}"
        rows.append(row)
    return rows


_SOLVER_FIELDS = ("algorithm", "iterations", "hvps", "residual", "normal_residual", "seconds",
                  "converged", "stop_reason")
# Result keys the page lays out itself; any other key is listed under "More result fields".
_KNOWN_RESULT_KEYS = {"edited_model_id", "scale", "step", "method", "selection", "solver",
                      "metrics", "timings", "training", "warnings", "class_names"}


def _solver_rows(solver: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = [k for k in _SOLVER_FIELDS if k in solver]
    keys += [k for k, v in solver.items() if k not in keys and not isinstance(v, list | dict)]
    rows = _kv((k, solver.get(k)) for k in keys)
    if isinstance(solver.get("scaling"), Mapping):
        rows.append({"label": "scaling (preconditioner auto)",
                     **_cell(scaling_text(solver["scaling"]))})
    return rows


def scaling_text(scaling: Mapping[str, Any]) -> str:
    """``preconditioner: auto``'s choice in words: what was kept, each attempt, the cost."""
    attempts = []
    for attempt in scaling.get("attempts") or []:
        if not isinstance(attempt, Mapping):
            continue
        text = (f"{attempt.get('preconditioner')}: {attempt.get('iterations')} iterations, "
                f"best validation objective {number(attempt.get('objective'))}")
        if attempt.get("handed_over"):
            text += ", handed over"
        if attempt.get("resumed_from") is not None:
            text += f", resumed from iteration {attempt['resumed_from']}"
        attempts.append(text)
    return (f"kept {scaling.get('chosen')} ({'; '.join(attempts) or 'no attempt'}); HVPs of "
            f"every solve {number(scaling.get('hvps_all_solves'))}")


def _per_layer_table(layers: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not layers:
        return None
    columns = [k for k in _ordered_keys(*layers) if k != "name"]
    return {"headers": ["layer", *(_label(c) for c in columns)],
            "rows": [[{"text": layer.get("name") or "(model)", "num": False},
                      *(_cell(layer.get(c)) for c in columns)] for layer in layers]}


def _timing_rows(timings: Mapping[str, Any]) -> dict[str, Any]:
    numbers = [s for s in timings.values() if _is_number(s)]
    return {"rows": _kv(timings.items()),
            "total": number(float(sum(numbers))) if numbers else None}


def _summary_rows(request: Mapping[str, Any], result: Mapping[str, Any],
                  class_names: list[str] | None) -> list[dict[str, Any]]:
    selection = result.get("selection") if isinstance(result.get("selection"), dict) else {}
    step = result.get("step") if isinstance(result.get("step"), dict) else {}
    pairs: list[tuple[str, Any]] = [
        ("edit", describe_edit(request.get("edit") or {}, class_names)),
        ("method", result.get("method") or request.get("method")),
    ]
    if selection:
        pairs += [("selected_parameters", selection.get("num_selected")),
                  ("modification_ratio", selection.get("ratio"))]
    if result.get("scale") is not None:
        mode = f" ({step['mode']})" if step.get("mode") else ""
        pairs.append(("step_scale_α", f"{number(result.get('scale'))}{mode}"))
    pairs += [(k, v) for k, v in result.items()
              if k not in _KNOWN_RESULT_KEYS and not isinstance(v, dict | list)]
    return _kv(pairs)


def _step_rows(step: Mapping[str, Any], scale: Any) -> list[dict[str, Any]]:
    """Mode, the chosen α and its objective, beside the unedited model's (``baseline``, α = 0);
    the curve itself is a figure."""
    chosen = next((point for point in step.get("curve") or []
                   if isinstance(point, dict) and point.get("scale") == scale), {})
    pairs: list[tuple[str, Any]] = [("mode", step.get("mode")), ("chosen α", scale),
                                    ("objective at chosen α", chosen.get("objective"))]
    for key, value in _scalars(step):
        if key != "mode":
            pairs.append((key.replace("baseline.", "unedited model: ", 1), value))
    return _kv((key, value) for key, value in pairs if value is not None)


def _figures(plots: Mapping[str, bytes | None]) -> list[dict[str, Any]]:
    from gif.plots import PLOTS

    figures = []
    for name, png in plots.items():
        caption = PLOTS[name].caption if name in PLOTS else ""
        data = base64.b64encode(png).decode("ascii") if png is not None else None
        figures.append({"name": name, "caption": caption, "data": data})
    return figures


def _job_facts(job: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]],
               ) -> list[dict[str, Any]]:
    request = job.get("request") or {}
    pairs: list[tuple[str, Any]] = [(key, _timestamp(job.get(f"{key}_at")))
                                    for key in ("created", "started", "finished")]
    pairs.append(("model", _model_label(models.get("source") or {"id": request.get("model_id")})))
    pairs.append(("train_dataset", request.get("train_dataset_id")))
    edited_id = (job.get("result") or {}).get("edited_model_id")
    if edited_id or models.get("edited"):
        pairs.append(("edited_model", _model_label(models.get("edited") or {"id": edited_id})))
    return _kv(pairs)


def _model_label(model: Mapping[str, Any]) -> str:
    """``name (arch, id)`` of a model, or just its id."""
    parts = [str(model[k]) for k in ("arch", "id") if model.get(k)]
    name = model.get("name")
    return f"{name} ({', '.join(parts)})" if name else ", ".join(parts)


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _timestamp(value: Any) -> Any:
    """``2026-11-29 09:00:12 UTC`` for an ISO timestamp (the job JSON has the exact one)."""
    moment = _parse_time(value)
    if moment is None:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if moment.tzinfo else "")


def _duration(job: Mapping[str, Any]) -> str | None:
    started, finished = _parse_time(job.get("started_at")), _parse_time(job.get("finished_at"))
    if started is None or finished is None:
        return None
    return f"{(finished - started).total_seconds():.3g} s"


def _succeeded_sections(request, result, plots, reference, class_names) -> dict[str, Any]:
    kind = (request.get("edit") or {}).get("kind")
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    before = metrics.get("before") if isinstance(metrics.get("before"), dict) else {}
    after = metrics.get("after") if isinstance(metrics.get("after"), dict) else {}
    ref_after = (reference or {}).get("metrics") or {}
    solver = result.get("solver") if isinstance(result.get("solver"), dict) else {}
    step = result.get("step") if isinstance(result.get("step"), dict) else {}
    selection = result.get("selection") if isinstance(result.get("selection"), dict) else {}
    training = result.get("training") if isinstance(result.get("training"), dict) else {}
    timings = result.get("timings") if isinstance(result.get("timings"), dict) else {}
    extra = {k: v for k, v in result.items()
             if k not in _KNOWN_RESULT_KEYS and isinstance(v, dict | list)}
    return {
        "glance": glance_rows(kind, before, after, ref_after),
        "colour_legend": COLOUR_LEGEND.get(kind or ""),
        "summary": _summary_rows(request, result, class_names),
        "metrics": metric_tables(kind, before, after, ref_after) if before or after else None,
        "figures": _figures(plots),
        "training": _kv(_scalars(training)) if training else None,
        "solver": _solver_rows(solver) if solver else None,
        "step": _step_rows(step, result.get("scale")) if step else None,
        "per_layer": _per_layer_table(selection.get("per_layer") or []),
        "timings": _timing_rows(timings) if timings else None,
        "extra": _json(extra) if extra else None,
    }


# --------------------------------------------------------------------------- entry points


@cache
def _environment() -> Environment:
    # Autoescape everywhere (every template, and strings): escaping is the default, not a
    # call at each site. StrictUndefined: a template asking for a missing name fails loudly.
    return Environment(loader=PackageLoader("service", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_plots(result: Mapping[str, Any], request: Mapping[str, Any] | None = None,
                 ) -> dict[str, bytes | None]:
    """PNG bytes of each registered figure the result has data for, in registry order (None
    for a figure whose data is there but could not be drawn)."""
    from gif.plots import PLOTS

    data = figure_data(request, result)
    pngs: dict[str, bytes | None] = {}
    for name, plot in PLOTS.items():
        if not plot.has_data(data):
            continue
        try:
            pngs[name] = plot.draw(data)
        except (KeyError, TypeError, ValueError, IndexError):
            # A result of another shape (an older engine, a partial result) loses one figure,
            # not the whole page.
            logger.warning("report: could not draw %r from the result", name, exc_info=True)
            pngs[name] = None
    return pngs


def render_report(job: Mapping[str, Any], plots: Mapping[str, bytes | None] | None = None,
                  models: Mapping[str, Mapping[str, Any]] | None = None,
                  reference: Mapping[str, Any] | None = None,
                  erased: Sequence[Mapping[str, Any]] = ()) -> str:
    """The report page of ``job`` (the API job object as a dict).

    ``plots``: PNG bytes by figure name (``render_plots``), shown for succeeded jobs.
    ``models``: optional ``{"source": {...}, "edited": {...}}`` model objects, for names.
    ``reference``: optional ``{"job_id": …, "metrics": {...}}``, the after-metrics of a
    succeeded ``retrain`` job on the same request, shown beside the edit's and used to judge
    the metrics whose rule is "closer to retraining".
    ``erased``: ``{kind, id, name, erased_at, reason}`` of the job's inputs erased since (one
    line each at the top: the edit's numbers came from data the server no longer holds)."""
    models = models or {}
    request = job.get("request") or {}
    result = job.get("result") if isinstance(job.get("result"), dict) else {}
    status = str(job.get("status", "unknown"))
    succeeded = status == "succeeded" and bool(result)
    class_names = figure_data(request, result).get("class_names")
    page: dict[str, Any] = {
        "title": f"gif-service report {job.get('id', '')}",
        "csp": CONTENT_SECURITY_POLICY,
        "job_id": job.get("id"),
        "status": status,
        "headline": describe_edit(request.get("edit") or {}, class_names) if request else None,
        "method": result.get("method") or request.get("method"),
        "duration": _duration(job),
        "facts": _job_facts(job, models),
        "warnings": result_warnings(result) if succeeded else [],
        "error": job.get("error") if isinstance(job.get("error"), dict) else None,
        "progress": _kv((job.get("progress") or {}).items()) if not succeeded else None,
        "pending": status in ACTIVE_STATUSES,
        "succeeded": succeeded,
        "reference": ({"job_id": reference.get("job_id")}
                      if succeeded and reference and reference.get("metrics") else None),
        "request_json": _json(dict(request)),
        "erased": [{**e, "erased_at": _timestamp(e.get("erased_at"))} for e in erased],
    }
    if succeeded:
        usable_reference = reference if page["reference"] else None
        page.update(_succeeded_sections(request, result, plots or {}, usable_reference,
                                        class_names))
    return _environment().get_template("report.html.j2").render(page=page)
