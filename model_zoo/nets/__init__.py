"""Network definitions, one small file per network."""

from model_zoo.nets.scinti_resnet34 import ScintiResNet34

__all__ = ["ScintiResNet34"]
