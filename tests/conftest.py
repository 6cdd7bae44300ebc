"""Shared fixtures: tiny real datasets and a quickly trained model, made once per test session."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

# The served app hides error details from students (.streamlit/config.toml, which AppTest reads too); tests want
# every exception raised, so app.py re-raises instead of showing its friendly message.
import streamlit  # noqa: E402

streamlit.config.set_option("client.showErrorDetails", "full")

# One thread: with the other core busy (a browser, a server), two OpenMP threads make small ops far slower.
torch.set_num_threads(1)


def _loopback(address) -> bool:
    """True for an address on this machine: a Unix socket path, localhost, 127.0.0.0/8 or ::1."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths (and abstract names) never leave the machine
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: that is the network


class NetworkBlocked(OSError):
    """A test tried to reach another machine; tests never touch the network."""


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Refuse every connection that would leave this machine, so a test that would download fails instead.

    Covers this process (the back end, and the pages under AppTest, which run in it). The app servers that browser
    tests start are separate processes serving loopback only, and the pages they serve load no remote resources.
    """
    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def guard(address):
        if not _loopback(address):
            raise NetworkBlocked(f"tests never touch the network (tried to reach {address!r})")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        guard((host.decode() if isinstance(host, bytes) else host or "localhost", 0))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (real_connect, real_connect_ex,
                                                                               real_getaddrinfo)


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
