"""The ``soundception`` command: a root group whose subcommands load their side lazily.

``featurize`` and ``inspect`` come from :mod:`featurize.cli`, ``train`` and ``evaluate`` from
:mod:`train.cli`, so ``soundception featurize --help`` works with only the featurize extra
installed, and the trainer's box never imports dask.
"""

from __future__ import annotations

import importlib

import click

from soundception.shared.errors import command_errors

SUBCOMMANDS = {
    "featurize": ("soundception.featurize.cli", "featurize_command"),
    "inspect": ("soundception.featurize.cli", "inspect_command"),
    "synth": ("soundception.featurize.cli", "synth_command"),
    "train": ("soundception.train.cli", "train_command"),
    "evaluate": ("soundception.train.cli", "evaluate_command"),
    "fit-head": ("soundception.compose", "fit_head_command"),
    "thresholds": ("soundception.train.cli", "thresholds_command"),
    "calibrate": ("soundception.train.cli", "calibrate_command"),
    "predict": ("soundception.compose", "predict_command"),
    "explain": ("soundception.compose", "explain_command"),
    "score": ("soundception.train.score", "score_command"),
    "search": ("soundception.compose", "search_command"),
    "review": ("soundception.cli", "review_command"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            extra = module_name.split(".")[0]
            raise click.ClickException(
                f"'{name}' needs the {extra} extra: pip install 'soundception[{extra}]' ({error})"
            ) from None
        return getattr(module, attribute)


@click.group(cls=LazyGroup)
@click.version_option(package_name="soundception")
def main() -> None:
    """Soundception: bird recordings -> multiscale spectrogram store -> attention Inception-v4."""


@click.command("review")
@click.argument("predictions", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the page [default: PREDICTIONS/review].")
@click.option("--top", type=int, default=10, show_default=True, help="Best detections per species, each shown.")
@click.option("--per-bin", type=int, default=5, show_default=True, help="Detections drawn from each score bin per species.")
@click.option("--bins", type=int, default=5, show_default=True, help="Equal score bins over [the run's --min-score, 1].")
@click.option("--context", "context_seconds", type=float, default=1.0, show_default=True,
              help="Seconds of audio shown and played on each side of a detection.")
@click.option("--classes", multiple=True, help="Only this species (class id or name); repeatable [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stratified sample.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@command_errors(interrupted="interrupted: rerun the same command (clips already made are reused)")
def review_command(predictions: str, out: str | None, top: int, per_bin: int, bins: int, context_seconds: float,
                   classes: tuple[str, ...], seed: int, no_progress: bool) -> None:
    """Write a page (open its index.html from disk) to listen to, look at and judge the detections of a
    `predict --segments` output folder PREDICTIONS, and export the decisions as CSV or a Raven table."""
    from soundception.review import ReviewOptions, build_review

    options = ReviewOptions(top=top, per_bin=per_bin, bins=bins, context_seconds=context_seconds,
                            classes=tuple(classes), seed=seed)
    summary = build_review(predictions, out, options, progress=not no_progress)
    failed = f"; {summary['failed']} recording(s) without audio (see failures.csv)" if summary["failed"] else ""
    click.echo(f"{summary['cards']} card(s) of {summary['species']} species{failed}; open {summary['index']}")


if __name__ == "__main__":
    main()
