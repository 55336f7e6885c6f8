"""Modules, state dicts, SGD with the paper's update, and the plateau schedule."""
import numpy
import pytest

import minigrad
from minigrad import backend, nn, optim
from minigrad import functional as F
from minigrad.tensor import Tensor


class TwoLayer(nn.Module):
    def __init__(self, dtype=numpy.float32):
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, dtype=dtype), nn.ReLU(),
                                      nn.LRN(n=3), nn.MaxPool2d(3, 2))
        self.drop = nn.Dropout(0.5)
        self.classifier = nn.Linear(4 * 3 * 3, 5, dtype=dtype)

    def forward(self, x):
        return self.classifier(self.drop(F.flatten(self.features(x))))


def test_named_parameters_follow_attribute_order():
    names = [name for name, _ in TwoLayer().named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "classifier.weight", "classifier.bias"]


def test_a_parameter_reached_twice_is_listed_once():
    """A layer kept as an attribute and inside a Sequential: SGD, given it twice, took two
    steps a step (with two momentum buffers)."""
    class Shared(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2, dtype=numpy.float64)
            self.net = nn.Sequential(self.fc, nn.ReLU())

    model = Shared()
    assert [name for name, _ in model.named_parameters()] == ["fc.weight", "fc.bias",
                                                             "net.0.weight", "net.0.bias"]
    assert model.parameters() == [model.fc.weight, model.fc.bias]
    sgd = optim.SGD(model.parameters(), lr=0.5, momentum=0.0, weight_decay=0.0)
    model.fc.bias.grad = numpy.ones(2)
    sgd.step()
    numpy.testing.assert_array_equal(model.fc.bias.numpy(), [-0.5, -0.5])


def test_sequential_indexing_and_slicing():
    """A slice gave the second (name, module) pair of the slice, not the layers."""
    first, relu, last = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    seq = nn.Sequential(first, relu, last)
    assert seq[0] is first and seq[-1] is last and len(seq) == 3
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and list(head) == [first, relu]
    assert head(Tensor(numpy.ones((1, 3), numpy.float32))).shape == (1, 4)


def test_state_dict_round_trip_copies_values():
    minigrad.manual_seed(0)
    a = TwoLayer()
    minigrad.manual_seed(1)
    b = TwoLayer()
    state = a.state_dict()
    assert all(isinstance(v, numpy.ndarray) for v in state.values())
    b.load_state_dict(state)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        numpy.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    state["classifier.bias"][:] = 7.0                     # a copy: the model is unchanged
    assert not numpy.any(a.classifier.bias.numpy() == 7.0)


def test_load_state_dict_takes_tensors_too():
    """Another model's parameters as they are: NumPy took a Tensor for a sequence of rows."""
    minigrad.manual_seed(0)
    a = TwoLayer()
    b = TwoLayer()
    b.load_state_dict(dict(a.named_parameters()))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        numpy.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
        assert p.data is not q.data


def test_load_state_dict_names_every_problem():
    model = TwoLayer()
    state = model.state_dict()
    del state["classifier.bias"]
    state["extra.weight"] = numpy.zeros(2)
    state["features.0.weight"] = numpy.zeros((4, 3, 5, 5))
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing keys: classifier.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "features.0.weight (4, 3, 5, 5) (expected (4, 3, 3, 3))" in message


def test_train_and_eval_switch_dropout():
    model = TwoLayer()
    x = Tensor(numpy.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(numpy.float32))
    model.eval()
    assert not model.drop.training and not model.features[0].training
    numpy.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    assert model.drop.training
    assert not numpy.array_equal(model(x).numpy(), model(x).numpy())


def test_a_whole_model_passes_gradcheck_in_float64():
    minigrad.manual_seed(0)
    model = TwoLayer(dtype=numpy.float64).eval()
    x = numpy.random.default_rng(0).standard_normal((2, 3, 7, 7))
    labels = numpy.array([1, 4])
    assert minigrad.gradcheck(lambda *params: F.cross_entropy(model(Tensor(x)), labels),
                              model.parameters())


