"""Import isolation between the two sides, and the CLI over a real store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from soundception.cli import main

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return {name.split(".")[0] for name in result.stdout.split()}


def package_modules(package: str) -> list[str]:
    return [f"soundception.{package}.{p.stem}" for p in sorted((ROOT / package).glob("*.py")) if p.stem != "__main__"]


@pytest.mark.parametrize("package", ["featurize", "shared"])
def test_featurizer_side_never_imports_torch(package):
    modules = package_modules(package)
    assert modules, package
    loaded = modules_loaded_by("; ".join(f"import {m}" for m in modules))
    assert not loaded & {"torch", "torchvision", "timm"}


def test_trainer_side_never_imports_librosa_or_dask():
    modules = package_modules("train")
    loaded = modules_loaded_by("; ".join(f"import {m}" for m in modules) or "pass")
    assert not loaded & {"librosa", "dask", "distributed"}


def test_featurize_help_loads_no_trainer():
    loaded = modules_loaded_by(
        "from click.testing import CliRunner; from soundception.cli import main; "
        "CliRunner().invoke(main, ['featurize', '--help'])")
    assert "soundception" in loaded and not loaded & {"torch", "timm", "dask", "librosa"}


def test_cli_featurize_inspect_failed_and_png(small_corpus, tmp_path):
    (small_corpus / "broken.wav").write_bytes(b"RIFF....garbage")
    store = str(tmp_path / "cli.zarr")
    runner = CliRunner()
    result = runner.invoke(main, ["featurize", str(small_corpus), "--store", store, "--labels", "folders",
                                  "--serial", "--min-duration", "4"])
    assert result.exit_code == 0, result.output
    assert "featurized 4 of 5" in result.output and "1 file(s) failed" in result.output
    summary = runner.invoke(main, ["inspect", store])
    assert summary.exit_code == 0 and "5: 4 done, 1 failed, 0 pending" in summary.output
    failed = runner.invoke(main, ["inspect", store, "--failed"])
    assert failed.output.startswith("broken.wav\t") and failed.output.count("\n") == 1
    png = tmp_path / "img.png"
    drawn = runner.invoke(main, ["inspect", store, "--png", "low/low0.wav", str(png)])
    assert drawn.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    refused = runner.invoke(main, ["featurize", str(small_corpus), "--store", store, "--labels", "folders",
                                   "--serial", "--min-duration", "5"])
    assert refused.exit_code != 0 and "min_duration: 4.0 -> 5.0" in refused.output
    missing = runner.invoke(main, ["inspect", str(tmp_path / "nope.zarr")])
    assert missing.exit_code != 0 and "not a readable Zarr feature store" in missing.output
    not_json = runner.invoke(main, ["inspect", store, "--storage-options", "{endpoint"])
    assert not_json.exit_code == 2 and "Invalid value for '--storage-options': not JSON" in not_json.output


def test_cli_featurizes_on_an_existing_dask_scheduler(small_corpus, tmp_path):
    from distributed import LocalCluster

    from soundception.shared import FeatureStore

    store = str(tmp_path / "remote.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", store, "--labels", "folders",
                                           "--scheduler", cluster.scheduler_address, "--min-duration", "4"])
        assert result.exit_code == 0, result.output
        assert "(2 workers)" in result.output and "featurized 4 of 4" in result.output
        assert len(cluster.scheduler.workers) == 2  # the CLI left the cluster running
    assert set(FeatureStore(store).table["status"]) == {"done"}
