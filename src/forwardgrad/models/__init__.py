"""Model builders: plain ``nn.Module``s, one per module, and a registry of them by name.

* :func:`mlp` (``models/mlp.py``): Linear-act-...-Linear.
* :func:`cnn` (``models/cnn.py``): a LeNet-style conv net for 8x8 to 32x32 images.
* :func:`resnet18` (``models/resnet.py``): ResNet-18; batch, group or no norm; CIFAR or
  ImageNet stem.
* :func:`vit` (``models/vit.py``): the multi-tangent paper's small Vision Transformer.
* :func:`localmixer` (``models/localmixer.py``): Ren et al.'s LocalMixer, with local losses.
* :data:`MODELS` / :func:`build_model` (``models/registry.py``): the builders by name, from one
  example's shape as the dataset serves it.

No model keeps an ``nn.Parameter`` on its root module: every parameter lives in the small
submodule whose forward uses it.
"""

from .cnn import LeNet, cnn
from .localmixer import LocalMixer, MixerBlock, localmixer
from .mlp import mlp
from .registry import MODELS, ModelSpec, build_model
from .resnet import BasicBlock, ResNet18, resnet18
from .vit import Attention, EncoderBlock, PatchEmbedding, ViT, vit

__all__ = [
    "MODELS",
    "Attention",
    "BasicBlock",
    "EncoderBlock",
    "LeNet",
    "LocalMixer",
    "MixerBlock",
    "ModelSpec",
    "PatchEmbedding",
    "ResNet18",
    "ViT",
    "build_model",
    "cnn",
    "localmixer",
    "mlp",
    "resnet18",
    "vit",
]
