from .chest_loss import CHESTLoss
from .hier_loss import HIERLoss
from .hyperbolic_soft_triple_loss import HyperbolicSoftTripleLoss
