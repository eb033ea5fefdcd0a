"""The AAM model (pure PyTorch): `aam.models.model` composes it, top to bottom, from the blocks of
`layers`, the heads of `heads` and the fusions of `categorical`."""

from aam.models.categorical import FUSION_GUIDE
from aam.models.heads import TargetLayout
from aam.models.model import AAM

__all__ = ["AAM", "FUSION_GUIDE", "TargetLayout"]
