"""``train --init-from``: a run starts from a trained checkpoint (train/finetune.py).

The base is the session's tiny trained model (classes sp00, sp01, sp02). The new store holds three
species whose labels are sp01, sp02 and a new one, "wren" (sp00's recordings relabelled), so two
classes are carried over by id, at other rows than in the base.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import synthetic_store
from soundception.cli import main
from soundception.train.checkpoint import file_digest, load_checkpoint
from soundception.train.config import RunConfig, StageConfig, UserError
from soundception.train.finetune import carried_rows
from soundception.train.loop import set_up, train


@pytest.fixture(scope="module")
def new_store(trained_run, tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("finetune"), trained_run.config, rename={"sp00": "wren"},
                           n_species=3, files_per_species=4, min_seconds=3.0, max_seconds=6.0, seed=11)


def run_config(trained_run, store, out, **changes):
    base = RunConfig.from_dict(json.loads(load_checkpoint(trained_run.checkpoint)["run_config"]))
    return dataclasses.replace(base, store=store, out=str(out), init_from=str(trained_run.checkpoint),
                               stage1=StageConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, train_backbone=False),
                               stage2=StageConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, train_backbone=True),
                               eval_every=0, checkpoint_every=4, log_every=4, **changes)


def test_carried_rows_match_class_ids():
    assert carried_rows(["sp00", "sp01", "sp02"], ["sp01", "sp02", "wren"]) == {0: 1, 1: 2}
    assert carried_rows(["a"], ["b"]) == {}


def test_the_run_starts_from_the_checkpoint_and_carries_known_classes_rows_by_id(trained_run, new_store, tmp_path):
    base = load_checkpoint(trained_run.checkpoint)["model"]
    run, _ = set_up(run_config(trained_run, new_store, tmp_path / "ft"), resume=False)
    assert run.store.classes == ["sp01", "sp02", "wren"]
    state = run.model.state_dict()
    for key, value in base.items():
        if not key.startswith(("aux_head.1.", "main_head.1.")):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    fresh, _ = set_up(dataclasses.replace(run_config(trained_run, new_store, tmp_path / "fresh"), init_from=None),
                      resume=False)
    for head in ("aux_head.1", "main_head.1"):
        for part in ("weight", "bias"):
            key = f"{head}.{part}"
            torch.testing.assert_close(state[key][0], base[key][1], rtol=0, atol=0)  # sp01: base row 1 -> row 0
            torch.testing.assert_close(state[key][1], base[key][2], rtol=0, atol=0)  # sp02: base row 2 -> row 1
            torch.testing.assert_close(state[key][2], fresh.model.state_dict()[key][2], rtol=0, atol=0)  # new: seeded
    assert not torch.equal(fresh.model.state_dict()["main_head.1.weight"][0], base["main_head.1.weight"][1])


def test_checkpoints_record_the_start_and_a_resumed_run_keeps_it(trained_run, new_store, tmp_path):
    config = run_config(trained_run, new_store, tmp_path / "ft")
    train(config, progress=False, stop_at=4)
    result = train(config, resume=True, progress=False)
    payload = load_checkpoint(result["checkpoint"])
    origin = json.loads(payload["init_from"])
    assert origin == {"path": str(trained_run.checkpoint), "sha256": file_digest(trained_run.checkpoint),
                      "step": 60, "carried": ["sp01", "sp02"]}
    assert int(payload["step"]) == 8 and json.loads(payload["classes"]) == ["sp01", "sp02", "wren"]


def test_another_featurizer_config_or_network_is_refused_in_one_line(trained_run, new_store, tmp_path):
    from soundception.featurize.pipeline import featurize_store

    other = str(tmp_path / "other.zarr")
    audio = tmp_path / "audio"
    (audio / "a").mkdir(parents=True)
    for k, path in enumerate(sorted(trained_run.audio.rglob("*.wav"))[:3]):
        (audio / "a" / f"{k}.wav").write_bytes(path.read_bytes())
    with open(tmp_path / "labels.csv", "w") as handle:
        handle.write("path,label,background\n" + "".join(f"a/{k}.wav,sp01,\n" for k in range(3)))
    featurize_store(str(audio), other, config=dataclasses.replace(trained_run.config, image_height=48),
                    metadata=tmp_path / "labels.csv", labels="csv")
    with pytest.raises(UserError, match=r"another featurizer config .*image_height: 64 -> 48"):
        set_up(run_config(trained_run, other, tmp_path / "x"), resume=False)
    with pytest.raises(UserError, match=r"another network \(attention_hidden 16 -> 32\)"):
        set_up(run_config(trained_run, new_store, tmp_path / "y", attention_hidden=32), resume=False)
    result = CliRunner().invoke(main, ["train", "--store", new_store, "--out", str(tmp_path / "z"), "--init-from",
                                       str(trained_run.checkpoint), "--pretrained", str(trained_run.checkpoint)])
    assert result.exit_code == 1 and "not both" in result.output and "Traceback" not in result.output
