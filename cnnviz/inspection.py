"""One image through one model: preparation, every layer's record and the prediction, in a single call.

This is what the Explore page, the Learn pages and ``cnnviz inspect`` share, so all three see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from cnnviz import devices, images, probe
from cnnviz.data import DatasetInfo


@dataclass
class Inspection:
    """The prepared input ``(1, C, H, W)``, its preparation steps, records by layer and class probabilities ``(K,)``."""

    prepared: images.Prepared
    records: dict[str, probe.Record]
    probs: torch.Tensor

    @property
    def x(self) -> torch.Tensor:
        return self.prepared.tensor

    def top(self, info: DatasetInfo, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), most probable first."""
        p, i = self.probs.topk(min(k, len(self.probs)))
        return [(info.class_names[j], float(q)) for q, j in zip(p.tolist(), i.tolist())]

    def map_layers(self) -> list[str]:
        """Names of the recorded layers whose output is a stack of maps ``(N, C, h, w)``, in forward order."""
        return [n for n, r in self.records.items() if r.output.ndim == 4]


def inspect(model: nn.Module, info: DatasetInfo, image: Image.Image, resize: str = "squash",
            invert: bool | None = None, device: str | torch.device | None = None) -> Inspection:
    """Prepare ``image`` as ``info``'s training data was made, run ``model`` once with hooks, and keep everything.

    The pass runs where the model is, and the records and probabilities stay there (the prepared input stays on the
    CPU). ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``: :func:`cnnviz.devices.resolve`) moves the model
    there first, in place, as ``model.to`` does; Grad-CAM and activation maximisation then run there too.
    """
    if device is not None:
        model.to(devices.resolve(device))
    prepared = images.prepare(image, info, resize=resize, invert=invert)
    records = probe.run(model, prepared.tensor)
    logits = next(reversed(records.values())).output[0]
    return Inspection(prepared, records, logits.softmax(0))
