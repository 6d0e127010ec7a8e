"""Training runs on a tiny synthetic store: loss falls, checkpoints round-trip, resume is exact, CLI works."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import synthetic_store
from soundception.shared.config import FeaturizerConfig
from soundception.shared.reader import FeatureStore
from soundception.train.augment import AugmentConfig
from soundception.train.checkpoint import load_checkpoint
from soundception.train.cli import evaluate_command, train_command
from soundception.train.config import RunConfig, StageConfig, UserError, crop_width_px
from soundception.train.curves import read_metrics
from soundception.train.dataset import WindowDataset, WindowSampler, trainable_indices
from soundception.train.evaluate import evaluate
from soundception.train.windows import window_starts
from soundception.train.loop import derived_seed, train
from soundception.train.model import build_model

BACKBONE = "test_efficientnet"
CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return synthetic_store(tmp_path_factory.mktemp("synthetic"), CONFIG, n_species=3, files_per_species=8,
                           min_seconds=3.0, max_seconds=8.0, seed=1)


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


def test_checkpoint_round_trip(store_url, tmp_path, capsys):
    config = tiny_config(store_url, tmp_path / "run")
    train(config, progress=True, stop_at=4)
    shown = capsys.readouterr().err  # not a terminal: plain progress lines, no carriage returns
    assert "stage 1: 3/3 step (100%)" in shown and "stage 2: 1/5 step" in shown and "\r" not in shown
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
    with pytest.raises(UserError, match="already holds a checkpoint"):
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
    with open(Path(store.attrs["audio_root"]).parent / "labels.csv") as handle:
        rows = {row["path"]: row["background"] for row in csv.DictReader(handle)}
    expected = [[store.classes.index(b) for b in rows[file_id].split(";") if b] for file_id in store.ids]
    assert any(expected)  # the synthetic corpus has background species
    assert store.background == expected


def background_csv(store: FeatureStore) -> dict[str, tuple[str, list[str]]]:
    """``labels.csv`` of the synthetic corpus: file id -> (species, background species)."""
    import csv

    with open(Path(store.attrs["audio_root"]).parent / "labels.csv") as handle:
        return {row["path"]: (row["label"], [b for b in row["background"].split(";") if b])
                for row in csv.DictReader(handle)}


def test_targets_are_the_main_and_background_species(store_url):
    store = FeatureStore(store_url)
    rows = background_csv(store)
    dataset = WindowDataset(store, width=16)
    with_background = 0
    for index in trainable_indices(store):
        species, background = rows[str(store.ids[index])]
        expected = np.zeros(len(store.classes), dtype=np.float32)
        expected[[store.classes.index(s) for s in [species, *background]]] = 1.0
        item = dataset[(int(index), 0)]
        np.testing.assert_array_equal(item["target"].numpy(), expected)
        assert int(item["label"]) == store.classes.index(species)
        with_background += bool(background)
    assert with_background >= 3


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_stage_one_freezes_the_backbone_and_its_batch_norm_statistics(store_url, tmp_path):
    config = tiny_config(store_url, tmp_path / "run", checkpoint_every=0,
                         stage1=StageConfig(steps=2, batch_size=4, lr=0.05, warmup_steps=0, train_backbone=False),
                         stage2=StageConfig(steps=2, batch_size=4, lr=0.05, warmup_steps=0, train_backbone=True))
    torch.manual_seed(derived_seed(config.seed, 0, 0, 0))  # the run's initial weights, as train() makes them
    initial = build_model(config, 3).state_dict()
    backbone = [k for k in initial if k.startswith("backbone.")]
    statistics = [k for k in backbone if "running_" in k]
    assert statistics and len(backbone) > len(statistics)

    train(config, progress=False, stop_at=2)  # the end of stage 1
    after_stage1 = state(tmp_path / "run")
    for key in backbone:  # weights, running means and variances, batch counters: all untouched
        torch.testing.assert_close(after_stage1[key], initial[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after_stage1[k], initial[k]) for k in initial if not k.startswith("backbone."))

    train(config, resume=True, progress=False)  # stage 2 fine-tunes everything
    after_stage2 = state(tmp_path / "run")
    assert all(not torch.equal(after_stage2[k], initial[k]) for k in statistics if "running_mean" in k)
    weights = [k for k in backbone if k.endswith("weight")]
    assert sum(not torch.equal(after_stage2[k], initial[k]) for k in weights) > 0.9 * len(weights)


@pytest.mark.parametrize("multilabel, aux_weight", [(True, 1.0), (False, 0.0), (False, 0.7)])
def test_first_logged_loss_is_the_loss_of_normalised_windows_and_their_targets(store_url, tmp_path,
                                                                              multilabel, aux_weight):
    """Recompute step 1's loss outside the loop: timm's normalisation (torchvision), the targets
    from labels.csv (background included), and the documented loss (hand-written here)."""
    import timm
    from torchvision.transforms.functional import normalize

    batch_size = 8
    config = tiny_config(store_url, tmp_path / "run", multilabel=multilabel, aux_weight=aux_weight, dropout=0.0,
                         augment=AugmentConfig.off(), seed=5, checkpoint_every=0,
                         stage1=StageConfig(steps=2, batch_size=batch_size, lr=1e-3, warmup_steps=0,
                                            train_backbone=False))
    train(config, progress=False, stop_at=1)
    logged = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["step"] == 1)

    store = FeatureStore(store_url)
    crop = crop_width_px(config.crop_seconds, store.config)
    train_files = json.loads((tmp_path / "run" / "split.json").read_text())["train"]
    windows = WindowSampler(store, np.array(train_files), batch_size=batch_size, read_width=crop, seed=config.seed,
                            stop_step=1).batch(0)
    images = torch.from_numpy(np.stack([store.window(f, s, crop) for f, s in windows])).float() / 255
    data = timm.data.resolve_model_data_config(timm.create_model(BACKBONE, pretrained=False))
    images = normalize(images, mean=list(data["mean"]), std=list(data["std"]))
    rows = background_csv(store)
    targets = np.zeros((batch_size, 3))
    labels = np.zeros(batch_size, dtype=int)
    for row, (file, _) in enumerate(windows):
        species, background = rows[str(store.ids[file])]
        labels[row] = store.classes.index(species)
        targets[row, [store.classes.index(s) for s in [species, *background]]] = 1
    if multilabel:
        assert targets.sum() > batch_size  # some windows carry background species

    torch.manual_seed(derived_seed(config.seed, 0, 0, 0))
    model = build_model(config, 3).eval()  # stage 1: frozen batch norm; no dropout
    with torch.no_grad():
        output = model(images)

    def expected_loss(logits: torch.Tensor) -> float:
        z = logits.double().numpy()
        if multilabel:  # BCE over every (window, species)
            log_p, log_not_p = -np.logaddexp(0, -z), -np.logaddexp(0, z)
            return float(-np.mean(targets * log_p + (1 - targets) * log_not_p))
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-np.mean(log_softmax[np.arange(batch_size), labels]))

    main, aux = expected_loss(output.logits), expected_loss(output.aux_logits)
    assert logged["loss_main"] == pytest.approx(main, rel=1e-4)
    assert logged["loss_aux"] == pytest.approx(aux, rel=1e-4)
    assert logged["loss"] == pytest.approx(main + aux_weight * aux, rel=1e-4)


def invoke_train(monkeypatch, arguments: list[str], outcome=None) -> tuple[Any, list[RunConfig]]:
    """Run ``soundception train`` with :func:`train.loop.train` replaced; returns the result and the configs."""
    import soundception.train.loop as loop_module

    seen: list[RunConfig] = []

    def fake_train(config: RunConfig, **kwargs: Any) -> dict[str, Any]:
        seen.append(config)
        if outcome is not None:
            raise outcome
        return {"step": 0, "checkpoint": ""}

    monkeypatch.setattr(loop_module, "train", fake_train)
    return CliRunner().invoke(train_command, ["--store", "s.zarr", "--out", "runs/x", *arguments]), seen


def test_cli_defaults_are_the_run_configs(monkeypatch):
    result, seen = invoke_train(monkeypatch, [])
    assert result.exit_code == 0, result.output
    assert seen == [RunConfig(store="s.zarr", out="runs/x")]


def test_cli_sets_dropout_attention_width_clipping_schedule_floor_and_evaluation_cap(monkeypatch):
    result, seen = invoke_train(monkeypatch, ["--dropout", "0.35", "--attention-hidden", "48", "--grad-clip", "1.5",
                                              "--min-lr-ratio", "0.05", "--eval-max-files", "7"])
    assert result.exit_code == 0, result.output
    assert seen == [dataclasses.replace(RunConfig(store="s.zarr", out="runs/x"), dropout=0.35, attention_hidden=48,
                                        grad_clip=1.5, min_lr_ratio=0.05, eval_max_files=7)]


def test_cli_one_line_for_mistakes_and_memory_and_bugs_say_how_to_see_the_traceback(monkeypatch):
    bad = invoke_train(monkeypatch, ["--dropout", "1.5"])[0]
    assert bad.exit_code != 0 and isinstance(bad.exception, SystemExit)
    assert "dropout must be in [0, 1)" in bad.output and "Traceback" not in bad.output
    out_of_memory = invoke_train(monkeypatch, [], torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))[0]
    assert out_of_memory.exit_code != 0 and isinstance(out_of_memory.exception, SystemExit)
    assert "out of GPU memory" in out_of_memory.output and "--accumulation" in out_of_memory.output
    for bug in (RuntimeError("shape mismatch"), KeyError("run_config"), ValueError("operands could not be broadcast")):
        result = invoke_train(monkeypatch, [], bug)[0]
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().endswith("(unexpected: SOUNDCEPTION_DEBUG=1 shows the traceback; please report it)")
        assert f"Error: {type(bug).__name__}: " in result.output
