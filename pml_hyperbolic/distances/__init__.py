from .poincare_distance import PoincareDistance
