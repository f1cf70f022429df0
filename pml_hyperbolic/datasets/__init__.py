"""Dataset readers (mirroring ``pytorch_metric_learning.datasets``): the four DML benchmarks in their published
folder formats, scikit-learn's digits, and a generated hierarchy. Nothing is ever downloaded."""

from .base_dataset import LocalDataset
from .cars196 import Cars196
from .cub import CUB
from .digits import Digits
from .fashion_mnist import FashionMNIST
from .inshop import InShop
from .sop import StanfordOnlineProducts
from .synthetic_tree import SyntheticTree
