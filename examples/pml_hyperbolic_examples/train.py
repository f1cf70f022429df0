"""Command-line entry point: ``python examples/train.py [options]`` (``--help`` lists them)."""

import sys
import warnings

from .config import parse_args
from .runner import benchmark_throughput, compare, run


def main(argv=None):
    # pml's progress bar formats the loss tensor itself, which recent torch versions warn about.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    cfg.seed = cfg.seeds[0]
    if cfg.benchmark_throughput:
        cfg.loss = cfg.losses[0]
        return benchmark_throughput(cfg, cfg.benchmark_throughput)
    if len(cfg.losses) * len(cfg.seeds) > 1:
        return compare(cfg)
    cfg.loss = cfg.losses[0]
    results = run(cfg)
    print(f"\nResults, plots, logs and checkpoints: {results['config']['output'] or 'runs/'}")
    return results


if __name__ == "__main__":
    main()
