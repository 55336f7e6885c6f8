"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) composed from minigrad.

    python -m alexnet.train            # train on the embedded data set (or --data DIR)
"""
from alexnet.model import PRESETS, AlexNet, Preset, parameter_count

__all__ = ["AlexNet", "Preset", "PRESETS", "parameter_count"]
