"""One set of weights, many sessions: a per-session copy of a module that costs no second copy of its weights.

Streamlit serves every session from threads of one process. A model loaded once for all of them (a zoo model, the
shipped model) cannot be probed directly: forward hooks are registered on module objects, so one session's hooks
would fire during another's forward pass and mix their records, and ``.grad`` lives on the Parameter objects, so
Grad-CAM in one session would accumulate into another's. A plain ``copy.deepcopy`` per session would fix that and
cost the weights again each time: thirty students on one VGG-16 would hold thirty copies of 528 MB.

:func:`session_copy` gives each session its own module objects and Parameter objects over the same storage.
"""

from __future__ import annotations

import copy

from torch import nn


def session_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters and buffers share the original's storage.

    The copy has its own modules (its hooks, ``training`` flags and attributes are its own) and its own Parameter
    objects (its own ``.grad`` and ``requires_grad``, same values as the original's). Tied parameters stay tied.
    Buffers are the original's tensors themselves. Values are not copied, so anything that writes them (an optimiser
    step, a forward pass in training mode, which updates batch-norm statistics) changes them for every copy: use the
    copy for forward and backward passes in eval mode, as ``probe``, ``gradcam`` and ``maximize`` do. Hooks already
    registered on the original are copied with it, so a shared original must never be hooked itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got a {type(model).__name__}")
    # deepcopy looks each object up in the memo before copying it, so every parameter and buffer met in the tree is
    # replaced by the object given here; a tied parameter is one object met twice, and stays one.
    memo: dict[int, object] = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                               for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)
