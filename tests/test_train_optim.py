"""The optimizer decays weights only: never norm layers or biases, never frozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soundception.train.model import Soundception
from soundception.train.optim import create_optimizer

BACKBONE = "test_efficientnet"
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def undecayed_names(model: nn.Module) -> set[str]:
    """Parameters of norm layers and every bias, found by module type and name."""
    names = {f"{module_name}.{name}" for module_name, module in model.named_modules() if isinstance(module, NORMS)
             for name, _ in module.named_parameters(recurse=False)}
    return names | {name for name, _ in model.named_parameters() if name.endswith(".bias")}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_step_with_zero_gradients_decays_only_the_weights(name):
    torch.manual_seed(0)
    model = Soundception(BACKBONE, 4)
    lr, weight_decay = 0.1, 0.5
    optimizer = create_optimizer(model, name, lr=lr, weight_decay=weight_decay)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    # AdamW: p - lr * wd * p. SGD: the gradient is wd * p alone, and Nesterov momentum 0.9 applies
    # it 1 + 0.9 times on the first step
    shrink = lr * weight_decay * (1.0 if name == "adamw" else 1.9)
    undecayed = undecayed_names(model)
    assert any(".bn" in n for n in undecayed) and "main_head.1.bias" in undecayed  # the check has teeth
    for n, p in model.named_parameters():
        if n in undecayed:
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)
        else:
            torch.testing.assert_close(p.detach(), before[n] * (1 - shrink), msg=n)


def test_frozen_parameters_are_left_out():
    model = Soundception(BACKBONE, 4)
    model.backbone.requires_grad_(False)
    optimizer = create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    assert not in_groups & {id(p) for p in model.backbone.parameters()}
