"""torchvision architectures (no pretrained weights) with BatchNorm statistics set from real photo
crops, for coverage tests of "any real model": activations get realistic ranges without downloads."""
from __future__ import annotations

import functools

import numpy as np

import unified

SIZE = 64
PREPROCESS = unified.Preprocess(resize=73, crop=SIZE, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
CLASSIFIERS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
               "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "googlenet", "efficientnet_b0", "regnet_x_400mf")


@functools.lru_cache(maxsize=None)
def photo_crops(count: int, seed: int) -> np.ndarray:
    """`count` random crops of the offline photos, preprocessed to SIZE (float NCHW)."""
    from unified.inputs.sample_images import random_crops

    return np.concatenate([PREPROCESS(c) for c in random_crops(count, seed=seed)])


def set_batchnorm_from_photos(net, images: np.ndarray) -> None:
    """Train-mode passes over real crops give every BatchNorm the statistics of real activations."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all passes
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), 8):
            net(torch.from_numpy(images[i:i + 8]))
    net.eval()


@functools.lru_cache(maxsize=None)
def classifier(name: str):
    """A torchvision classifier with random weights and photo BatchNorm statistics (a torch module)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    net = getattr(torchvision.models, name)(**kwargs)
    set_batchnorm_from_photos(net, photo_crops(32, seed=11))
    return net


def _conv_bn_relu(cin: int, cout: int, stride: int = 1):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _tiny_yolo():
    """YOLO-style: a strided backbone, an FPN-like neck (nearest Upsample + Concat), three Sigmoid
    heads at strides 8, 16 and 32 (three outputs)."""
    import torch
    import torch.nn as nn

    class TinyYolo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(_conv_bn_relu(3, 16, 2), _conv_bn_relu(16, 32, 2))
            self.c3 = _conv_bn_relu(32, 48, 2)      # stride 8
            self.c4 = _conv_bn_relu(48, 64, 2)      # stride 16
            self.c5 = _conv_bn_relu(64, 96, 2)      # stride 32
            self.lat5 = nn.Conv2d(96, 64, 1)
            self.fuse4 = _conv_bn_relu(128, 64)
            self.lat4 = nn.Conv2d(64, 48, 1)
            self.fuse3 = _conv_bn_relu(96, 48)
            self.heads = nn.ModuleList([nn.Conv2d(c, 3 * 6, 1) for c in (48, 64, 96)])

        def forward(self, x):
            c3 = self.c3(self.stem(x))
            c4 = self.c4(c3)
            c5 = self.c5(c4)
            p4 = self.fuse4(torch.cat([nn.functional.interpolate(self.lat5(c5), scale_factor=2.0, mode="nearest"), c4], 1))
            p3 = self.fuse3(torch.cat([nn.functional.interpolate(self.lat4(p4), scale_factor=2.0, mode="nearest"), c3], 1))
            return tuple(torch.sigmoid(h(p)) for h, p in zip(self.heads, (p3, p4, c5)))

    return TinyYolo()


def _tiny_unet():
    """U-Net: two downsampling stages, a bottleneck, bilinear upsampling with skip Concats, a
    2-class mask at full resolution."""
    import torch
    import torch.nn as nn

    class TinyUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2 = _conv_bn_relu(3, 16), _conv_bn_relu(16, 32)
            self.mid = _conv_bn_relu(32, 64)
            self.d2, self.d1 = _conv_bn_relu(64 + 32, 32), _conv_bn_relu(32 + 16, 16)
            self.out = nn.Conv2d(16, 2, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            e1 = self.e1(x)
            e2 = self.e2(self.pool(e1))
            m = self.mid(self.pool(e2))
            up = lambda t: nn.functional.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)  # noqa: E731
            d2 = self.d2(torch.cat([up(m), e2], 1))
            return self.out(self.d1(torch.cat([up(d2), e1], 1)))

    return TinyUNet()


def _tiny_vit():
    """A small ViT: 8x8 patches, two pre-norm blocks (LayerNorm, multi-head attention as 3-D MatMul
    and Softmax, Erf GELU), mean pooling, a linear head."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.heads, self.dim = heads, dim

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = self.qkv(self.n1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
            return x + self.mlp(self.n2(x))

    class TinyViT(nn.Module):
        def __init__(self, dim: int = 64) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 8, 8)
            self.pos = nn.Parameter(torch.randn(1, (SIZE // 8) ** 2, dim) * 0.02)
            self.blocks = nn.Sequential(Block(dim, 4), Block(dim, 4))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
            return self.head(self.norm(self.blocks(x)).mean(1))

    return TinyViT()


BUILDERS = {"tiny_yolo": _tiny_yolo, "tiny_unet": _tiny_unet, "tiny_vit": _tiny_vit}


@functools.lru_cache(maxsize=None)
def custom(name: str):
    """A detector, segmenter or transformer built here, BatchNorm statistics from photos."""
    import torch

    torch.manual_seed(0)
    net = BUILDERS[name]()
    set_batchnorm_from_photos(net, photo_crops(32, seed=11))
    return net
