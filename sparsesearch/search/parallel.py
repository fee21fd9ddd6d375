"""Parallel accuracy evaluation on Ray: each worker builds its evaluator (e.g. loads the supernet) once."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..config import SparsityConfig
from ..errors import SparseSearchError

__all__ = ["RayEvaluator"]

EvaluatorFactory = Callable[[], Callable[[SparsityConfig], float]]


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
        try:
            import ray  # noqa: PLC0415
            from ray.util import ActorPool  # noqa: PLC0415
        except ImportError:
            raise SparseSearchError("--workers/--ray need Ray: pip install 'sparsesearch[ray]'") from None
        if workers < 1:
            raise SparseSearchError("--workers must be at least 1")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers * cpus_per_worker, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise SparseSearchError(f"cannot start or reach Ray at {address or 'a local instance'}: {e}") from None
            self._started = True
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self.actors = [actor.remote(factory, cpus_per_worker) for _ in range(workers)]
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
