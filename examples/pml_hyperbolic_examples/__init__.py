"""The pml_hyperbolic runner: train and evaluate metric-learning losses on pml's trainers and testers
(``python examples/train.py --help``)."""
