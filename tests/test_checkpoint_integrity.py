"""Checkpoints carry their own checksums: a flipped bit in any tensor is refused, naming the file and the
tensor; files that are not checkpoints get one line of ours; every loader goes through the check.

The oracle for "which tensor did the flip hit" is torch's own unverified load of the damaged file,
compared with the intact one (torch.load does not check the zip's CRC-32, see the first test).
"""

from __future__ import annotations

import io
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from soundception.featurize.pipeline import featurize_store
from soundception.featurize.synthetic import make_dataset
from soundception.shared.config import FeaturizerConfig
from soundception.shared.reader import FeatureStore
from soundception.train.augment import AugmentConfig
from soundception.train.checkpoint import load_checkpoint, save_checkpoint
from soundception.train.cli import evaluate_command, train_command
from soundception.train.config import RunConfig, StageConfig, UserError, crop_width_px
from soundception.train.evaluate import evaluate, evaluate_model
from soundception.train.loop import train
from soundception.train.model import build_model
from soundception.train.trained import load_trained_model

BACKBONE = "test_efficientnet"
CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)


def run_config(store: str, out: Path) -> RunConfig:
    return RunConfig(store=store, out=str(out), backbone=BACKBONE, crop_seconds=2.0, attention_hidden=16,
                     validation_fraction=0.34, augment=AugmentConfig.from_spec("none"),
                     stage1=StageConfig(steps=2, batch_size=4, lr=3e-3, warmup_steps=1, train_backbone=False),
                     stage2=StageConfig(steps=2, batch_size=4, lr=3e-3, warmup_steps=1, train_backbone=True),
                     num_workers=0, log_every=1, eval_every=0, checkpoint_every=0, eval_batch_size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, RunConfig, Path]:
    """A 4-step run (2 stage-1, 2 stage-2 steps, Adam state included) on 3 species x 3 files."""
    root = tmp_path_factory.mktemp("integrity")
    info = make_dataset(root / "data", n_species=3, files_per_species=3, min_seconds=3.0, max_seconds=6.0, seed=2)
    store = str(root / "s.zarr")
    featurize_store(info["paths"]["audio"], store, config=CONFIG, metadata=info["paths"]["labels"], labels="csv")
    config = run_config(store, root / "run")
    result = train(config, progress=False)
    return store, config, Path(result["checkpoint"])


def entries(path: Path) -> list[tuple[str, int, int]]:
    """``(name, first byte, size)`` of each tensor-data entry (``*/data/N``) of a torch zip, in the file."""
    raw = path.read_bytes()
    found = []
    for info in zipfile.ZipFile(path).infolist():
        if "/data/" in info.filename and info.file_size:
            assert info.compress_type == zipfile.ZIP_STORED  # raw tensor bytes, so a flip lands in a tensor
            name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            found.append((info.filename, info.header_offset + 30 + name_length + extra_length, info.file_size))
    return found


def flip_bit(source: Path, target: Path, byte: int, bit: int) -> Path:
    data = bytearray(source.read_bytes())
    data[byte] ^= 1 << bit
    target.write_bytes(bytes(data))
    return target


