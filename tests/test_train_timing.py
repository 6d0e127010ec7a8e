"""The trainer times itself: a data wait per logged step (timm's ``data_time``) and profiler ranges per phase."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from torch.profiler import ProfilerActivity, profile

from conftest import synthetic_store
from soundception.shared.config import FeaturizerConfig
from soundception.train.config import RunConfig, StageConfig
from soundception.train.loop import STEP_PHASES, train

CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return synthetic_store(tmp_path_factory.mktemp("timing"), CONFIG, n_species=2, files_per_species=3,
                           min_seconds=3.0, max_seconds=5.0, seed=3)


def short_config(store_url: str, out: Path, **changes) -> RunConfig:
    """Stage 1 only (stage 2 has no steps), 4 steps of 2 micro-batches of 2 crops, a record per step."""
    config = RunConfig(
        store=store_url, out=str(out), backbone="test_efficientnet", crop_seconds=2.0, attention_hidden=16,
        validation_fraction=0.25, accumulation=2,
        stage1=StageConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=True),
        stage2=StageConfig(steps=0, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=True),
        num_workers=0, log_every=1, eval_every=0, checkpoint_every=0, eval_batch_size=8, eval_max_files=1)
    return dataclasses.replace(config, **changes)


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_data_time_is_logged_and_within_the_step(store_url, tmp_path, capsys):
    started = time.perf_counter()
    train(short_config(store_url, tmp_path / "run"), progress=True)
    wall = time.perf_counter() - started
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        # the wait for the batch is part of the step: never negative, never longer than the step itself
        assert 0.0 <= record["data_time"] <= record["step_time"], record
        # with loader workers off, drawing a batch reads the store in this process: it takes time
        assert record["data_time"] > 0.0, record
    # four steps cannot take longer than the whole call, set-up and final evaluation included
    assert sum(r["step_time"] for r in records) < wall
    assert " s/step" in capsys.readouterr().err  # the progress line shows the data wait too


def test_each_phase_is_a_profiler_range(store_url, tmp_path):
    config = short_config(store_url, tmp_path / "run", stage1=StageConfig(steps=2, batch_size=2, lr=1e-3,
                                                                           warmup_steps=0, train_backbone=True))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(config, progress=False)
    counts: dict[str, int] = {}
    for event in prof.events():
        counts[event.name] = counts.get(event.name, 0) + 1
    # every phase of each micro-batch: 2 steps x 2 micro-batches; the optimizer once per step
    expected = {f"step.{phase}": 2 if phase == "optimizer_step" else 4 for phase in STEP_PHASES}
    assert {name: counts.get(name, 0) for name in expected} == expected
    assert STEP_PHASES == ("data_wait", "augmentation", "forward", "loss", "backward", "optimizer_step")
