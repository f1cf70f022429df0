from .to_poincare import ToPoincare
