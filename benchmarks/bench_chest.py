"""Forward + backward time and peak memory of CHESTLoss against pml's SoftTripleLoss, with CHEST's parts one by one.

Sizes: K = 10 proxies per class, batch 180 (90 classes × 2 images, HIER's sampler), CUB scale (100 classes) and SOP
scale (11,318 classes), 2 CPU threads. The embedding width is D = 128 for both: pml's SoftTripleLoss on 128-d unit
vectors; CHEST in layout (b) with D_E = D_H = 64 (``[normalize(64) | ToPoincare(64)]``, the same head width), default
configuration. The parts are timed alone on the same inputs (what CHEST adds on top is the slicing and the
bookkeeping of the loss dicts). Two more rows show the cost of HIER's configuration: CHEST without HIER, and CHEST
with HIER's paper settings (512 hierarchical proxies, topk 20, 50 triplets per anchor). Target: CHEST (default)
at most 2.5x pml's time.

    python benchmarks/bench_chest.py [--device cuda]
"""

import torch
import torch.nn.functional as F
from bench_utils import device_parser, graphed, op_counts, peak_memory_mb, print_counts, print_table, step_fn, time_ms
from pytorch_metric_learning.losses import SoftTripleLoss

from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import CHESTLoss
from pml_hyperbolic.losses.chest_loss import HIER_DEFAULTS, HYPHC_DEFAULTS

K, D, D_E, B = 10, 128, 64, 180
HIER_PAPER = dict(num_proxies=512, topk=20, triplets_per_anchor=50)


def main():
    device = device_parser().parse_args().device
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"CHEST default: regularizer HypHC {HYPHC_DEFAULTS}; HIER rows: {HIER_DEFAULTS}")
    for num_classes in (100, 11318):
        labels = torch.randperm(num_classes)[:90].repeat_interleave(2).to(device)
        features = torch.randn(B, D, device=device)
        sphere = F.normalize(features, dim=1).requires_grad_(True)
        ball = ToPoincare(c=0.1, clip_r=2.3)(features[:, D_E:])
        layout_b = torch.cat([F.normalize(features[:, :D_E], dim=1), ball], 1)
        layout_b = layout_b.detach().requires_grad_(True)

        def chest(**kwargs):
            loss_fn = CHESTLoss(num_classes, D, euclidean_dim=D_E, centers_per_class=K, **kwargs).to(device)
            return step_fn(loss_fn, layout_b, labels)

        only = dict(hyperbolic_weight=0.0, euclidean_weight=0.0, regularizer=None)
        fns = {
            "pml SoftTripleLoss (D = 128)": step_fn(
                SoftTripleLoss(num_classes, D, centers_per_class=K).to(device), sphere, labels
            ),
            "CHESTLoss (default, 64 + 64)": chest(),
            "  part: hyperbolic SoftTriple (64)": chest(**{**only, "hyperbolic_weight": 1.0}),
            "  part: Euclidean pml SoftTriple (64)": chest(**{**only, "euclidean_weight": 1.0}),
            "CHESTLoss without regularizer": chest(regularizer=None),
            "CHESTLoss with HIER": chest(regularizer="hier"),
            "CHESTLoss with HIER, paper sizes": chest(regularizer="hier", regularizer_kwargs=HIER_PAPER),
        }
        counted = ["pml SoftTripleLoss (D = 128)", "CHESTLoss (default, 64 + 64)"]
        if device.type == "cuda":
            fns["CHESTLoss (default), CUDA graph replay"] = graphed(fns["CHESTLoss (default, 64 + 64)"], device)
        small = num_classes < 1000 or device.type == "cuda"
        times = time_ms(fns, repeats=10 if small else 3, warmup=2 if small else 1, device=device)
        rows = {name: (times[name], peak_memory_mb(fn, device)) for name, fn in fns.items()}
        where = "2 threads" if device.type == "cpu" else str(device)
        print(f"\nC = {num_classes} classes x K = {K} proxies, D = {D}, batch {B} (forward + backward, {where})")
        print_table(rows, baseline="pml SoftTripleLoss (D = 128)")
        print_counts({name: op_counts(fns[name], device) for name in counted})


if __name__ == "__main__":
    main()
