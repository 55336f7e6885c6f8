"""Check backward() against float64 central differences."""
import numpy

from minigrad import backend
from minigrad.tensor import Tensor, no_grad


def gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, seed=0):
    """Compare the gradient of fn at `inputs` computed by backward() with central differences.

    fn(*inputs) returns a Tensor or a list of Tensors. The output is projected on a fixed random
    direction r, L = sum(fn(*inputs) * r), so that every output element counts with a different
    weight; then for every element x_i of every input with requires_grad,

        dL/dx_i  ~=  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

    The inputs checked must be float64. Raises AssertionError naming the worst element;
    returns True.
    """
    rng = numpy.random.default_rng(seed)
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for k, t in enumerate(checked):         # in float32 a step of eps=1e-6 is mostly rounding
        if t.dtype != numpy.float64:
            raise ValueError(f"gradcheck: input {k} is {t.dtype}; central differences with "
                             f"eps={eps} need float64: pass Tensor(x, dtype=numpy.float64)")

    def outputs():
        out = fn(*inputs)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    directions = [backend.to_device(rng.standard_normal(y.shape), y.device) for y in outputs()]

    def projected():
        with no_grad():                                  # values only: record no graph
            return sum(float((y.data * r).sum()) for y, r in zip(outputs(), directions))

    for t in checked:
        t.grad = None
    loss = None
    for y, r in zip(outputs(), directions):
        term = (y * Tensor(r.astype(y.dtype))).sum()
        loss = term if loss is None else loss + term
    loss.backward()

    for k, t in enumerate(checked):
        analytic = backend.to_device(t.grad, "cpu") if t.grad is not None else numpy.zeros(t.shape)
        numeric = numpy.zeros(t.shape)
        t.data = t.data.copy()                           # C-contiguous, so reshape(-1) is a view
        flat = t.data.reshape(-1)                        # a view: writing it perturbs t.data
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            plus = projected()
            flat[i] = original - eps
            minus = projected()
            flat[i] = original
            numeric.reshape(-1)[i] = (plus - minus) / (2 * eps)
        error = numpy.abs(analytic - numeric) - (atol + rtol * numpy.abs(numeric))
        if error.max() > 0:
            worst = numpy.unravel_index(error.argmax(), t.shape)
            raise AssertionError(
                f"gradcheck: input {k} of shape {t.shape} at {worst}: backward gives "
                f"{analytic[worst]:.10g}, central differences {numeric[worst]:.10g} "
                f"(max abs difference {numpy.abs(analytic - numeric).max():.3g})")
    return True

