"""DHSPG: the pure projection / lambda / partition functions, and the optimizer reaching its target."""

from __future__ import annotations

import pytest
import torch

from edgecompress.compress.otov2.dhspg import (
    adaptive_lambda,
    half_space_mask,
    lambda_bounds,
    partition_scores,
    select_redundant,
)


def test_lambda_bounds_make_a_shrinking_descent_direction():
    torch.manual_seed(0)
    x, d = torch.randn(5), torch.randn(5)
    if (x @ d) >= 0:
        d = -d
    xd, xn, dd = (x @ d).view(1), x.norm().view(1), (d @ d).view(1)
    lo, hi = lambda_bounds(xd, xn, dd)
    assert lo < hi
    for lam in (lo + 0.1 * (hi - lo), (lo + hi) / 2, hi - 0.1 * (hi - lo)):
        step = d + lam * x / x.norm()
        assert step @ x > 0  # moving along -step shrinks ‖x‖
        assert step @ d > 0  # and is still a descent direction for f
    assert lambda_bounds(torch.tensor([1.0]), xn, dd)[1].isinf()


def test_adaptive_lambda_clips_and_falls_back_to_the_midpoint():
    xd = torch.tensor([1.0, -1.0, -1.0])
    x_norm = torch.tensor([1.0, 1.0, 1.0])
    d_sq = torch.tensor([1.0, 100.0, 1.0])
    lam = adaptive_lambda(xd, x_norm, d_sq, lmbda=0.01, amplify=2.0, hat_coeff=10.0)
    assert lam[0] == pytest.approx(0.01)  # <x,d> >= 0: the base lambda
    assert lam[1] == pytest.approx(0.1)  # 2 * lo = 2 clipped to lmbda * hat = 0.1 (< hi = 100)
    # lo = 1, hi = 1: the clipped 0.1 < hi, kept; with a larger cap, (lo + hi)/2
    assert adaptive_lambda(xd, x_norm, d_sq, 0.01, 2.0, 1e3)[2] == pytest.approx(1.0)


def test_half_space_projection_mask():
    x_sq = torch.tensor([1.0, 1.0, 1.0, 0.0])
    dots = torch.tensor([0.95, 0.5, -0.1, 0.0])
    assert half_space_mask(dots, x_sq, 0.9).tolist() == [False, True, True, False]
    assert half_space_mask(dots, x_sq, 0.0).tolist() == [False, False, True, False]


def test_partition_prefers_small_rows_aligned_with_the_gradient():
    xd = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    x_norm = torch.tensor([0.1, 0.1, 5.0, 5.0], dtype=torch.float64)
    d_norm = torch.ones(4, dtype=torch.float64) * 10
    scores = partition_scores(xd, x_norm, d_norm, torch.ones(4, dtype=torch.float64))
    assert int(scores.argmax()) == 0
    assert scores[0] > scores[1]  # same norm, gradient aligned with x scores higher
    assert scores[0] > scores[2]  # same alignment, smaller norm scores higher


def test_select_redundant_rounds_kept_rows_per_group():
    scores = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    owner = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    mask = select_redundant(scores, owner, [6, 4], k=5, divisible=[4, 1])
    kept0 = int((~mask[:6]).sum())
    assert kept0 % 4 == 0 and kept0 >= 4  # rounded up to the multiple
    assert mask[6:].sum() == 0  # group 1 scored lowest
    assert select_redundant(scores, owner, [6, 4], k=10, divisible=[8, 1])[:6].sum() == 0  # 6 rows <= 8


@pytest.mark.parametrize("name, variant", [("mobilenetv2_cifar_tiny", "adamw"), ("resnet_cifar_tiny", "sgd")])
def test_dhspg_reaches_and_holds_the_target_sparsity(name, variant):
    import torch.nn.functional as F

    from edgecompress.compress.otov2.api import OTO
    from edgecompress.data import digits_loaders
    from edgecompress.nas import zoo

    torch.manual_seed(0)
    train_dl, _ = digits_loaders(batch_size=32, seed=0)
    model = zoo.create(name, num_classes=10)
    oto = OTO(model, torch.randn(1, 3, 32, 32))
    opt = oto.dhspg(variant=variant, lr=0.05 if variant == "sgd" else 3e-3, target_group_sparsity=0.5, epsilon=0.9,
                    start_pruning_step=3, force_project_step=12, first_momentum=0.9 if variant == "sgd" else None)
    model.train()
    history = []
    for step, (x, y) in enumerate(train_dl):
        if step == 18:
            break
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        history.append(opt.group_sparsity)
    target = opt.target_rows / opt.num_rows
    assert abs(history[-1] - 0.5) <= 0.05 and history[-1] == pytest.approx(target)
    assert history[11:] == sorted(history[11:]) and max(history) <= target  # never overshoots, never lost
    assert oto.group_sparsity() == pytest.approx(history[-1])  # the zeros are real zeros in the weights
    model.eval()
    sub = oto.construct_subnet()
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in model.parameters())


