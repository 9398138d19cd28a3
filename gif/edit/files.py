"""``run_edit`` on files: the request and spec as JSON, a checkpoint, datasets by path or id."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from gif.edit.hooks import EditHooks, EditOutcome, LoadedModel
from gif.errors import InvalidRequest
from gif.request import EditRequest
from gif.spec import ModelSpec


def _parse_json(value: str | Path | Mapping, what: str) -> Any:
    """A dict as is, a JSON string, or the path of a JSON file."""
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as err:
            raise InvalidRequest(f"cannot read the {what} file {path}: {err.strerror}",
                                 loc=(what,)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"the {what} is not valid JSON: {err}", loc=(what,)) from None


def _validated(model_cls: type[pydantic.BaseModel], payload: Any, what: str):
    try:
        return model_cls.model_validate(payload)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        loc = (what, *first["loc"])
        where = ".".join(str(p) for p in first["loc"]) or what
        raise InvalidRequest(f"invalid {what}: {where}: {first['msg']}", loc=loc,
                             details={"errors": err.errors(include_url=False,
                                                           include_context=False)}) from None


def edit_from_files(
    request_json: str | Path | Mapping,
    model_path: str | Path,
    spec_json: str | Path | Mapping,
    train_id_or_path: str,
    evals: Mapping[str, str] | None = None,
    hooks: EditHooks | None = None,
    holdout: str | None = None,
) -> EditOutcome:
    """``run_edit`` on files: the request and spec (dicts, JSON text or JSON files), a checkpoint
    read safely (``gif.checkpoint.read_state_dict``), datasets by path or built-in id. The
    request's ``eval.datasets`` are loaded first, then ``evals`` (which win on equal names).
    ``holdout`` (path or id) overrides the request's ``step.holdout_dataset_id``, which names
    the holdout set (method.md E9) here as a path or built-in id."""
    from gif.checkpoint import read_state_dict
    from gif.data import load_dataset
    from gif.edit.run import run_edit

    request = _validated(EditRequest, _parse_json(request_json, "request"), "request")
    spec = _validated(ModelSpec, _parse_json(spec_json, "spec"), "spec")
    state_dict = read_state_dict(model_path)
    train = load_dataset(train_id_or_path)
    sources = {**request.eval.datasets, **(evals or {})}
    eval_sets = {name: load_dataset(source) for name, source in sources.items()}
    if holdout is not None:
        step = request.step.model_copy(update={"holdout_dataset_id": holdout})
        request = request.model_copy(update={"step": step})
    holdout_id = request.step.holdout_dataset_id
    holdout_set = None if holdout_id is None or request.trains else load_dataset(holdout_id)
    return run_edit(request, LoadedModel(spec, state_dict), train, eval_sets, hooks, holdout_set)

