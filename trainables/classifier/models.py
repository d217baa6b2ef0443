"""The classifiers: torchvision's GoogLeNet and ResNet-18, untrained, with the stem sized for the resolution."""
import torch
import torchvision
from torch import nn

AUX_WEIGHT = 0.3  # of each auxiliary head's loss, as in the GoogLeNet paper


def build_classifier(cfg, num_classes: int) -> nn.Module:
    """A randomly initialised classifier (never pretrained weights, never a download), from torch's
    current RNG state.

    Sized for the resolution: the ImageNet stems downsample 4x before the first block, which leaves
    almost nothing of a small image. So GoogLeNet at 32 px drops `maxpool1` (inception3 then sees
    8x8, as at 64 px with the full stem), and ResNet-18 at <= 64 px takes the CIFAR stem (a 3x3
    stride-1 conv1 and no max-pool). Larger images keep the ImageNet stems.

    Inputs are `to_input` of uint8 images. GoogLeNet with `aux_logits` returns GoogLeNetOutputs
    (logits, aux2, aux1) in train mode; every model returns plain logits in eval mode.
    """
    if cfg.arch == "googlenet":
        model = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=cfg.aux_logits,
                                             init_weights=True, transform_input=False)
        if cfg.resolution <= 32:
            model.maxpool1 = nn.Identity()
        return model
    if cfg.arch == "resnet18":
        model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        if cfg.resolution <= 64:
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
            model.maxpool = nn.Identity()
        return model
    raise ValueError(f"unknown arch {cfg.arch!r}")


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [-1, 1], the range the generators produce."""
    return images.float() / 127.5 - 1.0


def classification_loss(outputs, labels: torch.Tensor,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimise, the main head's logits); GoogLeNet's auxiliary heads add AUX_WEIGHT each."""
    def ce(logits):
        return nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    if isinstance(outputs, torchvision.models.GoogLeNetOutputs):
        logits = outputs.logits
        return ce(logits) + AUX_WEIGHT * (ce(outputs.aux_logits1) + ce(outputs.aux_logits2)), logits
    return ce(outputs), outputs
