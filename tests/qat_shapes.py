"""A small CNN trained with PyTorch quantization-aware training on synthetic shapes, exported to ONNX
QDQ: the QAT model that `test_qat_import.py` imports on every backend. Offline and deterministic.

Task: 20x20 grayscale images of one of four shapes (filled square, ring, horizontal bar, vertical bar) at a
random place and size, with noise. The network carries the fake-quant modules of
`torch.ao.quantization` (moving-average observers, uint8 activations, per-channel symmetric int8
weights), which `torch.onnx.export` writes as QuantizeLinear/DequantizeLinear pairs.
"""
from __future__ import annotations

import io

import numpy as np

SIZE = 20
CLASSES = 4


def shapes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (N, 1, 20, 20) in [-1, 1] and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.empty((count, 1, SIZE, SIZE), np.float32)
    labels = rng.integers(0, CLASSES, count)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(7, SIZE - 7, 2)
        r = rng.uniform(4, 6.5)
        dy, dx = yy - cy, xx - cx
        if label == 0:
            mask = (np.abs(dy) <= r) & (np.abs(dx) <= r)
        elif label == 1:
            d = np.hypot(dy, dx)
            mask = (d <= r) & (d >= r - 1.6)
        elif label == 2:
            mask = (np.abs(dy) <= 1.2) & (np.abs(dx) <= r)
        else:
            mask = (np.abs(dx) <= 1.2) & (np.abs(dy) <= r)
        image = mask * rng.uniform(0.6, 1.0) + rng.normal(0, 0.1, (SIZE, SIZE))
        images[i, 0] = np.clip(image, 0, 1.2) * 1.6 - 0.8
    return images, labels


def qat_model_and_onnx(steps: int = 300, seed: int = 0):
    """(the trained QAT torch module in eval mode, its ONNX QDQ export as bytes)."""
    import torch
    from torch import nn
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    torch.manual_seed(seed)

    def act_fq() -> FakeQuantize:
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                            qscheme=torch.per_tensor_affine)

    def weight_fq() -> FakeQuantize:
        return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    class QatConv(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
            self.wq, self.aq = weight_fq(), act_fq()

        def forward(self, x):
            return self.aq(torch.relu(nn.functional.conv2d(x, self.wq(self.conv.weight), self.conv.bias,
                                                           self.conv.stride, self.conv.padding)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inq = act_fq()
            self.c1, self.c2, self.c3 = QatConv(1, 8, 1), QatConv(8, 16, 2), QatConv(16, 24, 2)
            self.fc = nn.Linear(24, CLASSES)
            self.fcw, self.poolq, self.outq = weight_fq(), act_fq(), act_fq()

        def forward(self, x):
            x = self.c3(self.c2(self.c1(self.inq(x))))
            x = self.poolq(x.mean(dim=(2, 3)))
            return self.outq(nn.functional.linear(x, self.fcw(self.fc.weight), self.fc.bias))

    net = Net()
    images, labels = shapes(steps * 32, seed=100 + seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for step in range(steps):
        x = torch.from_numpy(images[step * 32:(step + 1) * 32])
        y = torch.from_numpy(labels[step * 32:(step + 1) * 32])
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    for module in net.modules():  # frozen ranges: the exported scales are the trained ones
        if isinstance(module, FakeQuantize):
            module.disable_observer()
    buffer = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 1, SIZE, SIZE), buffer, opset_version=13, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return net, buffer.getvalue()
