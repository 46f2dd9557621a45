"""Tiny models and loaders shared by the explainer tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.explainer.presets import ExplainerHyperparameters

NUM_CLASSES = 3
SIZE = 16

#: Options of a quick ``fit``: a large learning rate, no progress bar.
FAST = {"config": ExplainerHyperparameters(lr=1e-2), "show_progress": False}


def tiny_classifier(num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Module:
    """A small CNN with BatchNorm and Dropout (so train/eval mode matters)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, num_classes),
    )


def classifier_with_head(mlp: bool = False, seed: int = 0) -> nn.Module:
    """A small CNN whose forward ends with a module named ``head`` (one or two linear layers)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, NUM_CLASSES)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5))
    head.extend(layers if mlp else [nn.Linear(6, NUM_CLASSES)])
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2)
            ),
            head=head,
        )
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_explainer(num_classes: int = NUM_CLASSES, seed: int = 0) -> Explainer:
    torch.manual_seed(seed)
    return Explainer(build_backbone("unet-small", num_classes, width=2), num_classes)


def data(n: int = 12, seed: int = 0, multilabel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g)
    if multilabel:
        labels = (torch.rand(n, NUM_CLASSES, generator=g) < 0.5).float()
        labels[labels.sum(1) == 0, 0] = 1.0
    else:
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return images, labels


def tuple_loader(n: int = 12, seed: int = 0, multilabel: bool = False, shuffle: bool = True):
    images, labels = data(n, seed, multilabel)
    return DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=shuffle)


class DictDataset(torch.utils.data.Dataset):
    """Items shaped like ShapesDataset's."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "label": int(self.labels[i]),
            "evidence": self.images[i, 0] > 0.5,
        }


def dict_loader(n: int = 12, seed: int = 0, shuffle: bool = True):
    images, labels = data(n, seed)
    return DataLoader(DictDataset(images, labels), batch_size=4, shuffle=shuffle)