def test_module_to_moves_parameters(device):
    model = TwoLayer().to(device)
    assert {p.device for p in model.parameters()} == {device}


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(3, 4), (3, optim.SLICE // 2 + 7)], ids=["small", "in slices"])
def test_sgd_step_is_the_papers_formula(device, shape, dtype):
    """Bit for bit, in the formula's order, each term rounded to the parameter's dtype: on a GPU
    too (minigrad/kernels/sgd.cu)."""
    rng = numpy.random.default_rng(0)
    w0, g0, g1 = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    w = nn.Parameter(backend.to_device(w0.copy(), device))
    sgd = optim.SGD([w], lr=0.01, momentum=0.9, weight_decay=0.0005)
    v = numpy.zeros_like(w0)
    expected = w0.copy()
    for g in (g0, g1):
        w.grad = backend.to_device(g, device)
        sgd.step()
        v = 0.9 * v - 0.0005 * 0.01 * expected - 0.01 * g
        expected = expected + v
        numpy.testing.assert_array_equal(w.numpy(), expected)


@pytest.mark.parametrize("devices", [("cpu", "cpu"), pytest.param(
    (0, 1), marks=pytest.mark.skipif(backend.gpu_count() < 2, reason="needs two GPUs"))],
    ids=["numpy", "two GPUs"])
def test_clip_grad_norm_scales_all_gradients_by_one_factor(devices):
    """Within the norm: the same bits. Above: every gradient times max_norm / norm, the norm
    taken over all of them together (the towers' on two devices). The norm before is returned."""
    rng = numpy.random.default_rng(0)
    grads = [rng.standard_normal(shape).astype(numpy.float32)
             for shape in ((4, 3, 5), (7,), (6, 2))]
    params = [nn.Parameter(backend.to_device(numpy.zeros_like(g), d))
              for g, d in zip(grads, devices * 2)]
    norm = numpy.sqrt(sum((g.astype(numpy.float64) ** 2).sum() for g in grads))
    for max_norm, factor in ((norm * 1.01, 1.0), (norm / 4, 0.25)):
        for p, g in zip(params, grads):
            p.grad = backend.to_device(g.copy(), p.device)
        before = optim.clip_grad_norm(params, max_norm)
        assert float(backend.to_device(before, "cpu")) == pytest.approx(norm, rel=1e-6)
        for p, g in zip(params, grads):
            assert backend.device_of(p.grad) == p.device
            got = backend.to_device(p.grad, "cpu")
            if factor == 1.0:
                numpy.testing.assert_array_equal(got, g)
            else:
                numpy.testing.assert_allclose(got, g * factor, rtol=1e-6)
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g.copy(), p.device)
    params[1].grad = None                                          # no gradient: not counted
    assert float(backend.to_device(optim.clip_grad_norm(params, 1e9), "cpu")) == pytest.approx(
        numpy.sqrt(sum((g.astype(numpy.float64) ** 2).sum() for g in grads[::2])), rel=1e-6)


def test_clip_grad_norm_on_a_gpu_scales_without_waiting(device):
    """On a GPU the decision stays on the device: a gradient within the norm is scaled by
    exactly 1 (the same bits), one beyond it down to the norm."""
    for scale, max_norm in ((1.0, 10.0), (1e3, 10.0)):
        g = numpy.full((3, 4), scale, numpy.float32)
        p = nn.Parameter(backend.to_device(numpy.zeros_like(g), device))
        p.grad = backend.to_device(g.copy(), device)
        optim.clip_grad_norm([p], max_norm)
        expected = g if scale == 1.0 else g * numpy.float32(max_norm / numpy.sqrt(12e6))
        numpy.testing.assert_allclose(backend.to_device(p.grad, "cpu"), expected, rtol=1e-6)


def test_load_state_dict_copies_and_sgd_updates_every_layout():
    """A loaded array is copied (training must not write into the caller's dict) in C order,
    and SGD updates a parameter of any layout in place (reshape(-1) would copy a Fortran one)."""
    layer = nn.Linear(3, 2, dtype=numpy.float64)
    state = {"weight": numpy.asfortranarray(numpy.ones((2, 3))), "bias": numpy.ones(2)}
    layer.load_state_dict(state)
    assert layer.weight.data.flags.c_contiguous and layer.weight.data is not state["weight"]
    fortran = nn.Parameter(numpy.asfortranarray(numpy.ones((2, 3))))
    sgd = optim.SGD([layer.weight, fortran], lr=0.1, momentum=0.0, weight_decay=0.0)
    layer.weight.grad, fortran.grad = numpy.ones((2, 3)), numpy.ones((2, 3))
    sgd.step()
    for p in (layer.weight, fortran):
        numpy.testing.assert_allclose(p.numpy(), numpy.full((2, 3), 0.9))
    numpy.testing.assert_array_equal(state["weight"], numpy.ones((2, 3)))


