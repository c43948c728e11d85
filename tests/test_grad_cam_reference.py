"""cxrdask's Grad-CAM equals the maintained ``grad-cam`` package's (pytorch-grad-cam's
``GradCAM``) on a CNN and on a vision transformer (with its documented ViT
``reshape_transform``), each finding's map through a head, after grad-cam's own scaling.

cxrdask keeps its own code: it gives every finding's map from one backbone pass (the
head's Jacobian, or one gradient per finding through the last block), where ``GradCAM``
runs the backbone forward and backward once per target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.serve.diagnosis import grad_cam, last_conv_maps, layer_grad_cam

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
transformers = pytest.importorskip("transformers")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class BackboneAndHead(nn.Module):
    """What a finding's logit is a function of: the image, through backbone and head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _head(width: int) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 14)).eval()


def _theirs(model: nn.Module, layer: nn.Module, x: torch.Tensor, outputs, reshape=None):
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[layer],
                                  reshape_transform=reshape) as cam:
        return np.stack([cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
                         for k in outputs])


def _scaled_like_theirs(cams: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """grad-cam's own steps after the map, applied to cxrdask's maps: min-max scaled and
    resized to the input, then min-max scaled again (its aggregation over layers)."""
    return scale_cam_image(scale_cam_image(cams.detach().numpy(), (x.shape[-1], x.shape[-2])))


def test_cnn_grad_cam_equals_grad_cams():
    spec = BackboneSpec("resnet50", "random", 1)
    backbone = build_backbone(spec)
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)  # grad-cam differentiates the model as it is
    head = _head(spec.feature_dim)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        maps = last_conv_maps(backbone, spec.name, x)[0]
    with torch.enable_grad():
        mine = grad_cam(maps, lambda pooled: head(pooled[None])[0])
    outputs = [0, 3, 9]
    theirs = _theirs(BackboneAndHead(backbone, head), backbone.layer4, x, outputs)
    np.testing.assert_allclose(_scaled_like_theirs(mine[outputs], x), theirs, atol=1e-4)


def test_vit_grad_cam_equals_grad_cams_with_its_reshape_transform(tmp_path):
    from tests.test_transformer_backbones import save_dinov2

    folder = save_dinov2(tmp_path / "dinov2", side=224, crop=224)
    backbone = build_backbone(BackboneSpec(f"hf:{folder}", "published"))
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    head = _head(48)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32))
    _, mine = layer_grad_cam(backbone, backbone.cam_layer, x, lambda f: head(f[None])[0])
    assert mine.shape == (14, 16, 16)  # 224 / 14

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:  # grad-cam's ViT example
        side = math.isqrt(tensor.shape[1] - 1)
        result = tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    outputs = [0, 6, 13]
    theirs = _theirs(BackboneAndHead(backbone, head), backbone.cam_layer, x, outputs,
                     reshape_transform)
    np.testing.assert_allclose(_scaled_like_theirs(mine[outputs], x), theirs, atol=1e-4)
