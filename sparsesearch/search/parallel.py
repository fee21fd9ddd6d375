"""Parallel accuracy evaluation on Ray: each worker builds its evaluator (e.g. loads the supernet) once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..config import SparsityConfig
from ..errors import SparseSearchError

__all__ = ["RayEvaluator", "start_ray"]

EvaluatorFactory = Callable[[], Callable[[SparsityConfig], float]]

#: workers given no GPU keep the visible-device variables they inherit (Ray's behaviour from 2.48 on; older
#: versions blanked them and warned): passed to Ray's workers, the process environment is left alone
_WORKER_ENV = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def start_ray(address: str | None, num_cpus: int, what: str) -> bool:
    """Start a local Ray instance with `num_cpus` CPUs, or connect to the cluster at `address`, unless Ray is
    already initialised; True if this call did (the caller then calls `ray.shutdown()` when done).

    `what` names the option that needs Ray, for the install hint. Raises SparseSearchError when Ray is missing
    or cannot be started or reached.
    """
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise SparseSearchError(f"{what}: Ray is not installed (pip install 'sparsesearch[ray]')") from None
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": dict(_WORKER_ENV)}
    try:
        if address:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SparseSearchError(f"cannot start or reach Ray at {address or 'a local instance'}: {e}") from None
    return True


class _Worker:
    def __init__(self, factory: EvaluatorFactory, threads: int) -> None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(max(1, threads))
        self.fn = factory()

    def evaluate(self, config: dict[str, Any]) -> float:
        return float(self.fn(SparsityConfig.from_dict(config)))


class RayEvaluator:
    """A batch evaluator whose configs are spread over `workers` Ray actors.

    Args:
        factory: picklable zero-argument callable returning `fn(config) -> accuracy`; runs once per worker.
        workers: number of actors.
        address: an existing Ray cluster ("auto" or "ray://host:port"); None starts a local instance.
        cpus_per_worker / gpus_per_worker: resources each actor reserves (and its torch thread count).
    """

    def __init__(
        self,
        factory: EvaluatorFactory,
        workers: int = 2,
        address: str | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
    ) -> None:
        if workers < 1:
            raise SparseSearchError("--workers must be at least 1")
        self._started = start_ray(address, workers * cpus_per_worker, "--workers/--ray")
        import ray  # noqa: PLC0415
        from ray.util import ActorPool  # noqa: PLC0415

        self._ray = ray
        actor: Any = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self.actors: list[Any] = [actor.remote(factory, cpus_per_worker) for _ in range(workers)]
        self.pool = ActorPool(self.actors)

    def __call__(self, configs: Sequence[SparsityConfig]) -> list[float]:
        return list(self.pool.map(lambda a, c: a.evaluate.remote(c.to_dict()), list(configs)))

    def close(self) -> None:
        """Release the actors (and the local Ray instance if this evaluator started it)."""
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
