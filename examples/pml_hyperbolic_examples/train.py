"""Command-line entry point: ``python examples/train.py [options]`` (``--help`` lists them)."""

import sys
import warnings

from .config import parse_args
from .distributed import world
from .errors import UsageError


def main(argv=None):
    """Run what ``argv`` asks for; a :class:`~.errors.UsageError` (e.g. a missing dataset) ends the program with its
    message on stderr and exit status 2, without a traceback."""
    # pml's progress bar formats the loss tensor itself, which recent torch versions warn about.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _main(cfg)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(cfg):
    from .compare import compare
    from .evaluation import hierarchy_line
    from .runner import run
    from .throughput import benchmark_throughput

    cfg.seed = cfg.seeds[0]
    if world()[1] > 1 and (cfg.benchmark_throughput or len(cfg.losses) * len(cfg.seeds) > 1):
        raise UsageError("Under torchrun the runner trains one --loss with one --seed.")
    if cfg.benchmark_throughput:
        cfg.loss = cfg.losses[0]
        return benchmark_throughput(cfg, cfg.benchmark_throughput)
    if len(cfg.losses) * len(cfg.seeds) > 1:
        return compare(cfg)
    cfg.loss = cfg.losses[0]
    results = run(cfg)
    if results:  # only rank 0 evaluates under torchrun
        result = results["result"]
        print(f"\nReported: epoch {result['epoch']} ({result['selected_by']}).")
        if "hierarchy" in results:
            print(hierarchy_line(results["hierarchy"]))
        print(f"Results, plots, logs and checkpoints: {results['output']}")
    return results


if __name__ == "__main__":
    main()
