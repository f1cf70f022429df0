"""Forward + backward time and peak memory of HyperbolicSoftTripleLoss against pml's SoftTripleLoss.

Same sizes for both: K = 10 proxies per class, D = 128, batch 180, at CUB scale (100 classes) and SOP scale
(11,318 classes). Inputs are realistic: ``ToPoincare`` of random features for the hyperbolic loss, L2-normalised
random features for pml's. Target: at most 1.5x pml's time and 2x its memory at both scales. Also printed: the aten
ops of one step and those that would synchronise on a GPU (and, on CUDA, the kernels launched and host syncs), and on
CUDA the step replayed from a CUDA graph.

    python benchmarks/bench_softtriple.py [--device cuda]
"""

import torch
import torch.nn.functional as F
from bench_utils import device_parser, graphed, op_counts, peak_memory_mb, print_counts, print_table, step_fn, time_ms
from pytorch_metric_learning.losses import SoftTripleLoss

from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HyperbolicSoftTripleLoss

K, D, B = 10, 128, 180


def main():
    device = device_parser().parse_args().device
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for num_classes in (100, 11318):
        features = torch.randn(B, D, device=device)
        labels = torch.randint(0, num_classes, (B,), device=device)
        ball = ToPoincare(c=0.1, clip_r=2.3)(features).detach().requires_grad_(True)
        sphere = F.normalize(features, dim=1).detach().requires_grad_(True)
        fns = {
            "pml SoftTripleLoss (cosine)": step_fn(
                SoftTripleLoss(num_classes, D, centers_per_class=K).to(device), sphere, labels
            ),
            "HyperbolicSoftTripleLoss": step_fn(
                HyperbolicSoftTripleLoss(num_classes, D, centers_per_class=K).to(device), ball, labels
            ),
            "HyperbolicSoftTripleLoss + centers reg": step_fn(
                HyperbolicSoftTripleLoss(num_classes, D, centers_per_class=K, centers_reg_weight=0.1).to(device),
                ball,
                labels,
            ),
        }
        counted = list(fns)[:2]
        if device.type == "cuda":
            fns["HyperbolicSoftTripleLoss, CUDA graph replay"] = graphed(fns["HyperbolicSoftTripleLoss"], device)
        times = time_ms(fns, repeats=10 if num_classes < 1000 or device.type == "cuda" else 5, device=device)
        rows = {name: (times[name], peak_memory_mb(fn, device)) for name, fn in fns.items()}
        print(f"\nC = {num_classes} classes x K = {K} proxies, D = {D}, batch {B} (forward + backward, {device})")
        print_table(rows, baseline="pml SoftTripleLoss (cosine)")
        print_counts({name: op_counts(fns[name], device) for name in counted})


if __name__ == "__main__":
    main()
