"""Command-line entry point: ``python examples/train.py [options]`` (``--help`` lists them)."""

import sys
import warnings

from .config import parse_args
from .distributed import world
from .runner import benchmark_throughput, compare, run


def main(argv=None):
    # pml's progress bar formats the loss tensor itself, which recent torch versions warn about.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    cfg.seed = cfg.seeds[0]
    if world()[1] > 1 and (cfg.benchmark_throughput or len(cfg.losses) * len(cfg.seeds) > 1):
        raise SystemExit("Under torchrun the runner trains one --loss with one --seed.")
    if cfg.benchmark_throughput:
        cfg.loss = cfg.losses[0]
        return benchmark_throughput(cfg, cfg.benchmark_throughput)
    if len(cfg.losses) * len(cfg.seeds) > 1:
        return compare(cfg)
    cfg.loss = cfg.losses[0]
    results = run(cfg)
    if results:  # only rank 0 evaluates under torchrun
        print(f"\nResults, plots, logs and checkpoints: {results['config']['output'] or 'runs/'}")
    return results


if __name__ == "__main__":
    main()
