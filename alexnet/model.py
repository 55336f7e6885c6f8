"""The two-tower AlexNet of Krizhevsky, Sutskever and Hinton (2012), section 3 and Figure 2.

Two towers ("a" and "b", one per GPU in the paper) run side by side; each owns half of every
layer's kernels. They exchange activations at four places only: conv3, fc6, fc7 and fc8 read
the outputs of both towers, every other layer reads its own tower alone.

    per tower            reads          output (paper preset, one image)
    conv1 11x11 /4       the image      48x55x55 -> relu, LRN, maxpool 3/2 -> 48x27x27
    conv2 5x5 pad 2      own tower      128x27x27 -> relu, LRN, maxpool 3/2 -> 128x13x13
    conv3 3x3 pad 1      BOTH towers    192x13x13 -> relu
    conv4 3x3 pad 1      own tower      192x13x13 -> relu
    conv5 3x3 pad 1      own tower      128x13x13 -> relu, maxpool 3/2 -> 128x6x6
    fc6                  BOTH towers    2048 -> relu, dropout 0.5
    fc7                  BOTH towers    2048 -> relu, dropout 0.5
    fc8 (tower a only)   BOTH towers    num_classes logits

The input is 227x227 (the paper says 224; 227 makes (227 - 11) / 4 + 1 = 55 exact).
"""
import sys
from dataclasses import dataclass

import numpy

import minigrad
from minigrad import backend, nn, parallel
from minigrad import functional as F
from minigrad import random as mg_random


@dataclass(frozen=True)
class Preset:
    """The sizes of one network of the AlexNet structure (widths are per tower)."""
    input_size: int
    conv1_kernel: int
    conv1_stride: int
    widths: tuple          # output channels of conv1..conv5 in one tower
    fc_width: int          # units of fc6 and fc7 in one tower

    def stored_size(self):
        """Side of the stored images: 256 for the 227 input (section 2), the same ratio else."""
        return round(self.input_size * 256 / 227)

    def feature_size(self):
        """Side of pool5's output: conv1, then three 3/2 poolings (convs 2-5 keep the size)."""
        side = (self.input_size - self.conv1_kernel) // self.conv1_stride + 1
        for _ in range(3):
            side = (side - 3) // 2 + 1
        return side


PRESETS = {
    # The network of the paper: 60,965,224 parameters with 1000 classes.
    "paper": Preset(input_size=227, conv1_kernel=11, conv1_stride=4,
                    widths=(48, 128, 192, 192, 128), fc_width=2048),
    # The same structure at a size a 2-core CPU trains in minutes: 99 -> 23 -> 11 -> 5 -> 2.
    "small": Preset(input_size=99, conv1_kernel=11, conv1_stride=4,
                    widths=(16, 48, 64, 64, 48), fc_width=256),
    # For whole-network gradient checks: conv1 5x5/2 (an 11x11/4 needs an input of 67 or more).
    "tiny": Preset(input_size=35, conv1_kernel=5, conv1_stride=2,
                   widths=(2, 4, 4, 4, 4), fc_width=6),
}


def auto_preset(devices=None):
    """--preset auto: the paper's network where there is a GPU, the small one on a CPU (the
    paper's would take days there). `devices` ("0,1", "cpu,cpu": --devices) decide where given:
    a tower on the CPU is a run on the CPU, whatever GPUs the machine has."""
    if devices is not None:
        return "small" if "cpu" in devices.split(",") else "paper"
    return "paper" if backend.gpu_count() else "small"


# Section 5: "We initialized the neuron biases in the second, fourth, and fifth convolutional
# layers, as well as in the fully-connected hidden layers, with the constant 1."
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")

# Caffe's models/bvlc_alexnet: "initializing non-zero biases to 0.1 instead of 1 (found necessary
# for training, as initialization to 1 gave flat loss)", and std 0.005 for the fc6, fc7 weights.
CAFFE_BIAS, CAFFE_FC_STD = 0.1, 0.005

INITS = ("kaiming", "paper", "caffe")

# Typical standard deviation of mean-subtracted 0..255 pixel values (ImageNet: about 60-70).
PIXEL_STD = 64.0

