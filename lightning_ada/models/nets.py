"""MONAI 3D segmentation nets and the hook that exposes their bottleneck features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn

NetName = Literal["dynunet", "unet", "segresnet"]


def build_net(
    name: NetName, in_channels: int, out_channels: int, filters: Sequence[int] = (8, 16, 32, 64)
) -> nn.Module:
    """Build a 3-D segmentation net taking ``(B, in_channels, H, W, D)`` -> logits ``(B, K, H, W, D)``.

    Args:
        name: ``dynunet`` (nnU-Net-like, default), ``unet`` or ``segresnet``.
        in_channels: number of modalities.
        out_channels: number of classes including background.
        filters: channels per resolution level (its length sets the depth; spatial sizes must
            be divisible by ``2 ** (len(filters) - 1)``).
    """
    levels = len(filters)
    if name == "dynunet":
        return DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(filters),
            norm_name=("INSTANCE", {"affine": True}),
            res_block=True,
        )
    if name == "unet":
        return UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=list(filters),
            strides=[2] * (levels - 1),
            num_res_units=1,
            norm="INSTANCE",
        )
    if name == "segresnet":
        return SegResNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            init_filters=filters[0],
            blocks_down=tuple([1] * levels),
            blocks_up=tuple([1] * (levels - 1)),
        )
    raise ValueError(f"unknown net {name!r}; choose dynunet, unet or segresnet")


def bottleneck(net: nn.Module) -> nn.Module:
    """The deepest encoder stage of ``net`` (where case embeddings are pooled, ALGORITHMS B4)."""
    if isinstance(net, DynUNet):
        return net.bottleneck
    if isinstance(net, SegResNet):
        return net.down_layers[-1]
    if isinstance(net, UNet):
        # UNet nests (down, SkipConnection(sub), up); the innermost sub-block is the bottom.
        block: nn.Module = net.model
        while True:
            inner = [m for m in block.children() if m.__class__.__name__ == "SkipConnection"]
            if not inner:
                break
            block = inner[0].submodule
        return block
    raise TypeError(f"no bottleneck known for {type(net).__name__}")


class FeatureTap:
    """Collect global-average-pooled bottleneck features ``(B, d)`` during forward passes."""

    def __init__(self, net: nn.Module) -> None:
        self.features: list[torch.Tensor] = []
        self._handle = bottleneck(net).register_forward_hook(self._hook)
        self.enabled = False

    def _hook(self, module: nn.Module, args: object, output: torch.Tensor) -> None:
        if self.enabled:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.features.append(out.detach().float().mean(dim=tuple(range(2, out.ndim))))

    def pop(self) -> torch.Tensor | None:
        """Mean over every forward since the last call, ``(d,)`` (None if nothing ran)."""
        if not self.features:
            return None
        feats = torch.cat(self.features).mean(0)
        self.features.clear()
        return feats


def decoder_head_input(net: nn.Module) -> nn.Module:
    """The module whose *input* is the last full-resolution decoder feature map."""
    if isinstance(net, DynUNet):
        return net.output_block
    raise TypeError(f"decoder features are only wired for DynUNet, not {type(net).__name__}")
