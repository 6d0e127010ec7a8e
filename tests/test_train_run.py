"""Training runs on a tiny synthetic store: loss falls, checkpoints round-trip, resume is exact, CLI works."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from featurize.pipeline import featurize_store
from featurize.synthetic import make_dataset
from shared.config import FeaturizerConfig
from shared.reader import FeatureStore
from train.checkpoint import load_checkpoint
from train.cli import evaluate_command, train_command
from train.config import RunConfig, StageConfig
from train.curves import read_metrics
from train.evaluate import evaluate, window_starts
from train.loop import train

BACKBONE = "test_efficientnet"
CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    info = make_dataset(root / "data", n_species=3, files_per_species=8, min_seconds=3.0, max_seconds=8.0, seed=1)
    featurize_store(info["paths"]["audio"], str(root / "s.zarr"), config=CONFIG,
                    metadata=info["paths"]["labels"], labels="csv")
    return str(root / "s.zarr")


def tiny_config(store_url: str, out: Path, **changes) -> RunConfig:
    config = RunConfig(
        store=store_url, out=str(out), backbone=BACKBONE, crop_seconds=2.0, attention_hidden=16,
        validation_fraction=0.25,
        stage1=StageConfig(steps=3, batch_size=4, lr=3e-3, warmup_steps=1, train_backbone=False),
        stage2=StageConfig(steps=5, batch_size=4, lr=3e-3, warmup_steps=2, train_backbone=True),
        num_workers=0, log_every=1, eval_every=0, checkpoint_every=4, eval_batch_size=16)
    return dataclasses.replace(config, **changes)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_end_to_end_loss_falls_and_outputs_written(store_url, tmp_path):
    config = tiny_config(store_url, tmp_path / "run", stage1=dataclasses.replace(tiny_config(store_url, tmp_path).stage1,
                                                                                steps=10),
                         stage2=StageConfig(steps=70, batch_size=8, lr=3e-3, warmup_steps=5, train_backbone=True),
                         checkpoint_every=0, eval_every=40)
    result = train(config, progress=False)
    curve = [v for _, v in sorted(losses(tmp_path / "run").items())]
    assert len(curve) == 80
    assert np.mean(curve[-15:]) < 0.7 * np.mean(curve[:15])
    # a random ranking of 3 species scores (1 + 1/2 + 1/3) / 3 = 0.611
    assert result["validation"]["chance_map"] == pytest.approx(0.6111, abs=1e-4)
    assert result["validation"]["map"] >= result["validation"]["chance_map"] + 0.2, result["validation"]
    for name in ("run_config.json", "split.json", "metrics.jsonl", "curves.png", "checkpoints/last.pt"):
        assert (tmp_path / "run" / name).is_file()
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [40, 80]
    assert RunConfig.from_dict(json.loads((tmp_path / "run" / "run_config.json").read_text())) == config


def test_checkpoint_round_trip(store_url, tmp_path):
    config = tiny_config(store_url, tmp_path / "run")
    train(config, progress=False, stop_at=4)
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # weights_only=True inside
    store = FeatureStore(store_url)
    assert payload["step"] == 4 and payload["stage"] == 2
    assert json.loads(payload["classes"]) == store.classes
    assert json.loads(payload["featurizer_config"]) == store.config.to_dict()
    assert payload["config_hash"] == store.config_hash
    assert RunConfig.from_dict(json.loads(payload["run_config"])) == config
    split = json.loads(payload["split"])
    assert split == json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(payload["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert "state" in payload["optimizer"] and payload["scheduler"]["last_epoch"] == 1
    with pytest.raises(FileExistsError):
        train(config, progress=False)  # refuses to overwrite without --resume


def test_resume_is_exact(store_url, tmp_path):
    full = tiny_config(store_url, tmp_path / "full")
    train(full, progress=False)
    parted = tiny_config(store_url, tmp_path / "parted")
    train(parted, progress=False, stop_at=5)  # stops inside stage 2, after its checkpoint
    train(dataclasses.replace(parted, num_workers=1), resume=True, progress=False)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "parted")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    ckpt_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    ckpt_b = load_checkpoint(tmp_path / "parted" / "checkpoints" / "last.pt")["model"]
    for key in ckpt_a:
        torch.testing.assert_close(ckpt_a[key], ckpt_b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot resume"):
        train(dataclasses.replace(parted, seed=9), resume=True, progress=False)


def test_window_starts_cover_the_image():
    assert window_starts(100, 300) == [0]
    assert window_starts(300, 300) == [0]
    assert window_starts(700, 300) == [0, 300, 400]
    assert window_starts(900, 300) == [0, 300, 600]


def test_cli_train_then_evaluate(store_url, tmp_path):
    import timm

    runner = CliRunner()
    out = tmp_path / "cli_run"
    torch.save(timm.create_model(BACKBONE, pretrained=False).state_dict(), tmp_path / "timm.pth")
    n_backbone = len(timm.create_model(BACKBONE, features_only=True, out_indices=(3, 4)).state_dict())
    result = runner.invoke(train_command, [
        "--store", store_url, "--out", str(out), "--backbone", BACKBONE, "--crop-seconds", "2",
        "--pretrained", str(tmp_path / "timm.pth"),
        "--stage1-steps", "2", "--stage1-batch-size", "4", "--stage2-steps", "2", "--stage2-batch-size", "4",
        "--workers", "0", "--eval-every", "0", "--no-progress", "--validation-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert f"loaded {n_backbone} backbone tensors" in result.output
    assert (out / "checkpoints" / "last.pt").is_file()
    report_path = tmp_path / "report.json"
    result = runner.invoke(evaluate_command, ["--checkpoint", str(out / "checkpoints" / "last.pt"),
                                              "--store", store_url, "--out", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["n_recordings"] == len(json.loads((out / "split.json").read_text())["validation"])
    assert 0 <= report["map"] <= 1 and 0 <= report["top1"] <= report["top5"] <= 1
    assert set(report) >= {"map", "map_background", "top1", "top5", "class_map"}
    everything = evaluate(out / "checkpoints" / "last.pt", store_url, files="all")
    assert everything["n_recordings"] == 24
    # bad input: one clear line, no traceback
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for command, arguments, message in (
            (train_command, ["--store", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "x")],
             "not a readable Zarr feature store"),
            (train_command, ["--store", store_url, "--out", str(tmp_path / "y"), "--storage-options", "{oops"],
             "not JSON"),
            (evaluate_command, ["--checkpoint", str(garbage), "--store", store_url], "Error: ")):
        bad = runner.invoke(command, arguments)
        assert bad.exit_code != 0 and isinstance(bad.exception, SystemExit), bad.output
        assert message in bad.output and "Traceback" not in bad.output


def test_store_background_species_match_the_labels_csv(store_url):
    import csv

    store = FeatureStore(store_url)
    rows = {row["path"]: row["background"] for row in csv.DictReader(open(Path(store.attrs["audio_root"]).parent
                                                                           / "labels.csv"))}
    expected = [[store.classes.index(b) for b in rows[file_id].split(";") if b] for file_id in store.ids]
    assert any(expected)  # the synthetic corpus has background species
    assert store.background == expected
