"""The job report: one self-contained HTML page per job (``GET /v1/jobs/{id}/report``).

Self-contained means it can be saved, mailed or archived and still show everything: CSS is
inline, the figures of ``gif.plots`` are inlined as ``data:image/png`` URIs, there is no script
and no reference to any other URL (a Content-Security-Policy in the page forbids loading
anything but inline styles and data-URI images). Every value that came from a user — model
names, request fields, error messages — goes through ``html.escape``: a model named
``<script>…`` shows as text.

A succeeded job shows the normalised request, the timings per phase, the solver diagnostics
(MATH.md E7/E8), the selection, the metrics before/after (accuracy, loss and count per set,
remaining/removed-class accuracy, score of E9, membership inference, retained-gradient norm)
and the four figures. Any other job shows its status, progress and error, without figures.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# Plots in page order, with the caption shown under each (names are gif.plots.PLOTS keys).
PLOT_CAPTIONS: dict[str, str] = {
    "convergence": "Solver convergence: relative residual and normal-equation residual per "
                   "iteration (MATH.md E7/E8).",
    "scale": "Step-size search on the held-out validation split: objective against the step "
             "scale α (MATH.md E9).",
    "per_class": "Per-class accuracy before and after the edit, per evaluated set.",
    "per_layer": "Share of each layer's parameters changed and the norm of its update.",
}

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Long index lists (remove_samples / relabel) are shortened in the page; the job JSON has them.
MAX_LIST_ITEMS = 32

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1d2330;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d8dde6;padding-bottom:.25rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.92rem}
th,td{border:1px solid #d8dde6;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-weight:600;
font-size:.9rem;color:#fff}.succeeded{background:#1f7a3f}.failed{background:#b3261e}
.cancelled{background:#6b6f78}.running{background:#1a5fb4}.queued{background:#a86a00}
.meta{color:#5a6170;font-size:.9rem}.up{color:#1f7a3f}.down{color:#b3261e}
pre{background:#f6f8fa;border:1px solid #d8dde6;padding:.8rem;overflow-x:auto;
font-size:.85rem}.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));
gap:1rem;align-items:start}figure{margin:0}figure img{max-width:100%;
border:1px solid #d8dde6}figcaption{color:#5a6170;font-size:.9rem}
.error{border-left:4px solid #b3261e;background:#fdf0ef;padding:.6rem 1rem}
.note{color:#5a6170;font-style:italic}
"""


def _e(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any, digits: int = 4) -> str:
    """A readable number: ints as is, floats to ``digits`` significant digits, — for absent."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return _e(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric_from: int = 1) -> str:
    """A table from already-escaped cells; columns from ``numeric_from`` on are right-aligned.
    All-empty ``headers`` make a key/value table without a header row."""
    headers = list(headers)
    head = "".join(f"<th>{h}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = []
    for row in rows:
        cells = [
            f'<td class="num">{cell}</td>' if index >= numeric_from else f"<td>{cell}</td>"
            for index, cell in enumerate(row)
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return '<p class="note">Nothing recorded.</p>'
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _shorten_lists(value: Any) -> Any:
    """A copy of ``value`` whose long lists show their first items and how many are left."""
    if isinstance(value, dict):
        return {k: _shorten_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            return [*value[:MAX_LIST_ITEMS], f"… {len(value) - MAX_LIST_ITEMS} more"]
        return [_shorten_lists(v) for v in value]
    return value


def _delta(before: Any, after: Any) -> str:
    """``after - before`` with a sign and a colour class, — when either is not a number."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, after)):
        return "—"
    change = after - before
    css = "up" if change > 0 else "down" if change < 0 else ""
    return f'<span class="{css}">{change:+.4g}</span>'


# ---------------------------------------------------------------------------------------------
# Sections


def _header(job: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]]) -> str:
    status = str(job.get("status", "unknown"))
    request = job.get("request") or {}
    lines = [
        f"<h1>Edit report <code>{_e(job.get('id'))}</code></h1>",
        f'<p><span class="badge {_e(status)}">{_e(status)}</span></p>',
    ]
    rows = [("created", job.get("created_at")), ("started", job.get("started_at")),
            ("finished", job.get("finished_at"))]
    source = models.get("source") or {"id": request.get("model_id")}
    rows.append(("model", _model_label(source)))
    rows.append(("train dataset", request.get("train_dataset_id")))
    edited_id = (job.get("result") or {}).get("edited_model_id")
    if edited_id or models.get("edited"):
        rows.append(("edited model", _model_label(models.get("edited") or {"id": edited_id})))
    lines.append(_table(["", ""], [[_e(k), _e(v)] for k, v in rows], numeric_from=2))
    return "\n".join(lines)


