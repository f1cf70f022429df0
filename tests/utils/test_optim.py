"""param_groups: one group for the model, one per loss at the proxy learning rate, each parameter exactly once."""

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import trainers

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HyperbolicSoftTripleLoss
from pml_hyperbolic.utils.optim import param_groups


def ids(params):
    return {id(p) for p in params}


def test_groups_learning_rates_and_weight_decay():
    model = torch.nn.Linear(4, 3)
    soft_triple = HyperbolicSoftTripleLoss(5, 3, centers_per_class=2)
    proxy_anchor = pml_losses.ProxyAnchorLoss(5, 3)
    groups = param_groups(model, soft_triple, proxy_anchor, lr=1e-4, proxy_lr_mult=(100, 1e4), weight_decay=1e-2)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-2), pytest.approx(1.0)]
    assert [g["weight_decay"] for g in groups] == [1e-2, 1e-2, 1e-2]
    assert ids(groups[0]["params"]) == ids(model.parameters())
    assert ids(groups[1]["params"]) == {id(soft_triple.proxies)}
    assert ids(groups[2]["params"]) == {id(proxy_anchor.proxies)}

    groups = param_groups(model, soft_triple, lr=1e-4, proxy_lr=0.5, weight_decay=1e-2, proxy_weight_decay=0.0)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-4, 1e-2), (0.5, 0.0)]


def test_shared_frozen_and_empty():
    c = torch.nn.Parameter(torch.tensor(0.1))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), ToPoincare(c=c))
    model[0].bias.requires_grad_(False)
    loss = HyperbolicSoftTripleLoss(5, 3, centers_per_class=2, c=c, distance=PoincareDistance(c=c))
    assert id(c) in ids(loss.parameters())
    groups = param_groups(model, loss, pml_losses.TripletMarginLoss(), lr=1e-3, proxy_lr=1e-1)
    assert len(groups) == 2  # the parameter-free triplet loss adds no group
    assert ids(groups[0]["params"]) == {id(model[0].weight), id(c)}  # the shared curvature once, with the model
    assert ids(groups[1]["params"]) == {id(loss.proxies)}
    torch.optim.AdamW(groups)  # a valid optimizer (it rejects duplicated parameters)

    # losses only (pml trainers' metric_loss_optimizer), and a loss shared twice
    groups = param_groups(None, loss, loss, lr=1e-3, proxy_lr_mult=10)
    assert len(groups) == 1 and ids(groups[0]["params"]) == ids(loss.parameters())
    assert groups[0]["lr"] == pytest.approx(1e-2)
    assert param_groups(model, lr=1e-3) == [{"params": [model[0].weight, c], "lr": 1e-3, "weight_decay": 0.0}]


def test_optimizer_steps_each_group_at_its_rate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), ToPoincare())
    loss = HyperbolicSoftTripleLoss(2, 3, centers_per_class=2)
    opt = torch.optim.SGD(param_groups(model, loss, lr=1e-3, proxy_lr_mult=100))
    before_w, before_p = model[0].weight.detach().clone(), loss.proxies.detach().clone()
    loss(model(torch.randn(6, 4)), torch.arange(6) % 2).backward()
    grad_w, grad_p = model[0].weight.grad.clone(), loss.proxies.grad.clone()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), before_w - 1e-3 * grad_w)
    torch.testing.assert_close(loss.proxies.detach(), before_p - 1e-1 * grad_p)


def test_riemannian_adam_accepts_the_groups():
    geoopt = pytest.importorskip("geoopt")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), ToPoincare())
    loss = HyperbolicSoftTripleLoss(2, 3, centers_per_class=2, manifold_proxies=True)
    opt = geoopt.optim.RiemannianAdam(param_groups(model, loss, lr=1e-3, proxy_lr=1e-2))
    before = loss.proxies.detach().clone()
    loss(model(torch.randn(6, 4)), torch.arange(6) % 2).backward()
    opt.step()
    assert not torch.equal(loss.proxies.detach(), before)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 1e-2


def test_pml_trainer_with_a_separate_metric_loss_optimizer():
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(8, 4), ToPoincare())
    loss = HyperbolicSoftTripleLoss(4, 4, centers_per_class=2)
    before = loss.proxies.detach().clone()
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(param_groups(trunk, lr=1e-3)),
            "metric_loss_optimizer": torch.optim.Adam(param_groups(None, loss, lr=1e-3, proxy_lr_mult=100)),
        },
        batch_size=8,
        loss_funcs={"metric_loss": loss},
        dataset=torch.utils.data.TensorDataset(torch.randn(32, 8), torch.arange(32) % 4),
        iterations_per_epoch=2,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # pml's default is the GPU when there is one; the models are on the CPU
    )
    trainer.train(num_epochs=1)
    assert not torch.equal(loss.proxies.detach(), before)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), dict(lr=1e-3), "exactly one of proxy_lr"),
        ((None, torch.nn.Linear(2, 2)), dict(lr=1e-3, proxy_lr=1.0, proxy_lr_mult=10), "exactly one of proxy_lr"),
        ((None, torch.nn.Linear(2, 2)), dict(lr=1e-3, proxy_lr=[1.0, 2.0]), "2 values but 1 losses"),
        ((None, torch.nn.Linear(2, 2)), dict(lr=1e-3, proxy_lr_mult=0), "must be > 0"),
        (([torch.nn.Parameter(torch.zeros(1))],), dict(lr=1e-3), "model must be an nn.Module"),
        ((None, "loss"), dict(lr=1e-3, proxy_lr=1.0), "losses must be nn.Module"),
    ],
)
def test_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(*args, **kwargs)
