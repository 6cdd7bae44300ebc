"""Heavy work on a Ray cluster: a function that reports as it goes runs as a Ray task, heard through a mailbox.

The web app's jobs (:mod:`cnnviz.ui.jobs`) run their work in a local process or, when ``CNNVIZ_RAY_ADDRESS`` is set,
on a Ray cluster through :class:`RemoteRun`, with the same interface: the work is a function
``target(outbox, stop, *args)`` that reads its input with ``outbox.recv_bytes()``, reports with
``outbox.send_bytes(...)`` and checks ``stop.is_set()`` (:func:`cnnviz.ui.worker.run` is one).

On the cluster that function runs in a Ray task, which reuses warm worker processes (torch already imported), where
an actor per job would start a fresh interpreter for every Train click. What it reports goes to one small actor per
server, the mailbox; the job's supervising thread in the server takes it from there four times a second. Each report
is delivered before the next is sent, and the reply says whether the job was asked to stop, so the work sees a stop
at its next report (five a second). A stop it does not answer, and a job whose session ended, cancel the task, which
ends its worker process. A task whose worker or machine is lost ends the run with :class:`RunLost` and a reason in
plain words; what it reported before stays with the job. Ray starts its workers at a lower CPU priority (nice 15,
``RAY_worker_niceness``), so a task that lands on the machine serving the pages yields to them, as the server's own
training processes (nice 10) do.

Ray is optional (``pip install 'cnnviz[ray]'``): this module imports it only when a run starts or :func:`connect`
is called, so nothing changes without it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

ADDRESS_ENV = "CNNVIZ_RAY_ADDRESS"  # the cluster the web app's jobs run on (unset: local processes)
NAMESPACE = "cnnviz"
CONNECT_S = 10.0  # seconds the cluster's address may take to accept a connection
ANSWER_S = 30.0  # seconds the mailbox may take to answer before the job counts the cluster as lost
CLOSE_S = 5.0  # seconds a task whose job has ended gets to return on its own before it is cancelled
# What one CPU core trains, in multiply-adds a second (a step costs ~3× the forward pass): docs/benchmarks.md's
# app-train section, 1,719 img/s on 2 cores with the gap preset (6.6 M multiply-adds per 32×32 image).
CPU_MACS_PER_S = 17e9
# A job asks for a GPU when the cluster has one and its run would train this long on the CPUs it would get; shorter
# runs (every preset on the built-in datasets at the app's defaults) start as fast on a CPU and leave GPUs free.
GPU_WORTH_S = 60.0

_lock = threading.Lock()
_mailbox = None  # this process's mailbox actor, made by connect()
_task = None  # the Ray remote function wrapping _run_task, made by connect()


class ClusterError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


class RunLost(RuntimeError):
    """The work ended without its last report: its process, worker or machine is gone. The message says why."""


def installed() -> bool:
    """Whether the ``ray`` package can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` (``ray://HOST:10001``, ``HOST:6379`` or ``auto``) once,
    and start this server's mailbox; a no-op when already connected. A process that already called ``ray.init``
    (a test, a notebook) keeps its connection. Raises :class:`ClusterError` in plain words when it cannot."""
    global _mailbox, _task
    if not installed():
        raise ClusterError(f"{ADDRESS_ENV} is set to {address!r}, but Ray is not installed here: "
                           f"pip install 'cnnviz[ray]'")
    import ray

    with _lock:
        if _mailbox is not None and ray.is_initialized():
            return
        if not ray.is_initialized():
            if not _answers(address, CONNECT_S):  # ray.init would wait minutes for a head that is not there
                raise ClusterError(f"nothing answers at {address!r} within {CONNECT_S:.0f} s: is the Ray cluster's "
                                   f"head started, and its port open to this machine?")
            try:
                ray.init(address=address, namespace=NAMESPACE)
            except Exception as e:  # noqa: BLE001  (Ray raises ConnectionError, ValueError, RuntimeError…)
                raise ClusterError(f"could not connect to the Ray cluster at {address!r}: {_first_line(e)}") from e
        here = ray.get_runtime_context().get_node_id()
        # On this machine when it is a node of the cluster (soft: elsewhere when it is not), so that the mailbox is
        # lost only with the server it serves.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        mailbox = ray.remote(_mailbox_class()).options(
            num_cpus=0, max_restarts=-1, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        try:
            ray.get(mailbox.take.remote(""), timeout=ANSWER_S)
        except Exception as e:  # noqa: BLE001
            raise ClusterError(f"the Ray cluster at {address!r} did not start this server's mailbox: {_why(e)}") from e
        _mailbox, _task = mailbox, ray.remote(max_retries=0)(_run_task)


def _answers(address: str, timeout: float) -> bool:
    """Whether something accepts connections at ``address``'s host and port (``HOST:PORT``, ``ray://HOST:PORT``);
    True for addresses without one (``auto``), which Ray resolves itself."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def disconnect() -> None:
    """Forget this process's mailbox (call before ``ray.shutdown``; the next :func:`connect` makes a new one)."""
    global _mailbox, _task
    with _lock:
        _mailbox = _task = None


def capacity(cpus_per_job: float) -> int:
    """How many jobs of ``cpus_per_job`` CPUs the cluster's nodes can run at once (at least 1)."""
    import ray

    return max(1, sum(int(cpus // cpus_per_job) for cpus in _node_cpus(ray)))


def cpus_for(wanted: float) -> float:
    """``wanted`` CPUs, or the most one node has when no node has that many (a request no node can meet would wait
    forever)."""
    import ray

    return min(wanted, max(_node_cpus(ray), default=wanted)) or wanted


def has_gpu() -> bool:
    """Whether the cluster has a GPU (free or not)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def worth_a_gpu(macs: int, images: int, cpus: float) -> bool:
    """Whether training ``images`` images (steps × batch) through a model of ``macs`` multiply-adds per forward pass
    would take :data:`GPU_WORTH_S` seconds or more on ``cpus`` CPU cores."""
    return 3 * macs * images / (CPU_MACS_PER_S * max(cpus, 1)) >= GPU_WORTH_S


def _node_cpus(ray) -> list[float]:
    return [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]


class RemoteRun:
    """``target(outbox, stop, *args)`` running as a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs.

    Nothing starts before :meth:`start`. :attr:`started` is when the first report came (None before: the cluster
    has not started it yet) and :attr:`pid` the process running it on its node (for tests)."""

    def __init__(self, target: Callable, *args, cpus: float, gpus: float = 0):
        self.target, self.args, self.cpus, self.gpus = target, args, cpus, gpus
        self.job = uuid.uuid4().hex
        self.started: float | None = None
        self.pid: int | None = None
        self._ref = None  # the task's result
        self._mailbox = _mailbox

    def start(self, payload: bytes) -> None:
        """Submit the task; ``payload`` is what the target's ``outbox.recv_bytes()`` returns."""
        if self._mailbox is None or _task is None:
            raise ClusterError("not connected to a Ray cluster: call cluster.connect(address) first")
        self._ref = _task.options(num_cpus=self.cpus, num_gpus=self.gpus).remote(
            self._mailbox, self.job, self.target, payload, self.args)

    def receive(self, timeout: float) -> list[bytes]:
        """What the work reported since the last call, waiting up to ``timeout`` s for the task to end when nothing
        came; :class:`RunLost` once the task has ended with nothing more to say."""
        import ray

        messages = self._take()
        if messages:
            return messages
        done, _ = ray.wait([self._ref], timeout=timeout)
        if not done:
            return []
        messages = self._take()  # each report was delivered before the task went on, so this is its last
        if messages:
            return messages
        try:
            ray.get(self._ref)
        except Exception as e:  # noqa: BLE001  (every way a task can end badly is a reason for the page)
            raise RunLost(f"The training task on the cluster ended unexpectedly: {_why(e)}.") from e
        raise RunLost("The training task on the cluster ended unexpectedly, without its results.")

    def ask_to_stop(self) -> None:
        """Ask the work to end (it sees it at its next report)."""
        self._mailbox.stop.remote(self.job)

    def kill(self) -> None:
        """End the task now, and its worker process with it; what it has not reported is lost."""
        import ray

        if self._ref is not None:
            ray.cancel(self._ref, force=True)

    end = kill  # nobody is left to see what it learned

    def close(self) -> None:
        """Let the task return (it does right after its last report, and its worker, torch loaded, serves the next
        task), cancel it if it has not after :data:`CLOSE_S` seconds, and drop its mail."""
        import ray

        if self._ref is not None and not ray.wait([self._ref], timeout=CLOSE_S)[0]:
            ray.cancel(self._ref, force=True)
        if self._mailbox is not None:
            self._mailbox.forget.remote(self.job)

    def _take(self) -> list[bytes]:
        import ray

        try:
            messages, pid = ray.get(self._mailbox.take.remote(self.job), timeout=ANSWER_S)
        except Exception as e:  # noqa: BLE001  (the mailbox or the connection to the cluster is gone)
            raise RunLost(f"The connection to the cluster was lost: {_why(e)}.") from e
        if messages and self.started is None:
            self.started = time.monotonic()
        self.pid = pid or self.pid
        return messages


def _mailbox_class() -> type:
    """The mailbox's class: reports waiting for their job's supervising thread, and the jobs asked to stop. One per
    server; a Ray actor whose methods run one at a time, in the order each caller sent them.

    Made in a function so that Ray ships the class itself rather than a reference to this module: its worker then
    imports neither cnnviz nor torch (measured: the actor answers 0.4 s after it is created)."""

    class Mailbox:
        def __init__(self):
            self._boxes: dict[str, list[bytes]] = {}
            self._pids: dict[str, int] = {}
            self._stops: set[str] = set()
            self._closed: set[str] = set()  # jobs that ended: a late report of theirs (a task being cancelled)
            # is dropped, not kept forever (under 100 bytes a job)

        def put(self, job: str, data: bytes, pid: int) -> bool:
            """File ``data`` for ``job``; True when the job was asked to stop."""
            if job in self._closed:
                return True
            self._boxes.setdefault(job, []).append(data)
            self._pids[job] = pid
            return job in self._stops

        def take(self, job: str) -> tuple[list[bytes], int | None]:
            return self._boxes.pop(job, []), self._pids.get(job)

        def stop(self, job: str) -> None:
            self._stops.add(job)

        def forget(self, job: str) -> None:
            self._boxes.pop(job, None)
            self._pids.pop(job, None)
            self._stops.discard(job)
            self._closed.add(job)

    return Mailbox


class _Outbox:
    """The pipe end a target expects (``recv_bytes``, ``send_bytes``, ``close``), on a Ray worker: each report goes
    to the mailbox, and its reply sets :attr:`stop` when the job was asked to end."""

    def __init__(self, mailbox, job: str, payload: bytes):
        self.stop = threading.Event()
        self._mailbox, self._job, self._payload = mailbox, job, payload

    def recv_bytes(self) -> bytes:
        payload, self._payload = self._payload, b""
        return payload

    def send_bytes(self, data: bytes) -> None:
        import ray

        if ray.get(self._mailbox.put.remote(self._job, data, os.getpid())):
            self.stop.set()

    def close(self) -> None:
        pass


def _run_task(mailbox, job: str, target: Callable, payload: bytes, args: tuple) -> None:
    """The Ray task: run ``target`` with an outbox to ``mailbox``."""
    outbox = _Outbox(mailbox, job, payload)
    del payload
    target(outbox, outbox.stop, *args)


def _why(e: BaseException) -> str:
    """How a task or actor ended badly, in words for the page (Ray's own message is long and technical)."""
    import ray.exceptions as rex

    if isinstance(e, rex.OutOfMemoryError):
        return "its machine ran out of memory"
    if isinstance(e, rex.NodeDiedError):
        return "the machine it ran on left the cluster"
    if isinstance(e, rex.WorkerCrashedError):
        return "the worker process running it died (out of memory, or killed)"
    if isinstance(e, rex.RayActorError):
        return "the server's mailbox on the cluster is gone"
    if isinstance(e, rex.GetTimeoutError):
        return f"the cluster did not answer for {ANSWER_S:.0f} s"
    if isinstance(e, rex.RayTaskError):
        return _first_line(e.cause if e.cause is not None else e)
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]
