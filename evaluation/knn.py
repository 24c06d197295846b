"""k-nearest-neighbour evaluation of frozen features (DINO protocol, Caron et al. 2021).

L2-normalised class-token features; each test image takes its k most cosine-similar training
images, weighted by ``exp(similarity / T)`` (T = 0.07), and votes for their labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data_catalog.image import open_image


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels [M] for ``test_features`` [M, D] against ``train_features`` [N, D].

    Features are L2-normalised here; ``k`` is clipped to N. Memory is O(chunk x N).
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels disagree on the number of samples")
    num_classes = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sims = test[start : start + chunk] @ train.T  # [c, N]
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx].long(), weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[int, float]:
    """Top-1 accuracy (0..1) for each k."""
    num_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    return {
        k: float(
            (
                knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
                == test_labels
            )
            .float()
            .mean()
        )
        for k in ks
    }


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token features [N, D] (float32, on CPU) and labels [N] of ``(images, labels)`` batches."""
    model.eval().to(device)
    feats, labels = [], []
    for images, targets in batches:
        out = model(images.to(device))
        feats.append(out.float().cpu().clone())  # a copy: the class token is a view of every token
        labels.append(targets.cpu())
    return torch.cat(feats), torch.cat(labels)


def eval_transform(resize: int, crop: int):  # type: ignore[no-untyped-def]
    """Resize the short side to ``resize``, centre-crop ``crop``, normalise (ImageNet statistics).

    The protocol's 256/224 for real models; smaller for CPU demo models (crop a multiple of the patch).
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )


def open_image_file(path: str) -> Image.Image:
    """THE image of a file (``data_catalog.image.open_image``: upright RGB, transparency on white),
    as curation measured it and training saw it; ImageFolder's own loader applies neither."""
    with open(path, "rb") as f:
        return open_image(f.read())


def image_folder_loader(
    root: str,
    resize: int,
    crop: int,
    batch_size: int = 128,
    limit_per_class: int | None = None,
    num_workers: int = 0,
):  # type: ignore[no-untyped-def]
    """Batches of an ImageFolder tree (``root/<class>/<image>``), optionally the first N per class;
    images opened by ``open_image_file``."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(root, transform=eval_transform(resize, crop), loader=open_image_file)
    if limit_per_class is not None:
        targets = np.asarray(dataset.targets)
        keep = np.concatenate(
            [np.flatnonzero(targets == c)[:limit_per_class] for c in range(len(dataset.classes))]
        )
        dataset = torch.utils.data.Subset(dataset, keep.tolist())  # type: ignore[assignment]
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
