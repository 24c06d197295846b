"""The DINO head: size of the reference configuration, the trainable weight-norm gain (DINOv2) or\nunit-norm prototypes (DINO v1's norm_last_layer), shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from pretrain.heads import DINOHead


def test_reference_head_size_matches_the_paper_numbers() -> None:
    head = DINOHead(384, 65_536, hidden_dim=2048, bottleneck_dim=256, nlayers=3)
    n = sum(p.numel() for p in head.parameters())
    mlp = (384 * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 256 + 256)
    assert n == mlp + 65_536 * 256 + 65_536  # prototypes v and their gains g
    assert 22e6 <= n <= 25e6  # REFERENCE.md: a 65,536 x 256 head has about 22-25M parameters


def _train_a_few_steps(head: DINOHead, steps: int = 3) -> torch.Tensor:
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        out = head(torch.randn(8, 32))
        (-out.log_softmax(-1)[:, 0].mean()).backward()
        opt.step()
    return out


def test_weight_norm_gain_starts_at_one_and_is_trained_as_in_dinov2() -> None:
    """The official head fills weight_g with 1 and leaves it trainable (dinov2/layers/dino_head.py)."""
    torch.manual_seed(0)
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    g = head.last_layer.parametrizations.weight.original0
    assert g.shape == (100, 1) and torch.equal(g, torch.ones_like(g))
    assert g.requires_grad and not head.norm_last_layer
    _train_a_few_steps(head)
    assert g.grad is not None and g.grad.abs().sum() > 0
    assert not torch.allclose(g, torch.ones_like(g)), "the gain must move under training"
    # the row norms of the effective weight are the gains: logits are cosines times g
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1, keepdim=True), g.detach())


def test_norm_last_layer_keeps_prototypes_at_unit_norm_as_dino_v1() -> None:
    torch.manual_seed(0)
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16, norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.equal(g, torch.ones_like(g))
    out = _train_a_few_steps(head)
    assert out.shape == (8, 100)
    assert out.abs().max() <= 1.0 + 1e-5  # cosine similarities
    norms = head.last_layer.weight.norm(dim=1)  # the parametrised weight: g * v / ||v||
    torch.testing.assert_close(norms, torch.ones(100))
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    assert g.grad is None


def test_init_and_variants() -> None:
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8, nlayers=1)
    mlp: Any = head.mlp  # one Linear when nlayers=1
    assert mlp.weight.std() < 0.05 and torch.all(mlp.bias == 0)  # trunc_normal(0.02), zero bias
    bn = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8, nlayers=4, use_bn=True, mlp_bias=False)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.modules()) == 3
    assert all(m.bias is None for m in bn.mlp.modules() if isinstance(m, torch.nn.Linear))
    assert bn(torch.randn(4, 16)).shape == (4, 10)
    teacher = copy.deepcopy(bn)  # the trainer's EMA teacher is a deep copy
    sd = teacher.state_dict()
    assert "last_layer.parametrizations.weight.original1" in sd
    with pytest.raises(ValueError, match="positive"):
        DINOHead(16, 0)