def tensors(value: Any, name: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested payload by its path (``model/head.weight``), walked independently."""
    if isinstance(value, torch.Tensor):
        return {name: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else []
    found: dict[str, torch.Tensor] = {}
    for key, item in items:
        found.update(tensors(item, f"{name}/{key}" if name else str(key)))
    return found


def raw_load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def changed_tensors(intact: dict[str, torch.Tensor], damaged: dict[str, Any]) -> list[str]:
    """Paths of the tensors whose bytes differ between two payloads."""
    after = tensors(damaged)
    return [k for k in intact if intact[k].numel() and not torch.equal(
        intact[k].reshape(-1).view(torch.uint8), after[k].reshape(-1).view(torch.uint8))]


def test_torch_alone_loads_a_flipped_bit_silently(run, tmp_path):
    """What torch does today (2.14): it writes a CRC-32 per zip entry but does not check it on load."""
    _, _, checkpoint = run
    name, first, size = entries(checkpoint)[0]
    damaged = flip_bit(checkpoint, tmp_path / "damaged.pt", first + size // 2, 3)
    assert zipfile.ZipFile(damaged).testzip() == name  # the zip's own CRC sees it ...
    assert len(changed_tensors(tensors(raw_load(checkpoint)), raw_load(damaged))) == 1  # ... torch.load does not


def test_a_flipped_bit_in_any_tensor_is_refused_naming_the_file_and_the_tensor(run, tmp_path):
    _, _, checkpoint = run
    intact = tensors(raw_load(checkpoint))
    found = entries(checkpoint)
    assert len(found) > 100  # weights, batch-norm statistics, Adam moments, generator states
    rng = np.random.default_rng(0)
    hit = set()
    chosen = sorted(set(np.linspace(0, len(found) - 1, 24).round().astype(int).tolist()))  # first to last
    for name, first, size in [found[i] for i in chosen]:  # one bit of each chosen tensor's bytes, anywhere
        damaged = flip_bit(checkpoint, tmp_path / "damaged.pt", first + int(rng.integers(size)), int(rng.integers(8)))
        changed = changed_tensors(intact, raw_load(damaged))
        assert len(changed) == 1, name
        with pytest.raises(UserError) as refused:
            load_checkpoint(damaged)
        message = str(refused.value)
        assert "\n" not in message and str(damaged) in message
        assert f"tensor {changed[0]} does not match its checksum" in message
        assert "damaged" in message and "another checkpoint" in message
        hit.add(changed[0].split("/")[0])
    assert hit == {"model", "optimizer", "rng"}


def test_a_changed_value_outside_the_tensors_is_refused_as_the_payload(run, tmp_path):
    _, _, checkpoint = run
    payload = raw_load(checkpoint)
    payload["step"] += 1  # what a flip inside the pickled values could do; the checksums stay the old ones
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(UserError, match="the payload .* does not match its checksum"):
        load_checkpoint(tmp_path / "changed.pt")
    payload = raw_load(checkpoint)
    payload["model"]["extra.weight"] = torch.zeros(2)  # a tensor the checksums do not list
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="extra.weight does not match its checksum"):
        load_checkpoint(tmp_path / "extra.pt")


def test_an_intact_checkpoint_loads_as_saved_and_evaluates_like_the_unverified_weights(run):
    store_url, config, checkpoint = run
    payload, raw = load_checkpoint(checkpoint), raw_load(checkpoint)
    assert payload["checkpoint_version"] == 2 and "checksums" not in payload and "checksums" in raw
    expected = tensors({k: v for k, v in raw.items() if k != "checksums"})
    loaded = tensors(payload)
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key
    report = evaluate(checkpoint, store_url, files="all", device="cpu")
    store = FeatureStore(store_url)
    model = build_model(config, len(store.classes))
    model.load_state_dict(raw["model"])  # straight from torch, bypassing load_checkpoint
    direct = evaluate_model(model, store, list(range(store.n_files)), device=torch.device("cpu"), batch_size=8,
                            crop_width=crop_width_px(config.crop_seconds, store.config))
    assert report["n_recordings"] == store.n_files == 9
    for key in ("map", "map_background", "top1", "top5", "class_map"):
        assert report[key] == pytest.approx(direct[key], abs=1e-12), key


def test_a_checkpoint_saved_before_checksums_loads_with_a_warning(run, tmp_path, capsys):
    _, _, checkpoint = run
    payload = {k: v for k, v in raw_load(checkpoint).items() if k != "checksums"}
    payload["checkpoint_version"] = 1
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["step"] == 4 and not changed_tensors(tensors(payload), loaded)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and str(tmp_path / "old.pt") in warning and "unverified" in warning


def not_checkpoints(checkpoint: Path, folder: Path) -> dict[str, Path]:
    """Files that are not Soundception checkpoints, each named by what it is."""
    raw = checkpoint.read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes/readme.txt", "hello")
    contents = {"empty": b"", "text": b"model weights, honest\n", "random": np.random.default_rng(1).bytes(4096),
                "zip": archive.getvalue(), "half": raw[: len(raw) // 2], "tail_cut": raw[:-10],
                "pickle": pickle.dumps([1, 2])}
    paths = {name: folder / f"{name}.pt" for name in contents}
    for name, data in contents.items():
        paths[name].write_bytes(data)
    torch.save({"conv.weight": torch.zeros(2)}, folder / "state_dict.pt")  # a torch file, not ours
    paths["state_dict"] = folder / "state_dict.pt"
    save_checkpoint(folder / "future.pt", {"step": 1})
    payload = raw_load(folder / "future.pt")
    payload["checkpoint_version"] = 99
    torch.save(payload, folder / "future.pt")
    paths["future"] = folder / "future.pt"
    return paths


def test_a_file_that_is_not_a_checkpoint_gets_one_line_of_ours(run, tmp_path):
    _, _, checkpoint = run
    for name, path in not_checkpoints(checkpoint, tmp_path).items():
        for load in (load_checkpoint, load_trained_model):
            with pytest.raises(UserError) as refused:
                load(path)
            message = str(refused.value)
            assert "\n" not in message and str(path) in message, (name, message)
            assert "weights_only" not in message, (name, message)


def test_every_command_that_loads_a_checkpoint_refuses_a_damaged_one(run, tmp_path):
    store_url, config, checkpoint = run
    name, first, size = entries(checkpoint)[0]
    damaged = flip_bit(checkpoint, tmp_path / "damaged.pt", first + size - 1, 0)
    runner = CliRunner()
    # train --resume: the run's own last.pt damaged
    resumed = tmp_path / "run"
    shutil.copytree(config.out, resumed)
    flip_bit(checkpoint, resumed / "checkpoints" / "last.pt", first + size - 1, 0)
    commands = {
        "evaluate": (evaluate_command, ["--checkpoint", str(damaged), "--store", store_url]),
        "train --resume": (train_command, ["--store", store_url, "--out", str(resumed), "--resume",
                                           "--backbone", BACKBONE]),
    }
    from soundception.compose import explain_command, predict_command

    commands["predict"] = (predict_command, ["--checkpoint", str(damaged), "--store", store_url,
                                             "--out", str(tmp_path / "predicted")])
    commands["explain"] = (explain_command, ["--checkpoint", str(damaged), "--store", store_url, "--file",
                                             str(FeatureStore(store_url).ids[0]), "--out", str(tmp_path / "e.png")])
    for label, (command, arguments) in commands.items():
        result = runner.invoke(command, arguments)
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (label, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (label, result.output)
        assert "does not match its checksum" in lines[0] and "damaged" in lines[0], (label, lines[0])
    # the resume was refused before it touched the run folder
    assert (resumed / "metrics.jsonl").read_text() == (Path(config.out) / "metrics.jsonl").read_text()
