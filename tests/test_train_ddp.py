"""DistributedDataParallel on CPU (gloo, 2 processes under torchrun) trains the same model as one
process that accumulates twice as many micro-batches: the gradient averaging is right.

SGD, because Adam's first steps move every weight by about the learning rate whatever the size of
its gradient, so float noise in a near-zero gradient would flip whole steps."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from soundception.featurize.pipeline import featurize_store
from soundception.featurize.synthetic import make_dataset
from soundception.shared import FeaturizerConfig
from soundception.train.checkpoint import load_checkpoint
from soundception.train.config import RunConfig, StageConfig
from soundception.train.loop import derived_seed, train
from soundception.train.model import build_model


def test_ddp_over_two_ranks_equals_one_process_accumulating_two(tmp_path):
    info = make_dataset(tmp_path / "data", n_species=3, files_per_species=3, min_seconds=3.0, max_seconds=6.0,
                        seed=2)
    store = str(tmp_path / "s.zarr")
    featurize_store(info["paths"]["audio"], store, config=FeaturizerConfig(image_height=64, min_duration=3.0),
                    metadata=info["paths"]["labels"])
    single = RunConfig(
        store=store, out=str(tmp_path / "single"), backbone="mobilenetv3_small_100", crop_seconds=2.0, seed=3,
        validation_fraction=0.25, accumulation=2, num_workers=0, device="cpu", eval_every=0, checkpoint_every=0,
        optimizer="sgd", stage1=StageConfig(steps=2, batch_size=2, lr=0.05, warmup_steps=0, train_backbone=False),
        stage2=StageConfig(steps=1, batch_size=2, lr=0.05, warmup_steps=0, train_backbone=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each rank: the same float summation order
    try:
        train(single, progress=False)
    finally:
        torch.set_num_threads(threads)

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "soundception", "train",
               "--store", store, "--out", str(tmp_path / "ddp"), "--backbone", "mobilenetv3_small_100",
               "--optimizer", "sgd",
               "--crop-seconds", "2", "--seed", "3", "--validation-fraction", "0.25", "--accumulation", "1",
               "--workers", "0", "--device", "cpu", "--eval-every", "0", "--checkpoint-every", "0", "--no-progress",
               "--stage1-steps", "2", "--stage1-batch-size", "2", "--stage1-lr", "0.05", "--stage1-warmup", "0",
               "--stage2-steps", "1", "--stage2-batch-size", "2", "--stage2-lr", "0.05", "--stage2-warmup", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("done: step 3") == 2  # both ranks finished every step

    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    # batch-norm running statistics differ by design (DDP keeps rank 0's); every weight must agree.
    # One fine-tuning step only: with batch norm over tiny batches, float noise in later steps grows
    # fast (measured: 4e-7 after one step, 1e-3 after two, on this tiny model and data)
    weights = [name for name, value in a.items() if value.is_floating_point() and "running_" not in name]
    assert weights and set(a) == set(b)
    worst = max((float((b[name] - a[name]).abs().max()), name) for name in weights)
    assert worst[0] < 1e-5, worst
    torch.manual_seed(derived_seed(3, 0, 0, 0))  # the run's initial weights, as train() makes them
    initial = build_model(single, 3).state_dict()
    moved = max(float((a[name] - initial[name]).abs().max()) for name in weights)
    assert moved > 1000 * worst[0], (moved, worst)  # training moved the weights far more than they disagree
