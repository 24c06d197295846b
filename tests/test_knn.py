"""kNN evaluation against a slow, obviously correct version."""

from __future__ import annotations

import math

import torch

from evaluation.knn import knn_accuracy, knn_predict


def _slow_knn(train, labels, test, k, t, num_classes):  # type: ignore[no-untyped-def]
    preds = []
    for q in test:
        sims = []
        for i, x in enumerate(train):
            sims.append((float(q @ x) / (q.norm() * x.norm()).item(), i))
        sims.sort(reverse=True)
        votes = [0.0] * num_classes
        for s, i in sims[:k]:
            votes[int(labels[i])] += math.exp(s / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_matches_slow_version() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(25, 8, generator=g)
    fast = knn_predict(train, labels, test, k=7, temperature=0.07, num_classes=4, chunk=4)
    assert torch.equal(fast, _slow_knn(train, labels, test, 7, 0.07, 4))


def test_separable_clusters_are_classified() -> None:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(20)
    train = centers[labels] + 0.1 * torch.randn(60, 16, generator=g)
    test_labels = torch.arange(3).repeat(5)
    test = centers[test_labels] + 0.1 * torch.randn(15, 16, generator=g)
    acc = knn_accuracy(train, labels, test, test_labels, ks=(1, 10, 200))
    assert acc[1] == 1.0 and acc[10] == 1.0
    assert acc[200] == 1.0  # k clipped to the training set size
