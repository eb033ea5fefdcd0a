"""The AAM model (pure PyTorch): see `aam.models.model` for the whole architecture in one file."""

from aam.models.categorical import FUSION_GUIDE
from aam.models.heads import TargetLayout
from aam.models.model import AAM

__all__ = ["AAM", "FUSION_GUIDE", "TargetLayout"]
