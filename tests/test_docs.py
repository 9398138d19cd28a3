"""The project's docs stand alone and stay true to the code.

- every route the app serves (its OpenAPI document) is named in ``docs/api.md``, and every route
  named there is served;
- the normalised request shown in ``docs/api.md`` is the one the code makes;
- the architecture definitions of ``docs/models.md``, run as written, give state dicts that load
  strictly into the registry's models;
- every relative link of ``README.md`` and ``docs/*.md`` resolves inside the repository (file
  and, for Markdown targets, heading anchor), and nothing points at a spec outside it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API_DOC = REPO / "docs" / "api.md"
MODELS_DOC = REPO / "docs" / "models.md"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# `GET /v1/jobs/{job_id}` in backticks; a query string (`GET /v1/jobs?status=`) is dropped.
ROUTE_IN_DOC = re.compile(r"`(" + "|".join(HTTP_METHODS) + r") (/[^`\s?]*)[^`]*`")


def doc_routes(text: str) -> set[tuple[str, str]]:
    return {(method, path) for method, path in ROUTE_IN_DOC.findall(text)}


def served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, runner="none"))
    paths = app.openapi()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops
            if method.upper() in HTTP_METHODS}


def test_api_doc_names_every_served_route_and_no_other(tmp_path):
    served = served_routes(tmp_path)
    documented = doc_routes(API_DOC.read_text())
    assert served, "the app serves no route?"
    missing = sorted(served - documented)
    unknown = sorted(documented - served)
    assert not missing, f"served but not in docs/api.md: {missing}"
    assert not unknown, f"in docs/api.md but not served: {unknown}"


def test_route_pattern_reads_query_strings_and_templates():
    text = "`GET /v1/jobs?status=running` and `DELETE /v1/models/{model_id}`, not GET /x"
    assert doc_routes(text) == {("GET", "/v1/jobs"), ("DELETE", "/v1/models/{model_id}")}


def _block_after(text: str, marker: str) -> str:
    """The fenced block that follows the line ``marker``."""
    match = re.search(re.escape(marker) + r"\s*\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"no fenced block after {marker!r}"
    return match.group(1)


def test_api_doc_shows_the_normalised_request_the_code_makes():
    from service.schemas import JobCreate

    shown = json.loads(_block_after(API_DOC.read_text(), "<!-- normalised-request -->"))
    body = {key: shown[key] for key in ("model_id", "train_dataset_id", "edit")}
    assert shown == JobCreate.model_validate(body).normalised()


MODEL_BLOCK = re.compile(r"<!-- model: (\w+) (\{.*?\}) -->\s*\n```python\n(.*?)\n```", re.S)


def model_blocks() -> list[tuple[str, dict, str]]:
    return [(name, json.loads(kwargs), code)
            for name, kwargs, code in MODEL_BLOCK.findall(MODELS_DOC.read_text())]


def test_models_doc_defines_every_builtin_architecture():
    from gif.registry import _BUILTINS

    assert sorted(name for name, _, _ in model_blocks()) == sorted(a.name for a in _BUILTINS)


@pytest.mark.parametrize("name,kwargs,code", model_blocks(), ids=lambda v: str(v)[:12])
def test_models_doc_definitions_load_strictly_into_the_registry(name, kwargs, code):
    """Plain PyTorch as the page writes it → the registry's model, strictly, and the outputs
    agree (same keys and shapes are not enough: a wrong layer order would also load)."""
    import torch

    from gif.checkpoint import load_state_dict_strict
    from gif.registry import build_model
    from gif.spec import ModelSpec

    namespace: dict = {}
    exec(compile(code, f"docs/models.md:{name}", "exec"), namespace)  # noqa: S102 - our own doc
    torch.manual_seed(0)
    theirs = namespace[name](**kwargs).eval()
    ours = build_model(ModelSpec(arch=name, arch_kwargs=kwargs))
    load_state_dict_strict(ours, {k: v.clone() for k, v in theirs.state_dict().items()})
    flat = name in ("linear", "mlp")
    shape = (2, kwargs["in_features"]) if flat else (
        2, kwargs.get("in_channels", 3), kwargs.get("input_size", 32), kwargs.get("input_size", 32))
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs(x))


# ------------------------------------------------------------------------------------ links

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _without_code(text: str) -> str:
    """Markdown outside fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens, repeats numbered."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """The links of ``text`` (default: the file's own) that do not resolve from ``path``."""
    problems = []
    for groups in LINK.findall(_without_code(path.read_text() if text is None else text)):
        target = groups[0] or groups[1]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if REPO not in resolved.parents and resolved != REPO:
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(path):
    assert broken_links(path) == []


def test_link_check_catches_what_it_should():
    text = ("[a](../README.md#limits) [b](nope.md) [c](api.md#no-such) [d](https://example.org) "
            "`[e](ignored.md)` ![f](screenshots/none.png) [g](../../outside.md)\n")
    assert broken_links(API_DOC, text) == [
        "nope.md: no such file", "api.md#no-such: no heading #no-such in api.md",
        "screenshots/none.png: no such file", "../../outside.md: outside the repository"]


def test_heading_anchors_follow_github():
    sample = REPO / "docs" / "method.md"
    anchors = heading_anchors(sample)
    assert {"e9-the-step-size", "e10-the-training-methods", "the-influence-methods"} <= anchors


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    suffixes = {".py", ".md", ".toml", ".sh", ".yml", ".yaml", ".j2", ".cfg", ".ini", ".txt"}
    return [REPO / name for name in listed
            if Path(name).suffix in suffixes or Path(name).name == "Dockerfile"]


def test_nothing_points_at_specs_outside_the_repository():
    """The clone is all a user has: no ``../shared/docs`` and no bare ``MATH.md``-style names
    of the specs the project was written from; the project's own docs replace them."""
    outside = re.compile(r"shared/docs|\b(?:MATH|API|MODELS)\.md\b")
    offenders = []
    for path in tracked_text_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert offenders == []


def test_api_doc_lists_every_job_error_code_and_problem_slug():
    """The failed job's ``error.code`` values (the engine's ``GifError`` codes and the worker's
    own) and every problem ``type`` slug the service raises are named in docs/api.md."""
    import gif.errors

    text = API_DOC.read_text()
    engine = {cls.code for cls in vars(gif.errors).values()
              if isinstance(cls, type) and issubclass(cls, gif.errors.GifError)
              and cls is not gif.errors.GifError}
    # The worker's codes, and those the job-row owner and the runners write for a lost run.
    sources = ("worker", "service/jobs", "service/runners")
    worker_source = "\n".join(p.read_text() for d in sources for p in (REPO / d).glob("*.py"))
    worker = set(re.findall(r'"code":\s*"(\w+)"|code="(\w+)"', worker_source))
    codes = engine | {code for pair in worker for code in pair if code}
    assert {"timeout", "worker_lost", "out_of_memory", "internal_error"} <= codes
    assert sorted(c for c in codes if f"`{c}`" not in text) == []
    service_source = "\n".join(p.read_text() for p in (REPO / "service").rglob("*.py"))
    slugs = set(re.findall(r'slug="([a-z-]+)"', service_source))
    assert {"validation-error", "not-found", "unauthorized"} <= slugs
    assert sorted(s for s in slugs if f"`{s}`" not in text) == []