def test_sgd_skips_parameters_without_gradient():
    w = nn.Parameter(numpy.ones(3))
    optim.SGD([w]).step()
    numpy.testing.assert_array_equal(w.numpy(), numpy.ones(3))


def test_one_tensor_is_refused_by_sgd_and_clipped_as_it_is():
    """A Tensor iterates over its rows, which have no gradient: SGD(w) trained nothing and
    clip_grad_norm(w) returned 0 and clipped nothing, without a word."""
    w = nn.Parameter(numpy.ones((2, 3)))
    with pytest.raises(TypeError, match="SGD takes an iterable of parameters"):
        optim.SGD(w)
    w.grad = numpy.full((2, 3), 2.0)
    assert optim.clip_grad_norm(w, 1.0) == pytest.approx(numpy.sqrt(24.0))
    numpy.testing.assert_allclose(w.grad, numpy.full((2, 3), 1 / numpy.sqrt(6.0)))


def test_sgd_state_dict_round_trip_includes_momentum():
    rng = numpy.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal(3)) for _ in range(2)]
    twins = [nn.Parameter(p.numpy().copy()) for p in params]
    a, b = optim.SGD(params, lr=0.1), optim.SGD(twins, lr=0.5)
    for p in params:
        p.grad = rng.standard_normal(3)
    a.step()
    state = a.state_dict()
    b.load_state_dict(state)
    for p, q in zip(params, twins):
        q.data = p.data.copy()
    grads = [rng.standard_normal(3) for _ in params]
    for p, q, g in zip(params, twins, grads):
        p.grad, q.grad = g, g.copy()
    a.step()
    b.step()
    assert b.lr == 0.1
    for p, q in zip(params, twins):
        numpy.testing.assert_array_equal(p.numpy(), q.numpy())


def test_sgd_load_state_dict_rejects_other_shapes():
    a = optim.SGD([nn.Parameter(numpy.ones(3))])
    a.params[0].grad = numpy.ones(3)
    a.step()
    b = optim.SGD([nn.Parameter(numpy.ones(4))])
    with pytest.raises(ValueError, match="momentum buffer 0 has shape"):
        b.load_state_dict(a.state_dict())


def test_plateau_schedule_judges_patience_in_training_done_and_finishes():
    sgd = optim.SGD([nn.Parameter(numpy.ones(1))], lr=0.01)
    schedule = optim.ReduceLROnPlateau(sgd, patience=300, max_reductions=2)
    # (error, images trained so far): evaluations 100 images apart, then 50 apart.
    evaluations = [(0.9, 100), (0.8, 200), (0.8, 300), (0.81, 400), (0.8, 500),   # reduce at 500
                   (0.7, 550), (0.7, 600), (0.7, 850),                            # reduce at 850
                   (0.7, 900), (0.69, 950), (0.7, 1000), (0.7, 1250),             # finish at 1250
                   (0.1, 1300)]
    said = [schedule.step(error, seen) for error, seen in evaluations]
    assert said == ["improved", "improved", None, None, "reduced",
                    "improved", None, "reduced",
                    None, "improved", None, "finished", "finished"]
    assert sgd.lr == pytest.approx(0.0001) and schedule.reductions == 2 and schedule.finished
    other = optim.ReduceLROnPlateau(sgd, patience=300)
    other.load_state_dict(schedule.state_dict())
    assert (other.best, other.since, other.reductions, other.finished) == (0.69, 1250, 2, True)


def test_plateau_schedule_with_no_reductions_stops_at_the_first_plateau():
    sgd = optim.SGD([nn.Parameter(numpy.ones(1))], lr=0.01)
    schedule = optim.ReduceLROnPlateau(sgd, patience=2, max_reductions=0)
    assert [schedule.step(e, i) for i, e in enumerate((0.5, 0.5, 0.5))] == \
        ["improved", None, "finished"]
    assert sgd.lr == 0.01


def test_training_a_tiny_model_lowers_the_loss():
    minigrad.manual_seed(0)
    rng = numpy.random.default_rng(0)
    x = Tensor(rng.standard_normal((8, 3, 7, 7)).astype(numpy.float32))
    labels = rng.integers(0, 5, 8)
    model = TwoLayer()
    model.drop.p = 0.0
    sgd = optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        sgd.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        sgd.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
