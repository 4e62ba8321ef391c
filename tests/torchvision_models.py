"""torchvision architectures without weights, exported once per session, for operator coverage."""
from __future__ import annotations

import functools

import onnx

ARCHITECTURES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1",
                 "shufflenet_v2_x0_5", "googlenet")


@functools.lru_cache(maxsize=None)
def torchvision_onnx(name: str) -> onnx.ModelProto:
    import torch
    import torchvision

    from unified.inputs.zoo import export_torch

    torch.manual_seed(0)
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    net = getattr(torchvision.models, name)(**kwargs).eval()
    # Untrained BatchNorm statistics are the identity; give them spread so quantization is tested
    # on realistic, varied ranges instead of near-constant tensors.
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    return export_torch(net, (1, 3, 224, 224), dynamic_batch=False)
