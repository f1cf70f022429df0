from .hyperbolic_soft_triple_loss import HyperbolicSoftTripleLoss
from .hier_loss import HIERLoss
from .chest_loss import CHESTLoss
