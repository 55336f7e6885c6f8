"""minigrad: a small autograd engine on NumPy and CuPy arrays, with the ops a CNN needs.

    import minigrad
    from minigrad import functional as F, nn, optim

README.md, "Reading the code", gives the order to read it in, each file with the paper
section it implements.
"""
from minigrad import functional, nn, optim
from minigrad.backend import gpu_count
from minigrad.gradcheck import gradcheck
from minigrad.random import manual_seed
from minigrad.tensor import Function, Tensor, is_grad_enabled, no_grad

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "functional", "nn", "optim",
           "gradcheck", "manual_seed", "gpu_count"]
