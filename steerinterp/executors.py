"""Where independent evaluations run: one after another in this process (``local``), or on Ray
actors that each load the model once and take conditions as they free up (``ray``).

Both run the same module-level function ``fn(model, shared, *call)`` on every call and return
its results in call order, so a sweep, a calibration or the main job gives the same frame on
either (tested). Ray is an optional extra (``pip install 'steerinterp[distributed]'``),
imported only when asked for. A worker that dies mid-call has written nothing final (results
land in their folder last and atomically, see ``evaluate``); its call is re-run on a fresh
worker ``retries`` times, then reported.
"""

from __future__ import annotations

import socket
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformer_lens import HookedTransformer

from .errors import ExecutorError
from .provenance import model_info, same_weights, weight_signature

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ModelRecipe:
    """How a worker re-creates the driver's model: its steerinterp name and dtype; the weight
    signature is checked on arrival, so a worker never evaluates other weights by that name."""

    name: str
    dtype: str
    weights: tuple[float, ...]

    @classmethod
    def of(cls, model: HookedTransformer) -> ModelRecipe:
        return cls(model_info(model).name, str(model.cfg.dtype).removeprefix("torch."),
                   weight_signature(model))

    def load(self) -> HookedTransformer:
        from .models import load_model  # the loaders pull in the asset code; only workers need it

        model = load_model(self.name, dtype=self.dtype)
        if not same_weights(weight_signature(model), self.weights):
            raise ExecutorError(f"a worker loaded {self.name!r} with other weights than the "
                                "driver's model; workers can only re-create models that "
                                "load_model() loads by name")
        return model


