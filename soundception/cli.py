"""The ``soundception`` command: a root group whose subcommands load their side lazily.

``featurize`` and ``inspect`` come from :mod:`featurize.cli`, ``train`` and ``evaluate`` from
:mod:`train.cli`, so ``soundception featurize --help`` works with only the featurize extra
installed, and the trainer's box never imports dask.
"""

from __future__ import annotations

import importlib

import click

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


if __name__ == "__main__":
    main()
