"""The paper's numbers: parameter count, every shape, the towers' devices; whole-net gradients."""
import numpy
import pytest

import minigrad
from alexnet import AlexNet, parameter_count
from minigrad import backend
from minigrad import functional as F

PAPER_SHAPES = {  # PAPER.md's table, per tower, one image
    "conv1a": (48, 55, 55), "conv1b": (48, 55, 55),
    "pool1a": (48, 27, 27), "pool1b": (48, 27, 27), "conv2a": (128, 27, 27), "conv2b": (128, 27, 27),
    "pool2a": (128, 13, 13), "pool2b": (128, 13, 13),
    "conv3a": (192, 13, 13), "conv3b": (192, 13, 13), "conv4a": (192, 13, 13), "conv4b": (192, 13, 13),
    "conv5a": (128, 13, 13), "conv5b": (128, 13, 13),
    "pool5a": (128, 6, 6), "pool5b": (128, 6, 6), "fc6a": (2048,), "fc6b": (2048,),
    "fc7a": (2048,), "fc7b": (2048,), "fc8": (1000,)}


@pytest.fixture(scope="module")
def paper_net():
    minigrad.manual_seed(0)
    return AlexNet(devices=("cpu", "cpu"))


def test_paper_network_has_60965224_parameters(paper_net):
    assert parameter_count(paper_net) == 60_965_224


def test_state_dict_names_and_shapes(paper_net):
    state = paper_net.state_dict()
    layers = [f"conv{i}{t}" for i in range(1, 6) for t in "ab"] + \
             [f"fc{i}{t}" for i in (6, 7) for t in "ab"] + ["fc8"]
    assert list(state) == [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
    assert state["conv1a.weight"].shape == (48, 3, 11, 11)
    assert state["conv3b.weight"].shape == (192, 256, 3, 3)          # reads both towers
    assert state["conv4a.weight"].shape == (192, 192, 3, 3)          # reads its own tower
    assert state["fc6a.weight"].shape == (2048, 9216)
    assert state["fc8.weight"].shape == (1000, 4096)


def test_every_intermediate_shape_matches_the_paper(paper_net):
    trace = {}
    x = numpy.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(numpy.float32)
    logits = paper_net.eval()(x, trace=trace)
    assert {name: t.shape[1:] for name, t in trace.items()} == PAPER_SHAPES
    assert logits.shape == (1, 1000) and logits.dtype == numpy.float32


def test_paper_init(paper_net):
    state = paper_net.state_dict()
    for name, value in state.items():
        layer, kind = name.split(".")
        if kind == "bias":
            expected = 1.0 if layer.rstrip("ab") in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert numpy.all(value == expected), name
    assert state["fc6a.weight"].std() == pytest.approx(0.01, rel=0.01)


@pytest.mark.parametrize("init, bias_one, fc_std", [("paper", 1.0, 0.01), ("caffe", 0.1, 0.005)])
def test_gaussian_inits_of_paper_and_caffe(init, bias_one, fc_std):
    minigrad.manual_seed(0)
    net = AlexNet(num_classes=10, preset="small", init=init, devices=("cpu", "cpu"))
    for name, value in net.state_dict().items():
        layer, kind = name.split(".")
        layer = layer.rstrip("ab")
        if kind == "bias":
            expected = bias_one if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert numpy.all(value == numpy.float32(expected)), name
        else:
            std = fc_std if layer in ("fc6", "fc7") else 0.01
            assert value.std() == pytest.approx(std, rel=0.1), name
    assert net.input_scale == 1.0


def test_fc6_reads_pool5a_then_pool5b_in_chw_order():
    minigrad.manual_seed(0)
    net = AlexNet(num_classes=3, preset="tiny", dtype=numpy.float64, devices=("cpu", "cpu")).eval()
    trace = {}
    x = numpy.random.default_rng(0).standard_normal((2, 3, 35, 35))
    net(x, trace=trace)
    joined = numpy.concatenate([trace["pool5a"].numpy().reshape(2, -1),
                                trace["pool5b"].numpy().reshape(2, -1)], axis=1)
    W, b = net.fc6a.weight.numpy(), net.fc6a.bias.numpy()
    numpy.testing.assert_allclose(trace["fc6a"].numpy(), numpy.maximum(joined @ W.T + b, 0), rtol=1e-12)


def test_whole_network_gradcheck_float64():
    minigrad.manual_seed(3)
    net = AlexNet(num_classes=3, preset="tiny", dtype=numpy.float64, init="kaiming",
                  devices=("cpu", "cpu")).eval()
    x = numpy.random.default_rng(1).standard_normal((2, 3, 35, 35))
    labels = numpy.array([0, 2])
    assert minigrad.gradcheck(lambda *params: F.cross_entropy(net(x), labels), net.parameters(),
                              atol=1e-6, rtol=1e-4)


def test_eval_is_deterministic_and_train_is_not():
    minigrad.manual_seed(0)
    net = AlexNet(num_classes=5, preset="tiny", init="kaiming", devices=("cpu", "cpu"))
    x = numpy.random.default_rng(0).standard_normal((4, 3, 35, 35)).astype(numpy.float32)
    net.eval()
    numpy.testing.assert_array_equal(net(x).numpy(), net(x).numpy())
    net.train()
    assert not numpy.array_equal(net(x).numpy(), net(x).numpy())


def test_wrong_input_size_is_explained():
    net = AlexNet(num_classes=5, preset="tiny", devices=("cpu", "cpu"))
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 35, 35\)"):
        net(numpy.zeros((1, 3, 36, 36), numpy.float32))


@pytest.mark.parametrize("devices", [(0, "cpu"), ("cpu", 0), (0, 0), (0, 1), (1, 0)],
                         ids=lambda d: f"{d[0]},{d[1]}")
def test_every_layout_of_the_towers_computes_what_the_cpu_does(devices):
    """Each tower's parameters, activations and gradients live on its device, and the network
    computes, in float64, the CPU's logits and gradients from the same weights and the same
    dropout masks: the joins (conv3, fc6, fc7, fc8) copy between devices, and a tower on the
    CPU beside one on a GPU makes every join a real copy."""
    needed = 1 + max(d for d in devices if d != "cpu")
    if backend.gpu_count() < needed:
        pytest.skip(f"needs {needed} GPU(s), found {backend.gpu_count()}")
    x = numpy.random.default_rng(0).standard_normal((2, 3, 35, 35)) * 60
    labels = numpy.array([0, 3])
    results = []
    for layout in (("cpu", "cpu"), devices):
        minigrad.manual_seed(0)                           # the same weights and dropout masks
        net = AlexNet(num_classes=4, preset="tiny", init="kaiming", devices=layout,
                      dtype=numpy.float64)
        trace = {}
        loss = F.cross_entropy(net(x, trace=trace), labels)
        loss.backward()
        results.append((trace["fc8"].numpy(), {n: backend.to_device(p.grad, "cpu")
                                               for n, p in net.named_parameters()}))
    for name, t in trace.items():
        assert t.device == (devices[0] if name == "fc8" or name.endswith("a") else devices[1]), name
    for tower, device in zip("ab", devices):
        for layer in net.tower_layers(tower):
            for p in layer.parameters():
                assert p.device == device and backend.device_of(p.grad) == device
    (logits_cpu, grads_cpu), (logits, grads) = results
    numpy.testing.assert_allclose(logits, logits_cpu, rtol=1e-10, atol=1e-12)
    for name, grad in grads.items():
        numpy.testing.assert_allclose(grad, grads_cpu[name], rtol=1e-8,
                                      atol=1e-10 * numpy.abs(grads_cpu[name]).max(), err_msg=name)