class LocalExecutor:
    """Every call in this process, in order, on the caller's model."""

    name = "local"
    workers = 1

    def map(self, model: HookedTransformer, fn: Callable, calls: Sequence[tuple],
            shared: Any = None, labels: Sequence[str] | None = None,
            on_result: Callable[[int, Any], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> list:
        """``[fn(model, shared, *call) for call in calls]``; ``on_start(i)`` before and
        ``on_result(i, result)`` after each."""
        out = []
        for i, call in enumerate(calls):
            if on_start is not None:
                on_start(i)
            out.append(fn(model, shared, *call))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Worker:
    """A Ray actor's state: the model, loaded once, and the calls it is handed."""

    def __init__(self, recipe: ModelRecipe, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.model = recipe.load()

    def ready(self) -> bool:
        return True

    def run(self, fn: Callable, shared: Any, call: tuple) -> Any:
        return fn(self.model, shared, *call)


class RayExecutor:
    """Calls spread over ``workers`` Ray actors (each ``cpus_per_worker`` CPUs, one model).

    ``address``: an existing cluster ("host:port", "ray://host:port" or "auto"); without it a
    local Ray runtime with ``workers × cpus_per_worker`` CPUs is started (and shut down by
    :meth:`close`). Workers that cannot start within ``start_timeout`` seconds (no free CPUs)
    are an error, not a wait without end. Results come back in call order; an exception raised by ``fn`` is re-raised
    here as itself.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, retries: int = 1,
                 cpus_per_worker: int = 1, start_timeout: float = 600.0):
        if workers < 1 or cpus_per_worker < 1 or retries < 0:
            raise ValueError(f"ray executor: workers ({workers}) and cpus_per_worker "
                             f"({cpus_per_worker}) must be ≥ 1, retries ({retries}) ≥ 0")
        self.workers, self.address, self.retries = workers, address, retries
        self.cpus_per_worker, self.start_timeout = cpus_per_worker, start_timeout
        self._ray = _import_ray()
        self._owns_runtime = self._connect()
        self._actors: list = []
        self._recipe: ModelRecipe | None = None

    def _connect(self) -> bool:
        ray = self._ray
        if self.address is not None:
            _check_reachable(self.address)
        if ray.is_initialized():
            return False
        try:
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers * self.cpus_per_worker, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        except Exception as err:  # noqa: BLE001  (Ray raises several types; one line for all)
            where = f"the Ray cluster at {self.address!r}" if self.address else "local Ray"
            raise ExecutorError(f"cannot start {where}: {str(err).splitlines()[0]}") from None
        return True

    def _new_actor(self, recipe: ModelRecipe):
        remote = self._ray.remote(num_cpus=self.cpus_per_worker)(_Worker)
        return remote.remote(recipe, self.cpus_per_worker)

    def _ensure_actors(self, recipe: ModelRecipe) -> None:
        """Start the workers (once per model) and wait until each has loaded it."""
        if self._recipe == recipe and self._actors:
            return
        self._kill_actors()
        self._actors = [self._new_actor(recipe) for _ in range(self.workers)]
        self._recipe = recipe
        try:
            self._ray.get([a.ready.remote() for a in self._actors], timeout=self.start_timeout)
        except self._ray.exceptions.GetTimeoutError:
            self._kill_actors()
            raise ExecutorError(f"{self.workers} Ray workers × {self.cpus_per_worker} CPU did not "
                                f"start within {self.start_timeout:g} s: the cluster has no free "
                                "CPUs for them (another executor's workers?)") from None
        except self._ray.exceptions.RayError as err:
            self._kill_actors()
            raise ExecutorError(f"a Ray worker could not load {recipe.name!r}: "
                                f"{_cause(err)}") from None

    def map(self, model: HookedTransformer, fn: Callable, calls: Sequence[tuple],
            shared: Any = None, labels: Sequence[str] | None = None,
            on_result: Callable[[int, Any], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> list:
        """``fn(worker_model, shared, *call)`` for every call, on whichever worker is free;
        ``shared`` is shipped once. Results in call order; ``on_start(i)`` when a worker takes
        call i (again on a retry), ``on_result(i, result)`` as each arrives."""
        if not calls:
            return []
        ray = self._ray
        recipe = ModelRecipe.of(model)
        self._ensure_actors(recipe)
        labels = list(labels) if labels is not None else [f"call {i}" for i in range(len(calls))]
        shared_ref = ray.put(shared)
        todo, idle = deque(range(len(calls))), list(range(len(self._actors)))
        attempts: Counter[int] = Counter()
        results: list = [None] * len(calls)
        pending: dict = {}
        while todo or pending:
            while todo and idle:
                i, a = todo.popleft(), idle.pop()
                attempts[i] += 1
                if on_start is not None:
                    on_start(i)
                pending[self._actors[a].run.remote(fn, shared_ref, calls[i])] = (i, a)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, a = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the worker process died
                self._actors[a] = self._new_actor(recipe)
                if attempts[i] > self.retries:
                    raise ExecutorError(f"{labels[i]}: its Ray worker died {attempts[i]} times "
                                        f"({_cause(err)}); nothing of it was saved") from None
                todo.appendleft(i)
            except ray.exceptions.RayTaskError as err:  # fn raised: re-raise it as itself
                raise err.as_instanceof_cause() from None
            else:
                if on_result is not None:
                    on_result(i, results[i])
            idle.append(a)
        return results

    def _kill_actors(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors, self._recipe = [], None

    def close(self) -> None:
        """Stop the workers, and the Ray runtime if this executor started it."""
        self._kill_actors()
        if self._owns_runtime and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_runtime = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


Executor = LocalExecutor | RayExecutor


def get_executor(name: str | Executor | None = "local", *, workers: int = 2,
                 address: str | None = None, retries: int = 1) -> Executor:
    """An executor by name ("local" or "ray"); an executor instance is returned as it is."""
    if isinstance(name, (LocalExecutor, RayExecutor)):
        return name
    if name is None or name == "local":
        if address is not None:
            raise ValueError("--address names a Ray cluster; use it with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(workers=workers, address=address, retries=retries)
    raise ValueError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("the ray executor needs Ray: pip install 'steerinterp[distributed]'"
                            ) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a host:port nobody listens on (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: "
                            f"{err.strerror or err}") from None


def _cause(err: Exception) -> str:
    """The first sentence of Ray's (long) account of what went wrong."""
    text = str(getattr(err, "cause", None) or err).strip().splitlines()
    return text[-1].split(". ")[0].rstrip(".") if text else type(err).__name__


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ModelRecipe", "RayExecutor",
           "get_executor"]
