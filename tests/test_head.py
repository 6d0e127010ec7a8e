"""``soundception fit-head`` (train/head.py): a logistic-regression head on a base model's embeddings,
written as a checkpoint that predict and evaluate use like any other."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import synthetic_store
from soundception.cli import main
from soundception.train.checkpoint import file_digest, load_checkpoint
from soundception.train.config import UserError
from soundception.train.dataset import open_store
from soundception.train.head import HeadOptions, fit_head, linear_weights, stratified_split, window_examples


@pytest.fixture(scope="module")
def site(trained_run, tmp_path_factory):
    """A store of 3 new species (labels wren, owl, lark), 5 recordings each, in the base model's config,
    and a head fitted on it."""
    root = tmp_path_factory.mktemp("site")
    store = synthetic_store(root, trained_run.config, rename={"sp00": "wren", "sp01": "owl", "sp02": "lark"},
                            n_species=3, files_per_species=5, min_seconds=3.0, max_seconds=6.0, seed=21)
    result = fit_head(trained_run.checkpoint, store, root / "head", options=HeadOptions(seed=1), progress=False)
    return store, root / "head", result


def test_the_heads_probabilities_equal_a_direct_logistic_regression(trained_run, site):
    from soundception.train.trained import load_trained_model

    store_url, out, result = site
    store = open_store(store_url)
    payload = load_checkpoint(result["checkpoint"])
    split = json.loads(payload["split"])
    group = zarr.open_group(str(out / "embeddings.zarr"), mode="r")
    labels = np.asarray(store.table["label"])
    x, y, _ = window_examples(group, split["train_ids"], labels[split["train"]], per_recording=8, seed=1)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=result["c"], class_weight="balanced",
                                                                max_iter=2000, random_state=1)).fit(x, y)
    every = group["embedding"][...].reshape(-1, x.shape[1])
    every = every[np.isfinite(every).all(axis=1)].astype(np.float64)
    head = load_trained_model(result["checkpoint"]).model.main_head
    with torch.no_grad():
        probabilities = torch.softmax(head(torch.from_numpy(every).float()).double(), dim=1).numpy()
    np.testing.assert_allclose(probabilities, direct.predict_proba(every), atol=2e-5)
    assert json.loads(payload["classes"]) == store.classes == ["lark", "owl", "wren"]
    recorded = json.loads(payload["head"])
    assert recorded["base"] == {"path": str(trained_run.checkpoint), "sha256": file_digest(trained_run.checkpoint),
                                "step": 60}
    assert set(result["cv_map"]) == {0.01, 0.1, 1.0, 10.0} and result["c"] in result["cv_map"]
    base = load_checkpoint(trained_run.checkpoint)["model"]
    for key, value in base.items():  # backbone and both attentions: the base's, exactly
        if not key.startswith(("aux_head.1.", "main_head.1.")):
            torch.testing.assert_close(payload["model"][key], value, rtol=0, atol=0, msg=key)
    assert not payload["model"]["aux_head.1.weight"].any()


def test_predict_and_evaluate_use_the_head_like_any_checkpoint(site, tmp_path):
    store_url, _, result = site
    runner = CliRunner()
    predicted = runner.invoke(main, ["predict", "--checkpoint", result["checkpoint"], "--store", store_url, "--out",
                                     str(tmp_path / "p"), "--no-progress", "--device", "cpu", "--top-k", "1"])
    assert predicted.exit_code == 0, predicted.output
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    store = open_store(store_url)
    truth = {f: store.classes[label] for f, label in zip(store.ids, store.table["label"])}
    right = sum(r["class_id"] == truth[r["file"]] for r in rows)
    assert len(rows) == store.n_files and right >= 0.8 * len(rows), (right, len(rows))
    evaluated = runner.invoke(main, ["evaluate", "--checkpoint", result["checkpoint"], "--store", store_url,
                                     "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["map"] == pytest.approx(result["validation"]["map"])
    assert json.loads(evaluated.output)["n_recordings"] == 3  # one of each class's 5 held out


def test_a_rerun_reuses_the_embeddings_and_a_foreign_embeddings_zarr_is_refused(trained_run, site, tmp_path):
    store_url, out, result = site
    again = CliRunner().invoke(main, ["fit-head", "--checkpoint", str(trained_run.checkpoint), "--store", store_url,
                                      "--out", str(out), "--seed", "1", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "wrote" in again.output and "held-out MAP" in again.output
    group = zarr.open_group(str(out / "embeddings.zarr"), mode="r+")
    group.attrs["checkpoint_sha256"] = "0" * 64
    try:
        with pytest.raises(UserError, match="was not written with"):
            fit_head(trained_run.checkpoint, store_url, tmp_path / "h", embeddings=out / "embeddings.zarr",
                     progress=False)
    finally:
        group.attrs["checkpoint_sha256"] = file_digest(trained_run.checkpoint)


def test_linear_weights_reproduce_predict_proba_for_two_and_more_classes():
    rng = np.random.default_rng(0)
    for n_classes, present in ((2, [0, 1]), (4, [0, 1, 2, 3]), (4, [0, 2, 3])):
        x = rng.normal(size=(120, 6)) * [1, 3, 0.5, 2, 1, 10] + [0, 5, 0, -2, 1, 0]
        y = rng.choice(present, size=120)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        weight, bias = linear_weights(model, n_classes)
        logits = x @ weight.T + bias
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        expected = np.zeros((120, n_classes))
        expected[:, model[-1].classes_] = model.predict_proba(x)
        np.testing.assert_allclose(softmax, expected, atol=1e-9)


def test_the_split_holds_out_per_class_and_keeps_small_classes_whole(site):
    store = open_store(site[0])
    labels = np.asarray(store.table["label"]).copy()
    split = stratified_split(store, labels, fraction=0.2, seed=0)
    held = labels[list(split.validation)]
    assert sorted(held.tolist()) == [0, 1, 2]  # round(0.2 * 5) = 1 of each class
    labels[labels == 2] = -1  # a class gone: nothing of it anywhere
    labels[np.flatnonzero(labels == 1)[:3]] = -1  # class 1 left with 2 recordings: all train
    small = stratified_split(store, labels, fraction=0.2, seed=0)
    assert sorted(labels[list(small.validation)].tolist()) == [0]


def test_fit_head_from_a_folder_of_labelled_recordings(trained_run, site, tmp_path):
    """--audio (one subfolder per species) featurizes with the base's config into OUT/store.zarr, the
    same images as the store route, and fits a head for the folders' classes; a broken file is left
    out and named."""
    import shutil

    from soundception.train.trained import load_trained_model

    store_url, _, result = site
    reference = open_store(store_url)
    broken = tmp_path / "audio"
    shutil.copytree(reference.attrs["audio_root"], broken)
    (broken / "sp00" / "XC999999.wav").write_bytes(b"RIFF" + bytes(40))
    out = tmp_path / "head"
    ran = CliRunner().invoke(main, ["fit-head", "--checkpoint", str(trained_run.checkpoint), "--audio", str(broken),
                                    "--out", str(out), "--seed", "1", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    assert "left out sp00/XC999999.wav: cannot decode audio" in ran.output
    made = open_store(str(out / "store.zarr"))
    assert made.config_hash == reference.config_hash
    for file_id in reference.ids:
        mine = list(made.ids).index(file_id)
        np.testing.assert_array_equal(made.image(mine), reference.image(list(reference.ids).index(file_id)))
        assert made.classes[made.table["label"][mine]] == file_id.split("/")[0]
    head = load_trained_model(out / "head.pt")
    assert head.classes == ["sp00", "sp01", "sp02"]
    assert json.loads(load_checkpoint(out / "head.pt")["head"])["recordings"] == 12  # 15 minus 3 held out
    both = CliRunner().invoke(main, ["fit-head", "--checkpoint", str(trained_run.checkpoint), "--audio", str(broken),
                                     "--store", store_url, "--out", str(out)])
    assert both.exit_code == 2 and "either --store or --audio" in both.output
