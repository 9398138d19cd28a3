"""The ``gif`` command: edit a checkpoint on this machine, no server needed.

    gif edit --model CKPT --spec SPEC.json --train DATA --request REQUEST.json \\
             --out EDITED.safetensors [--eval NAME=DATA ...] [--holdout DATA] [--plots DIR]

``DATA`` is a dataset file (``.npz`` / safetensors) or a built-in id such as
``builtin:fashion-mnist:train``. The result JSON (api.md job ``result``) goes to stdout,
the progress bar and errors to stderr, so ``gif edit ... > result.json`` works.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gif.errors import GifError
from gif.progress import PhaseProgress

EXIT_GIF_ERROR = 1  # the edit could not run (bad input, solver failure): message on stderr


def _parse_eval(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    evals = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise click.BadParameter(f"expected NAME=DATA, got {value!r}")
        if name in evals:
            raise click.BadParameter(f"evaluation set {name!r} given twice")
        evals[name] = source
    return evals


def _event_printer(bar: PhaseProgress, verbose: bool):
    def event(level: str, phase: str, message: str, data: dict) -> None:
        if verbose or level in ("warning", "error"):
            bar.write(f"[{level}] {phase}: {message}")

    return event


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gif-service", prog_name="gif")
def main() -> None:
    """Edit trained PyTorch classifiers with generalized influence functions (GIF)."""


@main.command("edit", short_help="Edit a model; print the result JSON.")
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint: safetensors, or a PyTorch state dict (loaded with weights_only).")
@click.option("--spec", "spec_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model spec JSON: arch, arch_kwargs, input preprocessing (api.md).")
@click.option("--train", "train", required=True, metavar="DATA",
              help="Training data the model was fitted on: a .npz/safetensors file or a "
                   "built-in id (builtin:fashion-mnist:train).")
@click.option("--request", "request_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Edit request JSON: the job body of api.md without model_id/train_dataset_id.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the edited checkpoint (safetensors).")
@click.option("--eval", "evals", multiple=True, callback=_parse_eval, metavar="NAME=DATA",
              help="Evaluation set (repeatable), e.g. test=builtin:fashion-mnist:test; added to "
                   "the request's eval.datasets. Only evaluated, never used to tune.")
@click.option("--holdout", "holdout", metavar="DATA",
              help="Data the model never trained on (e.g. your own validation split, never a "
                   "test set), used only to tune a sample removal (method.md E9); sets "
                   "step.holdout_dataset_id.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write here a PNG of each figure the result has data for "
                   "(convergence, path, scale, per_class, per_layer, ...).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True, help="Print every event on stderr.")
def edit(model_path: Path, spec_path: Path, train: str, request_path: Path, out_path: Path,
         evals: dict[str, str], holdout: str | None, plots_dir: Path | None, quiet: bool,
         verbose: bool) -> None:
    """Edit a model (remove a class or samples, relabel points) and print the result JSON."""
    from gif.checkpoint import write_safetensors
    from gif.edit import EditHooks, Progress, edit_from_files

    bar = PhaseProgress(enabled=not quiet)
    hooks = EditHooks(progress=bar, event=_event_printer(bar, verbose))
    try:
        outcome = edit_from_files(request_path, model_path, spec_path, train, evals, hooks,
                                  holdout=holdout)
        bar(Progress("save"))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(outcome.state_dict, out_path)
        if plots_dir is not None:
            _write_plots(outcome.result, plots_dir)
    except GifError as err:
        bar.close()
        where = ".".join(str(p) for p in getattr(err, "loc", ()) or ())
        suffix = f" (at {where})" if where else ""
        click.echo(f"error [{err.code}]{suffix}: {err.message}", err=True)
        sys.exit(EXIT_GIF_ERROR)
    except OSError as err:  # the output or plot directory cannot be written
        bar.close()
        click.echo(f"error [io]: {err.filename or ''}: {err.strerror or err}", err=True)
        sys.exit(EXIT_GIF_ERROR)
    bar.close()
    click.echo(json.dumps(outcome.result, indent=2))


def _write_plots(result: dict, directory: Path) -> None:
    """One PNG per registered figure the result has data for (``gif.plots.PLOTS``)."""
    from gif.plots import PLOTS

    directory.mkdir(parents=True, exist_ok=True)
    for name, plot in PLOTS.items():
        if plot.has_data(result):
            (directory / f"{name}.png").write_bytes(plot(result))


if __name__ == "__main__":  # pragma: no cover
    main()
