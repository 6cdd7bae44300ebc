"""Start the web app (`cnnviz app`, `make run`) in a process whose OpenMP threads wait passively.

``OMP_WAIT_POLICY`` is read once, when torch's OpenMP runtime loads, and importing ``cnnviz`` loads torch. So
:func:`serve` replaces the current process with a fresh one that has the variable set from the start; that process
imports the pages' heavy modules before the server listens, so the first visitor does not wait for them, and starts
the fork server that training jobs' processes come from (they wait actively: see
:func:`cnnviz.ui.jobs.start_worker_server`).

The server settings are the project's ``.streamlit/config.toml``, beside ``app.py``: Streamlit reads the config file
next to the main script whatever the current directory (``tests/test_train_page.py`` starts the app from elsewhere
and checks it). ``STREAMLIT_*`` variables override it, which is how ``make dev`` turns on reloading and details.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app.py"


def serve(port: int) -> None:
    """Replace this process with the app server on ``port`` (never returns)."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           # A 12-megapixel upload decodes into ~48 MB blocks that glibc would keep after they are freed (~250 MB
           # held for good, measured); above 4 MB an allocation gets its own mapping and goes back when freed.
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(4 * 2**20))}
    os.execve(sys.executable, [sys.executable, "-m", "cnnviz.ui.launch", str(port)], env)


def _main(port: int) -> int:
    import cnnviz.ui.views  # noqa: F401  (torch, torchvision and the pages' modules, loaded before the first visit)
    import cnnviz.ui.widgets  # noqa: F401
    from cnnviz.ui import jobs

    jobs.start_worker_server()  # training processes fork from it; it loads torch while the server starts
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(APP), "--server.port", str(port), "--server.headless", "true",
                "--browser.gatherUsageStats", "false"]
    return stcli.main()


if __name__ == "__main__":
    sys.exit(_main(int(sys.argv[1])))