def _model_label(model: Mapping[str, Any]) -> str:
    """``name (arch, id)`` of a model, or just its id (escaped later by the caller)."""
    parts = [str(model[k]) for k in ("arch", "id") if model.get(k)]
    name = model.get("name")
    return f"{name} ({', '.join(parts)})" if name else ", ".join(parts)


def _edit_summary(request: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    edit = request.get("edit") or {}
    kind = edit.get("kind")
    if kind == "remove_class":
        what = f"remove class {edit.get('class')}"
    elif kind in ("remove_samples", "relabel"):
        what = f"{kind.replace('_', ' ')} of {len(edit.get('indices') or [])} training points"
    else:
        what = str(kind)
    selection = result.get("selection") or {}
    step = result.get("step") or {}
    rows = [
        ["edit", _e(what)],
        ["method", _e(result.get("method") or request.get("method"))],
        ["selected parameters", _number(selection.get("num_selected"))],
        ["modification ratio", _number(selection.get("ratio"))],
        ["step scale α", f"{_number(result.get('scale'))} ({_e(step.get('mode'))})"],
    ]
    return "<h2>Summary</h2>" + _table(["", ""], rows, numeric_from=2)


def _request_section(request: Mapping[str, Any]) -> str:
    text = json.dumps(_shorten_lists(dict(request)), indent=2, ensure_ascii=False, sort_keys=True)
    return f"<h2>Request (normalised)</h2><pre>{_e(text)}</pre>"


def _timings_section(timings: Mapping[str, Any]) -> str:
    rows = [[_e(phase), _number(seconds)] for phase, seconds in timings.items()]
    numbers = [s for s in timings.values() if isinstance(s, int | float)]
    if numbers:
        rows.append(["<b>total</b>", f"<b>{_number(float(sum(numbers)))}</b>"])
    return "<h2>Timings per phase</h2>" + _table(["phase", "seconds"], rows)


_SOLVER_FIELDS = ("algorithm", "iterations", "hvps", "residual", "normal_residual", "seconds",
                  "converged", "stop_reason")


def _solver_section(solver: Mapping[str, Any]) -> str:
    keys = [k for k in _SOLVER_FIELDS if k in solver]
    keys += [k for k, v in solver.items()
             if k not in _SOLVER_FIELDS and not isinstance(v, list | dict)]
    rows = [[_e(key.replace("_", " ")), _number(solver.get(key))] for key in keys]
    return "<h2>Solver diagnostics</h2>" + _table(["", "value"], rows)


def _per_layer_section(layers: list[Mapping[str, Any]]) -> str:
    if not layers:
        return ""
    columns = [k for k in layers[0] if k != "name"]
    rows = [[_e(layer.get("name")), *(_number(layer.get(c)) for c in columns)] for layer in layers]
    headers = ["layer", *(_e(c.replace("_", " ")) for c in columns)]
    return "<h3>Selection per layer</h3>" + _table(headers, rows)


_SET_FIELDS = ("accuracy", "loss", "count", "accuracy_remaining_classes",
               "accuracy_removed_class")


def _metrics_section(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Per-set before/after tables, then the scalar metrics (score, MIA, gradient norm)."""
    parts = ["<h2>Metrics before and after the edit</h2>"]
    set_names = [n for n in _ordered_keys(before, after)
                 if isinstance(after.get(n, before.get(n)), dict)
                 and "accuracy" in (after.get(n) or before.get(n) or {})]
    for name in set_names:
        b, a = before.get(name) or {}, after.get(name) or {}
        rows = [[_e(field.replace("_", " ")), _number(b.get(field)), _number(a.get(field)),
                 _delta(b.get(field), a.get(field))]
                for field in _SET_FIELDS if field in b or field in a]
        parts.append(f"<h3>{_e(name)}</h3>"
                     + _table(["", "before", "after", "change"], rows))
    scalars = []
    for key in _ordered_keys(before, after):
        if key in set_names:
            continue
        for label, b, a in _flatten_scalars(key, before.get(key), after.get(key)):
            scalars.append([_e(label), _number(b), _number(a), _delta(b, a)])
    if scalars:
        parts.append("<h3>Scores</h3>" + _table(["", "before", "after", "change"], scalars))
    return "\n".join(parts)


def _ordered_keys(*mappings: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for mapping in mappings:
        keys += [k for k in mapping if k not in keys]
    return keys


def _flatten_scalars(label: str, before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """(label, before, after) of each scalar under ``label`` (nested dicts as ``a.b``)."""
    if isinstance(before, dict) or isinstance(after, dict):
        b, a = before if isinstance(before, dict) else {}, after if isinstance(after, dict) else {}
        out = []
        for key in _ordered_keys(b, a):
            out += _flatten_scalars(f"{label}.{key}", b.get(key), a.get(key))
        return out
    if isinstance(before, list) or isinstance(after, list):
        return []
    return [(label, before, after)]


def _plots_section(plots: Mapping[str, bytes | None]) -> str:
    parts = ['<h2>Figures</h2><div class="figures">']
    for name, caption in PLOT_CAPTIONS.items():
        png = plots.get(name)
        if png is None:
            parts.append(f'<p class="note">{_e(name)}: no data for this figure.</p>')
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="plot-{_e(name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{_e(name)} plot"><figcaption>{_e(caption)}</figcaption></figure>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def _unfinished_section(job: Mapping[str, Any]) -> str:
    """Status, progress and error of a job that did not succeed (or has not yet)."""
    parts = []
    error = job.get("error")
    if error:
        parts.append(
            f'<h2>Error</h2><div class="error"><p><b>{_e(error.get("code"))}</b></p>'
            f"<p>{_e(error.get('message'))}</p></div>"
        )
    progress = job.get("progress")
    if progress:
        rows = [[_e(k), _number(v)] for k, v in progress.items()]
        parts.append("<h2>Progress</h2>" + _table(["", "value"], rows))
    status = job.get("status")
    if status in ("queued", "running"):
        parts.append('<p class="note">The job has not finished; reload this page for news. '
                     "Figures appear when it has succeeded.</p>")
    else:
        parts.append('<p class="note">No figures: the job did not succeed.</p>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Entry points


def render_plots(result: Mapping[str, Any],
                 plot_functions: Mapping[str, Callable[[dict], bytes]] | None = None,
                 ) -> dict[str, bytes | None]:
    """PNG bytes of each figure of ``result`` (None where the result has no data for it)."""
    if plot_functions is None:
        from gif.plots import PLOTS as plot_functions
    from gif.plots import MissingPlotData

    pngs: dict[str, bytes | None] = {}
    for name, function in plot_functions.items():
        try:
            pngs[name] = function(dict(result))
        except MissingPlotData:
            pngs[name] = None
        except (KeyError, TypeError, ValueError, IndexError):
            # A result of another shape (an older engine, a partial result) loses one figure,
            # not the whole page.
            logger.warning("report: could not draw %r from the result", name, exc_info=True)
            pngs[name] = None
    return pngs


def render_report(job: Mapping[str, Any], plots: Mapping[str, bytes | None] | None = None,
                  models: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The report page of ``job`` (the API job object as a dict).

    ``plots``: PNG bytes by plot name (``render_plots``), used for succeeded jobs only.
    ``models``: optional ``{"source": {...}, "edited": {...}}`` model objects, for names."""
    models = models or {}
    request = job.get("request") or {}
    result = job.get("result") or {}
    sections = [_header(job, models)]
    if job.get("status") == "succeeded" and result:
        metrics = result.get("metrics") or {}
        sections += [
            _edit_summary(request, result),
            _metrics_section(metrics.get("before") or {}, metrics.get("after") or {}),
            _plots_section(plots or {}),
            _solver_section(result.get("solver") or {}),
            _per_layer_section((result.get("selection") or {}).get("per_layer") or []),
            _timings_section(result.get("timings") or {}),
        ]
    else:
        sections.append(_unfinished_section(job))
    sections.append(_request_section(request))
    title = f"gif-service report {job.get('id', '')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
