"""Models: compact's registry (CIFAR ResNets, WRN, ResNeXt-29, DenseNet-BC, MobileNetV2) and adapters for
``timm:`` and ``torchvision:`` names."""

from compact.models import cifar_nets as _cifar_nets  # noqa: F401  (registers cifar_wrn*, resnext, densenet, mobilenet)
from compact.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers cifar_resnet*)
from compact.models import mobilefacenet as _mobilefacenet  # noqa: F401  (registers mobilefacenet)
from compact.models._builder import MODELS, create_model, list_models, register_model
from compact.models.cifar_resnet import BasicBlock, CifarResNet

__all__ = ["MODELS", "BasicBlock", "CifarResNet", "create_model", "list_models", "register_model"]