def test_dhspg_rejects_bad_hyperparameters():
    from edgecompress.compress.otov2.api import OTO
    from edgecompress.nas import zoo

    oto = OTO(zoo.create("vgg_tiny"), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="target_group_sparsity"):
        oto.dhspg(target_group_sparsity=1.0)
    with pytest.raises(ValueError, match="variant"):
        oto.dhspg(variant="rmsprop")


@pytest.mark.gpu
def test_dhspg_runs_on_cuda():
    import torch.nn.functional as F

    from edgecompress.compress.otov2.api import OTO
    from edgecompress.nas import zoo

    model = zoo.create("resnet_cifar_tiny").cuda()
    oto = OTO(model, torch.randn(1, 3, 32, 32, device="cuda"))
    opt = oto.dhspg(variant="adamw", lr=3e-3, target_group_sparsity=0.5, start_pruning_step=1, force_project_step=3)
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt.group_sparsity == pytest.approx(opt.target_rows / opt.num_rows)
    model.eval()
    oto.construct_subnet()


def test_forced_quota_ramps_linearly_to_the_target():
    from edgecompress.compress.otov2.dhspg import forced_quota

    assert forced_quota(4, 5, 15, 100) == 0
    assert forced_quota(5, 5, 15, 100) == 10
    assert forced_quota(9, 5, 15, 100) == 50
    assert forced_quota(14, 5, 15, 100) == 100 and forced_quota(40, 5, 15, 100) == 100


def test_select_redundant_caps_the_fraction_of_one_group():
    scores = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    mask = select_redundant(scores, owner, [4, 6], k=5, divisible=[1, 1], max_fraction=0.5)
    assert int(mask[:4].sum()) == 2 and int(mask.sum()) == 5  # the rest of k comes from the other group
    assert int(select_redundant(scores, owner, [4, 6], k=5, divisible=[1, 1])[:4].sum()) == 3  # paper: n - 1


def test_cost_weighted_scores_rank_expensive_rows_first():
    from edgecompress.compress.otov2.dhspg import cost_weighted

    scores = torch.tensor([-0.2, 0.1, 0.1, 0.3], dtype=torch.float64)
    costs = torch.tensor([1.0, 1.0, 9.0, 1.0], dtype=torch.float64)
    assert torch.equal(cost_weighted(scores, costs, 0.0), scores)  # 0 = the paper's ranking
    weighted = cost_weighted(scores, costs, 1.0)
    assert torch.argsort(weighted, descending=True).tolist()[:2] == [2, 3]  # equal score, 9x the cost: first
    assert weighted[0] < weighted[1]  # negative scores keep their order after the shift
    with pytest.raises(ValueError, match="cost"):
        cost_weighted(scores, torch.zeros(4, dtype=torch.float64), 1.0)


def test_macs_exponent_moves_the_pruned_set_to_expensive_rows():
    import torch.nn.functional as F

    from edgecompress.compress.otov2.api import OTO
    from edgecompress.compress.otov2.zig import row_macs
    from edgecompress.nas import zoo

    chosen = {}
    for beta in (0.0, 1.0):
        torch.manual_seed(0)
        model = zoo.create("mobilenetv2_cifar_tiny", num_classes=10)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        oto = OTO(model, x[:1])
        costs = row_macs(model, x[:1], oto.prunable_groups)
        opt = oto.dhspg(target_group_sparsity=0.5, start_pruning_step=0, macs_exponent=beta)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        chosen[beta] = sum(float(costs[z.id][m].sum()) for z, m in zip(opt.zigs, opt.redundant, strict=True))
        assert sum(int(m.sum()) for m in opt.redundant) == pytest.approx(0.55 * opt.num_rows, abs=2)
    assert chosen[1.0] > 1.2 * chosen[0.0]
    with pytest.raises(ValueError, match="row_costs"):
        from edgecompress.compress.otov2.dhspg import DHSPG

        DHSPG(list(model.parameters()), oto.groups, macs_exponent=1.0)


def test_group_divisible_holds_for_the_channels_finally_kept():
    import torch.nn as nn
    import torch.nn.functional as F

    from edgecompress.compress.otov2.api import OTO
    from edgecompress.nas import zoo

    torch.manual_seed(0)
    model = zoo.create("mobilenetv2_cifar", num_classes=10, width_mult=0.5)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    oto = OTO(model, x[:1])
    opt = oto.dhspg(target_group_sparsity=0.5, start_pruning_step=0, force_project_step=3, group_divisible=8)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert abs(opt.group_sparsity - 0.5) <= 0.05 and opt.num_zero_rows == opt.target_rows
    sub = oto.construct_subnet()
    kept = [m.out_channels for m in sub.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]  # depthwise
    assert kept and all(c % 8 == 0 for c in kept), kept