_announced_cpu = False


def default_devices():
    """Two GPUs: (0, 1); one: (0, 0); none: ("cpu", "cpu"), said once."""
    global _announced_cpu
    count = backend.gpu_count()
    if count >= 2:
        return 0, 1
    if count == 1:
        return 0, 0
    if not _announced_cpu:
        print("alexnet: no GPU found, both towers run on the CPU (NumPy)", file=sys.stderr)
        _announced_cpu = True
    return "cpu", "cpu"


class AlexNet(nn.Module):
    """AlexNet with explicit towers: conv1a/conv1b ... fc7a/fc7b, and fc8 on tower a's device.

    num_classes: size of fc8.  devices: (device of tower a, device of tower b), each "cpu" or
    a GPU id, or the same as text such as "0,1"; default `default_devices()`.  dtype:
    numpy.float32 or numpy.float64.
    init: one of INITS. "paper" (section 5): weights N(0, 0.01^2), biases 1 in conv2, conv4,
    conv5, fc6, fc7 and 0 elsewhere. "caffe" (BVLC's replication of AlexNet): the same but biases
    0.1 instead of 1 and fc6, fc7 weights N(0, 0.005^2). "kaiming" (He et al. 2015): He-normal
    weights, zero biases, fc8 N(0, 0.01^2) so that the first logits are near 0. The paper's and
    Caffe's fixed standard deviations shrink the signal layer by layer in a network narrower
    than the paper's (and the paper's biases of 1 then dominate it), which leaves the loss
    flat at ln(classes); He's scales each layer by its fan-in and trains at any width. The
    input is the paper's: mean-subtracted 0..255 pixels. He et al. assume inputs of unit
    variance, so with init="kaiming" the network first multiplies its input by
    input_scale = 1 / PIXEL_STD (1 otherwise).
    preset: "paper", "small" or "tiny" (see PRESETS), or a Preset.  dropout: the probability
    of dropping a unit of fc6 and fc7 in training (the paper's 0.5).
    """

    def __init__(self, num_classes=1000, devices=None, dtype=numpy.float32, init="paper",
                 preset="paper", dropout=0.5):
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        self.preset = preset
        c1, c2, c3, c4, c5 = preset.widths
        fc, side = preset.fc_width, preset.feature_size()
        k, s = preset.conv1_kernel, preset.conv1_stride
        for t in "ab":
            setattr(self, f"conv1{t}", nn.Conv2d(3, c1, k, stride=s, dtype=dtype))
        for t in "ab":
            setattr(self, f"conv2{t}", nn.Conv2d(c1, c2, 5, padding=2, dtype=dtype))
        for t in "ab":
            setattr(self, f"conv3{t}", nn.Conv2d(2 * c2, c3, 3, padding=1, dtype=dtype))
        for t in "ab":
            setattr(self, f"conv4{t}", nn.Conv2d(c3, c4, 3, padding=1, dtype=dtype))
        for t in "ab":
            setattr(self, f"conv5{t}", nn.Conv2d(c4, c5, 3, padding=1, dtype=dtype))
        for t in "ab":
            setattr(self, f"fc6{t}", nn.Linear(2 * c5 * side * side, fc, dtype=dtype))
        for t in "ab":
            setattr(self, f"fc7{t}", nn.Linear(2 * fc, fc, dtype=dtype))
        self.fc8 = nn.Linear(2 * fc, num_classes, dtype=dtype)
        self.lrn = nn.LRN(n=5, k=2.0, alpha=1e-4, beta=0.75)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.dropout = nn.Dropout(dropout)
        if init == "kaiming":        # He-normal from nn; the output layer starts near 0 logits
            self.fc8.weight.data = (mg_random.generator().standard_normal(self.fc8.weight.shape)
                                    * 0.01).astype(dtype)
        else:
            self._gaussian_init(init)
        self.input_scale = 1.0 / PIXEL_STD if init == "kaiming" else 1.0
        if isinstance(devices, str):
            devices = devices.split(",")
        self.devices = tuple(backend.parse_device(d) for d in (devices or default_devices()))
        self._place()

    def _gaussian_init(self, init):
        """The paper's initialization, or Caffe's variant of it (init "caffe")."""
        for name, p in self.named_parameters():
            layer, kind = name.split(".")
            layer = layer.rstrip("ab")                               # "conv2a" -> "conv2"
            if kind == "weight":
                std = CAFFE_FC_STD if init == "caffe" and layer in ("fc6", "fc7") else 0.01
                p.data = (mg_random.generator().standard_normal(p.shape) * std).astype(p.dtype)
            else:
                one = CAFFE_BIAS if init == "caffe" else 1.0
                p.data = numpy.full(p.shape, one if layer in PAPER_BIAS_ONE else 0.0, p.dtype)

    def tower_layers(self, tower):
        """The layers of tower "a" or "b" (fc8 belongs to tower a)."""
        names = [f"conv{i}{tower}" for i in range(1, 6)] + [f"fc6{tower}", f"fc7{tower}"]
        return [getattr(self, n) for n in names] + ([self.fc8] if tower == "a" else [])

    def _place(self):
        for tower, device in zip("ab", self.devices):
            for layer in self.tower_layers(tower):
                layer.to(device)

    def forward(self, x, trace=None):
        """x (N, 3, S, S) array or Tensor -> logits (N, num_classes) on tower a's device.

        trace: an optional dict that receives every layer's output by name, in layer order,
        each tower a entry followed by its tower b twin: conv1a, conv1b (after ReLU), pool1a,
        pool1b (after LRN and pooling), ... conv5a, conv5b, pool5a, pool5b, fc6a, fc6b, fc7a,
        fc7b (after ReLU and dropout), fc8 (for tests and for looking inside: alexnet/show.py).
        """
        x = x if isinstance(x, minigrad.Tensor) else minigrad.Tensor(x)
        expected = (3, self.preset.input_size, self.preset.input_size)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"AlexNet expects images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {x.shape}; crop or resize the input to the preset's size")
        da, db = self.devices
        trace = trace if trace is not None else {}

        def join(a, b, device):               # the towers meet: both halves onto one device
            return F.concat([a, b], axis=1, device=device)

        def towers(stage, a, b):              # a stage of both towers, side by side on a CPU
            outputs = parallel.side_by_side(lambda: stage("a", a), lambda: stage("b", b),
                                            devices=self.devices)
            for name in outputs[0]:           # the trace in layer order, tower a then b
                trace[f"{name}a"], trace[f"{name}b"] = outputs[0][name], outputs[1][name]
            return [list(out.values())[-1] for out in outputs]   # a stage's last entry: its output

        if self.input_scale != 1.0:
            x = x * self.input_scale
        a, b = towers(self._lower, x.to(da), x.to(db))
        a, b = towers(self._upper, join(a, b, da), join(a, b, db))
        a, b = F.flatten(a), F.flatten(b)     # (N, C*H*W) in C, H, W order
        for i in (6, 7):                      # in order: dropout draws from one generator
            a, b = (self.dropout(F.relu(getattr(self, f"fc{i}a")(join(a, b, da)))),
                    self.dropout(F.relu(getattr(self, f"fc{i}b")(join(a, b, db)))))
            trace[f"fc{i}a"], trace[f"fc{i}b"] = a, b
        logits = trace["fc8"] = self.fc8(join(a, b, da))
        return logits

    def _lower(self, tower, x):
        """conv1 and conv2 of one tower, each -> ReLU -> LRN -> max pool: outputs by layer."""
        out = {}
        for i in (1, 2):
            x = out[f"conv{i}"] = F.relu(getattr(self, f"conv{i}{tower}")(x))
            x = out[f"pool{i}"] = self.pool(self.lrn(x))
        return out

    def _upper(self, tower, x):
        """conv3 (x: both towers' pool2), conv4, conv5 -> max pool of one tower."""
        out = {}
        for i in (3, 4, 5):
            x = out[f"conv{i}"] = F.relu(getattr(self, f"conv{i}{tower}")(x))
        out["pool5"] = self.pool(x)
        return out


def parameter_count(model):
    return sum(int(numpy.prod(p.shape)) for p in model.parameters())
