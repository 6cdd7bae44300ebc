"""cnnviz: train a small CNN and see what it does, layer by layer.

The back end never imports Streamlit; the app (``app.py``, ``pages/``) and ``cnnviz.ui`` sit on top of it.
"""

from cnnviz.checkpoint import Checkpoint, CheckpointError
from cnnviz.checkpoint import load as load_checkpoint
from cnnviz.ui.launch import show

__version__ = "0.1.0"
__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "show", "__version__"]
