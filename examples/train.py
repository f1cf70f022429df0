"""Train and evaluate hyperbolic (and Euclidean) metric-learning losses with pytorch-metric-learning.

python examples/train.py                     # compare all losses on digits (CPU, a few minutes)
python examples/train.py --help              # datasets, losses, backbones, presets, options
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pml_hyperbolic_examples.train import main  # noqa: E402

if __name__ == "__main__":
    main()
