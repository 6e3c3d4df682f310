"""Build step: convert the MTCNN face detector weights shipped in the facenet-pytorch wheel to ONNX.

The three networks (P-Net, R-Net, O-Net) are re-declared here from their published layout; the weights come
from the wheel's facenet_pytorch/data/{pnet,rnet,onet}.pt (MIT licence). Run once with torch available:

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/w && unzip -o /tmp/w/facenet_pytorch-*.whl -d /tmp/w
    python tools/export_mtcnn_onnx.py /tmp/w/facenet_pytorch/data lipsync_service/core/assets/mtcnn

facenet-pytorch itself is not installed: it pins an old torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_networks():
    """The three MTCNN stages as torch modules, named like the checkpoint keys."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, 3)
            self.prelu1 = nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(10, 16, 3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, 3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 28, 3)
            self.prelu1 = nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(28, 48, 3)
            self.prelu2 = nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3 = nn.Conv2d(48, 64, 2)
            self.prelu3 = nn.PReLU(64)
            self.dense4 = nn.Linear(576, 128)
            self.prelu4 = nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            # The weights were trained in Caffe on transposed images: flatten in (W, H, C) order.
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            x = self.prelu4(self.dense4(x))
            return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3)
            self.prelu1 = nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.prelu2 = nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3 = nn.Conv2d(64, 64, 3)
            self.prelu3 = nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4 = nn.Conv2d(64, 128, 2)
            self.prelu4 = nn.PReLU(128)
            self.dense5 = nn.Linear(1152, 256)
            self.prelu5 = nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            x = self.prelu5(self.dense5(x))
            return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)

    return {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}


def depthwise_prelu(net) -> None:
    """Swap each PReLU that follows a convolution for the same function as two 1x1 depthwise convolutions.

    prelu(x) = x + (1 - a) * relu(-x). ONNX Runtime's CPU PRelu kernel is slow and keeps the graph out of its
    blocked layout; as convolutions (relu and add fused), on one core, R-Net and O-Net run in about 70 % of the
    time and P-Net on a 320x180 image in 87 %. The PReLUs after the dense layers act on [N, C] rows and stay as
    they are.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    class DepthwisePReLU(nn.Module):
        def __init__(self, prelu: nn.PReLU) -> None:
            super().__init__()
            self.channels = prelu.num_parameters
            self.register_buffer("minus_one", torch.full((self.channels, 1, 1, 1), -1.0))
            self.register_buffer("slope", (1.0 - prelu.weight.detach()).reshape(self.channels, 1, 1, 1))

        def forward(self, x):
            neg = F.relu(F.conv2d(x, self.minus_one, groups=self.channels))
            return x + F.conv2d(neg, self.slope, groups=self.channels)

    for name, module in list(net.named_children()):
        # The conv PReLUs are the ones numbered like a conv layer (prelu1 after conv1, ...).
        if isinstance(module, nn.PReLU) and hasattr(net, name.replace("prelu", "conv")):
            setattr(net, name, DepthwisePReLU(module))


def export(weights_dir: Path, out_dir: Path) -> None:
    """Load each stage's weights and write <out_dir>/{pnet,rnet,onet}.onnx (opset 17, dynamic batch)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    nets = build_networks()
    sizes = {"pnet": 12, "rnet": 24, "onet": 48}
    for name, net in nets.items():
        state = torch.load(weights_dir / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.eval()
        depthwise_prelu(net)
        size = sizes[name]
        dummy = torch.rand(2, 3, size if name != "pnet" else 64, size if name != "pnet" else 80)
        outputs = ["prob", "reg"] + (["landmarks"] if name == "onet" else [])
        axes = {"image": {0: "batch"}} if name != "pnet" else {"image": {0: "batch", 2: "height", 3: "width"}}
        for o in outputs:
            axes[o] = {0: "batch"} if name != "pnet" else {0: "batch", 1: "rows", 2: "cols"} if o == "prob" \
                else {0: "batch", 2: "rows", 3: "cols"}
        torch.onnx.export(net, (dummy,), str(out_dir / f"{name}.onnx"), input_names=["image"],
                          output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)
        print(f"wrote {out_dir / f'{name}.onnx'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir", type=Path, help="facenet_pytorch/data folder from the wheel")
    parser.add_argument("out_dir", type=Path, help="where to write pnet.onnx, rnet.onnx, onet.onnx")
    args = parser.parse_args()
    export(args.weights_dir, args.out_dir)


if __name__ == "__main__":
    main()
