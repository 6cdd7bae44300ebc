"""Start the web app (`cnnviz app`, `make run`) in a process whose OpenMP threads wait passively.

``OMP_WAIT_POLICY`` is read once, when torch's OpenMP runtime loads, and importing ``cnnviz`` loads torch. So
:func:`serve` replaces the current process with a fresh one that has the variable set from the start; that process
imports the pages' heavy modules before the server listens, so the first visitor does not wait for them, and starts
the fork server that training jobs' processes come from (they wait actively: see
:func:`cnnviz.ui.jobs.start_worker_server`).

Your own model reaches the app through :mod:`cnnviz.usercode`'s registry, which the pages read in this same process:
``cnnviz app --model`` passes its options to the new process in ``CNNVIZ_*`` variables, and that process loads the
model before the server starts (and exits with the reason if it cannot); :func:`show` registers a model object and
serves in the calling process, since an object defined in a notebook cannot be handed to another one.

The server settings are the project's ``.streamlit/config.toml``, beside ``app.py``: Streamlit reads the config file
next to the main script whatever the current directory (``tests/test_train_page.py`` starts the app from elsewhere
and checks it). ``STREAMLIT_*`` variables override it, which is how ``make dev`` turns on reloading and details.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

APP = Path(__file__).resolve().parents[2] / "app.py"
_CHILD = "import sys; from cnnviz.ui.launch import _main; sys.exit(_main(int(sys.argv[1])))"


def serve(port: int, env: dict[str, str] | None = None) -> None:
    """Replace this process with the app server on ``port``, with ``env`` added to its environment (never returns)."""
    env = {**os.environ, **(env or {}), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           # A 12-megapixel upload decodes into ~48 MB blocks that glibc would keep after they are freed (~250 MB
           # held for good, measured); above 4 MB an allocation gets its own mapping and goes back when freed.
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(4 * 2**20))}
    # Not `-m cnnviz.ui.launch`: `import cnnviz` imports this module (for cnnviz.show), and runpy would then run a
    # second copy of it as __main__. `-c`, like `-m`, puts the current folder on sys.path, for `--model`'s import.
    os.execve(sys.executable, [sys.executable, "-c", _CHILD, str(port)], env)


def show(model: nn.Module, *, classes: Sequence[str] | None = None, input_size: int = 224,
         mean: Sequence[float] | None = None, std: Sequence[float] | None = None, channels: int | None = None,
         title: str | None = None, port: int = 8501, device: str = "auto") -> str:
    """Open the app on ``model``, an image classifier ``(1, C, S, S)`` → ``(1, K)``; returns the app's address.

    The arguments are :func:`cnnviz.usercode.from_module`'s (a copy of the model is shown, checked first: a model the
    app cannot show raises :class:`~cnnviz.usercode.UserModelError` before anything starts). The server runs in this
    process: from a script, until Ctrl+C; in a notebook, on the notebook's event loop, so the call returns at once
    and the server lives as long as the kernel. Called again while it runs, it only swaps the model: sessions opened
    afterwards (reload the page) get the new one. ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``) is where
    the sessions' models run, as ``cnnviz app --device``; a device this machine lacks raises
    :class:`~cnnviz.devices.DeviceError`.

    A server started here keeps the process's settings: the OpenMP and allocator tuning of ``cnnviz app`` for many
    students at once cannot apply, since torch is already loaded.
    """
    from streamlit import runtime

    from cnnviz import devices, usercode

    where = str(devices.resolve(device))
    usercode.register(usercode.from_module(model, classes=classes, input_size=input_size, mean=mean, std=std,
                                           channels=channels, title=title))
    os.environ[devices.ENV] = where  # read by cnnviz.ui.state, in this process, for each new session
    if not runtime.exists():
        _streamlit(port)
    return f"http://localhost:{port}"


def _streamlit(port: int) -> None:
    """Serve the app from this process on ``port``: blocking, or on the event loop already running (a notebook's)."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as stcli

    # app.py lists the pages itself (st.navigation). Streamlit starts a server whose main script has a pages/ folder
    # beside it in its old multipage mode, and leaves it only once st.navigation has run: a link to a page as the
    # server's first visit would run that page alone (no sidebar, no model choice) for every visitor after it.
    PagesManager.uses_pages_directory = False
    stcli.main.main(args=["run", str(APP), "--server.port", str(port), "--server.headless", "true",
                          "--browser.gatherUsageStats", "false"], prog_name="streamlit", standalone_mode=False)


def _main(port: int) -> int:
    from cnnviz import usercode

    try:
        usercode.registered()  # `--model`: load it now, so a mistake ends here, before a server says it is ready
    except usercode.UserModelError as e:
        sys.exit(f"cnnviz: {e}")
    import cnnviz.ui.views  # noqa: F401  (torch, torchvision and the pages' modules, loaded before the first visit)
    import cnnviz.ui.widgets  # noqa: F401
    from cnnviz import cluster
    from cnnviz.ui import jobs, state

    # The shipped model's accuracy is measured on its test set once per server (st.cache_resource: one cache per
    # process, runtime or not): now, so that the first visitor's page does not wait for it (`first-paint` bench).
    state.shipped_metrics()

    try:  # local: training processes fork from a server loaded now; a Ray cluster: connect now, or say why not
        jobs.start_backend()
    except cluster.ClusterError as e:
        sys.exit(f"cnnviz: {e}")
    _streamlit(port)
    return 0
