"""Shared fixtures: tiny real datasets and a quickly trained model, made once per test session."""

from __future__ import annotations

import os

import pytest
import torch

# One thread: with the other core busy (a browser, a server), two OpenMP threads make small ops far slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shapes_small():
    """A small shapes train/test pair (2,000 / 500 images)."""
    from cnnviz import data

    train = data.load("shapes", train=True, seed=0).subset(2000)
    test = data.load("shapes", train=False, seed=0).subset(500)
    return train, test


@pytest.fixture(scope="session")
def trained_shapes(shapes_small):
    """A tiny model trained briefly on shapes: (model, spec, train split, test split)."""
    from cnnviz import models, train

    tr, te = shapes_small
    spec = models.preset("tiny", 3, 32, tr.info.num_classes)
    model = models.build(spec, seed=0)
    train.fit(model, tr, train.TrainConfig(epochs=1, min_steps=300, batch_size=64))
    return model, spec, tr, te
