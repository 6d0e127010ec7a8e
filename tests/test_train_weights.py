"""--pretrained: a local timm state dict fills every backbone tensor; a wrong one is a clear error."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from soundception.train.model import Soundception
from soundception.train.weights import WeightsMismatch, key_mapping, load_backbone_weights

BACKBONE = "test_efficientnet"


@pytest.fixture(scope="module")
def plain_state():
    torch.manual_seed(1)
    return timm.create_model(BACKBONE, pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_plain_timm_checkpoint_matches_every_backbone_tensor(tmp_path, plain_state, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in plain_state.items()}, str(path))
    else:
        torch.save(plain_state, path)
    model = Soundception(BACKBONE, 4)
    report = load_backbone_weights(model.backbone, BACKBONE, path)
    backbone_state = model.backbone.state_dict()
    assert report.matched == len(backbone_state)
    assert report.skipped_head and all(k.startswith(("classifier", "conv_head", "bn2")) for k in report.skipped_head)
    for key, value in backbone_state.items():
        torch.testing.assert_close(value, plain_state[key], rtol=0, atol=0)


def test_wrapped_and_feature_checkpoints(tmp_path, plain_state):
    torch.save({"state_dict": {"module." + k: v for k, v in plain_state.items()}}, tmp_path / "wrapped.pth")
    model = Soundception(BACKBONE, 4)
    assert load_backbone_weights(model.backbone, BACKBONE, tmp_path / "wrapped.pth").matched == len(
        model.backbone.state_dict())
    torch.save(model.backbone.state_dict(), tmp_path / "features.pth")
    report = load_backbone_weights(Soundception(BACKBONE, 4).backbone, BACKBONE, tmp_path / "features.pth")
    assert report.matched == len(model.backbone.state_dict()) and not report.skipped_head


def test_wrong_architecture_is_a_clear_error(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet.pth")
    model = Soundception(BACKBONE, 4)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with pytest.raises(WeightsMismatch, match="missing.*unexpected|another architecture"):
        load_backbone_weights(model.backbone, BACKBONE, tmp_path / "resnet.pth")
    for key, value in model.backbone.state_dict().items():  # nothing was half-loaded
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_missing_and_misshaped_tensors_are_errors(tmp_path, plain_state):
    partial = dict(plain_state)
    partial.pop(next(k for k in partial if k.startswith("blocks")))
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsMismatch, match="1 missing"):
        load_backbone_weights(Soundception(BACKBONE, 4).backbone, BACKBONE, tmp_path / "partial.pth")
    misshaped = dict(plain_state)
    misshaped["conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(misshaped, tmp_path / "misshaped.pth")
    with pytest.raises(WeightsMismatch, match="wrong shape"):
        load_backbone_weights(Soundception(BACKBONE, 4).backbone, BACKBONE, tmp_path / "misshaped.pth")


def test_inception_v4_flattened_feature_names_map_to_plain_names():
    # FeatureListNet renames features.0.conv -> features_0.conv; built on the meta device (no weights)
    with torch.device("meta"):
        features = timm.create_model("inception_v4", features_only=True, out_indices=(3, 4))
    mapping, shapes = key_mapping("inception_v4", list(features.state_dict()))
    assert mapping["features_0.conv.weight"] == "features.0.conv.weight"
    assert all(shapes[mapping[k]] == tuple(v.shape) for k, v in features.state_dict().items())
    assert sorted(set(shapes) - set(mapping.values())) == ["last_linear.bias", "last_linear.weight"]
