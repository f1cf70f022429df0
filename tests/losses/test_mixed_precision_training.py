"""A few hundred training steps of every loss of this package under autocast (bfloat16 on CPU, float16 with a
GradScaler on CUDA), at a high learning rate that drives embeddings and proxies towards the ball's boundary: no NaN
or inf in losses, gradients or parameters, and the loss parameters keep float32. (With float16, the GradScaler's first
steps overflow the scaled gradients until its scale has come down: those, and only a few, may be non-finite.)"""

import pytest
import torch
from pytorch_metric_learning.losses import MultipleLosses, ProxyAnchorLoss, SupConLoss

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead, ToPoincare
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss

CLASSES, DIM, STEPS = 6, 16, 300
HIER = dict(num_proxies=24, topk=6, triplets_per_anchor=5, generator=0)


def setup(name):
    ball_head = lambda: torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, DIM),  # noqa: E731
                                            ToPoincare(c=0.1, clip_r=2.3))  # fmt: skip
    if name == "chest":
        head = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), EuclideanHyperbolicHead(64, 8, 8))
        return head, CHESTLoss(CLASSES, DIM, euclidean_dim=8, centers_per_class=4, regularizer="hier",
                               regularizer_kwargs=HIER)
    loss = {
        "hyperbolic_softtriple": lambda: HyperbolicSoftTripleLoss(CLASSES, DIM, centers_per_class=4),
        "proxy_anchor+hier": lambda: MultipleLosses(
            {"pa": ProxyAnchorLoss(CLASSES, DIM), "hier": HIERLoss(DIM, **HIER)}, weights={"pa": 1, "hier": 0.5}
        ),
        "hyperbolic_supcon": lambda: SupConLoss(temperature=0.1, distance=PoincareDistance(c=0.1)),
    }[name]()
    return ball_head(), loss


def train(name, device, dtype):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, 20, generator=g) * 3
    model, loss = setup(name)
    model, loss = model.to(device), loss.to(device)
    params = list(model.parameters()) + list(loss.parameters())
    opt = torch.optim.Adam(params, lr=3e-2)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    first, overflows = None, 0
    for step in range(STEPS):
        y = torch.arange(36) % CLASSES
        x = (centres[y] + torch.randn(36, 20, generator=g)).to(device)
        with torch.autocast(device.type, dtype=dtype):
            emb = model(x)
            value = loss(emb, y.to(device))
        opt.zero_grad()
        scaler.scale(value).backward()
        assert torch.isfinite(value), (name, step)
        scaler.unscale_(opt)
        if not all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            # Only the float16 backward of the *scaled* loss may overflow: the GradScaler then skips the step and
            # halves its scale. A NaN or inf from the loss itself would recur at every scale.
            assert scaler.is_enabled(), (name, step)
            overflows += 1
        first = value.item() if first is None else first
        scaler.step(opt)
        scaler.update()
        for p in params:
            assert torch.isfinite(p).all() and p.dtype == torch.float32, (name, step)
    assert overflows <= 20, f"{name}: {overflows} of {STEPS} steps had non-finite gradients"
    assert value.item() < first, "the loss must go down"


LOSSES = ["hyperbolic_softtriple", "proxy_anchor+hier", "chest", "hyperbolic_supcon"]


@pytest.mark.parametrize("name", LOSSES)
def test_bfloat16_autocast_on_cpu(name):
    torch.set_num_threads(1)
    train(name, torch.device("cpu"), torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOSSES)
def test_float16_autocast_with_grad_scaler_on_cuda(name):
    train(name, torch.device("cuda"), torch.float16)
