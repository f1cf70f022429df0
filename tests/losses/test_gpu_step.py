"""What one training step costs on a GPU, checked on every machine: the losses and the miner on the path CUDA runs
(the Triton kernels; without a GPU in Triton's interpreter) call no op that synchronises with the host, and few aten
ops; on CUDA a whole step is captured in a CUDA graph and replays the eager step."""

import pytest
import torch
from pytorch_metric_learning.losses import SoftTripleLoss

from pml_hyperbolic import backends
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
from pml_hyperbolic.miners import ReciprocalTripletMiner
from pml_hyperbolic.utils.profiling import count_ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# aten ops of one forward + backward (the targets; pml's SoftTripleLoss takes about 190)
TARGETS = {"hyperbolic_softtriple": 400, "chest": 600, "hier": 1000}


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cpu" and not backends.triton_interpreted():
        pytest.skip("the CUDA path runs on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1)")
    with backends.use("triton"):
        yield torch.device(request.param)


def batch(n, dim, classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = ToPoincare(c=0.1, clip_r=2.3)(torch.randn(n, dim, generator=g)).detach()
    return x.to(device), (torch.arange(n) % classes).to(device)


def losses(dim, classes):
    return {
        "hyperbolic_softtriple": HyperbolicSoftTripleLoss(classes, dim),
        "chest": CHESTLoss(classes, dim, euclidean_dim=dim // 2),
        "hier": HIERLoss(dim, num_proxies=32, topk=8, triplets_per_anchor=4, generator=0),
    }


def step(loss, x, labels):
    def run():
        e = x.detach().requires_grad_()
        loss(e, labels).backward()

    return run


@pytest.mark.parametrize("name", list(TARGETS))
def test_losses_call_no_syncing_op_and_few_ops(name, device):
    """No .item(), nonzero, boolean-mask indexing or unique in a step; the op count does not grow with the sizes (a
    sum of split partial gradients may appear)."""
    counts = []
    for n, dim, classes in [(24, 16, 6), (48, 32, 12)]:
        loss = losses(dim, classes)[name].to(device)
        x, labels = batch(n, dim, classes, device)
        run = step(loss, x, labels)
        run()  # first call: compilation, lazy state
        ops, syncs, which, launches = count_ops(run)
        assert syncs == 0, which
        assert launches > 0  # the kernels of the CUDA path ran
        counts.append(ops)
    assert abs(counts[0] - counts[1]) <= 2 and max(counts) <= TARGETS[name]


def test_pml_softtriple_reference_count(device):
    """The baseline the targets are relative to: pml's own SoftTripleLoss, about 190 ops, no sync."""
    x = torch.nn.functional.normalize(torch.randn(36, 32), dim=1).to(device)
    labels = (torch.arange(36) % 9).to(device)
    run = step(SoftTripleLoss(9, 32).to(device), x, labels)
    run()
    ops, syncs, _, _ = count_ops(run)
    assert syncs == 0 and 150 <= ops <= 250


def test_miner_fixed_slots_call_no_syncing_op(device):
    x, labels = batch(40, 16, 8, device)
    miner = ReciprocalTripletMiner(topk=6, triplets_per_anchor=4, generator=0)
    sim = -torch.cdist(x, x)
    ops, syncs, which, _ = count_ops(lambda: miner.mine_fixed(sim, labels))
    assert syncs == 0, which
    anchors, positives, negatives, valid = miner.mine_fixed(sim, labels)
    assert anchors.shape == positives.shape == negatives.shape == valid.shape == (160,)
    kept = miner.mine_similarity(sim, labels)  # the pml-style output: the valid slots
    assert len(kept[0]) == int(valid.sum()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(TARGETS))
def test_cuda_graph_replays_the_eager_step(name):
    """A whole forward + backward, captured once with torch.cuda.graphs, replays the eager computation (same loss and
    gradients for new inputs copied into the static ones; HIER's Gumbel key is redrawn on the device each replay)."""
    loss = losses(64, 18)[name].cuda()
    x, labels = batch(72, 64, 18, "cuda")
    static_x = x.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up: compile the kernels, allocate lazily created state
            static_x.grad = None
            loss(static_x, labels).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    loss.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_loss = loss(static_x, labels)
        static_loss.backward()
    for seed in (1, 2):
        new_x, _ = batch(72, 64, 18, "cuda", seed=seed)
        with torch.no_grad():
            static_x.copy_(new_x)
            static_x.grad.zero_()
        graph.replay()
        torch.cuda.synchronize()
        if name == "hier":  # stochastic LCAs: the replay must be finite and differ between replays
            assert torch.isfinite(static_loss) and torch.isfinite(static_x.grad).all()
            continue
        eager_x = new_x.clone().requires_grad_()
        eager = loss(eager_x, labels)
        eager.backward()
        torch.testing.assert_close(static_loss, eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(static_x.grad, eager_x.grad, rtol=1e-4, atol=1e-7)
