"""Where shards run: in this process ("local") or on Ray ("ray").

Both run `run_shard_from_bytes` on the same `.uqm` bytes, so they execute the very same models and
their reports are equal to the last digit (`figures.merge` orders results by shard).

Why Ray tasks rather than Ray Data: a shard's work is "load four models once per worker, then run
them on a batch of images", which needs a per-process model cache and returns a few kilobytes of
figures. Tasks give exactly that with Ray's own retry of work lost to a dead worker
(`max_retries`), keep results keyed by shard index for a deterministic merge, and need no Arrow
conversion of image batches. The models go through Ray's object store once (`ray.put`) and every
task reads the same object.

Ray is optional (`pip install "unified[ray]"`) and imported only here, only when asked for.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from unified.core.errors import BackendError, UnifiedError
from unified.evaluation.shards import ModelCache, Shard, ShardResult, run_shard_from_bytes

EXECUTORS = ("local", "ray")
TASK_RETRIES = 3


def run_local(shards: Sequence[Shard], blobs: dict[str, bytes], preprocess_json: dict[str, Any]) -> Iterator[ShardResult]:
    cache = ModelCache()  # this call's models only: released when the evaluation ends
    for shard in shards:
        yield run_shard_from_bytes(shard, blobs, preprocess_json, cache)


def _ray_shard(shard: Shard, blobs: dict[str, bytes], preprocess_json: dict[str, Any], threads: int) -> ShardResult:
    """The task body on a Ray worker: ONNX Runtime limited to the CPUs Ray granted the task
    (otherwise two workers on two cores each spawn two threads and fight)."""
    os.environ["UNIFIED_ORT_THREADS"] = str(threads)
    return run_shard_from_bytes(shard, blobs, preprocess_json)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendError('executor="ray" needs Ray: pip install "unified[ray]"') from exc
    return ray


def run_ray(shards: Sequence[Shard], blobs: dict[str, bytes], preprocess_json: dict[str, Any],
            address: str | None = None, workers: int | None = None, cpus_per_task: int = 1) -> Iterator[ShardResult]:
    """Shards as Ray tasks, yielded as they finish.

    address=None starts an embedded Ray on this machine with `workers` CPUs (default: all) and
    stops it afterwards; "auto" or "ray://host:10001" joins a running cluster (left running). An
    already initialized Ray (the caller's own `ray.init`) is used as it is.
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            if address is None:
                ray.init(address="local", num_cpus=workers or os.cpu_count(), **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:  # no cluster there, Ray Client missing, version mismatch...
            where = address or "a local Ray"
            raise BackendError(f"cannot start or join Ray at {where}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        started = True
    try:
        task = ray.remote(num_cpus=cpus_per_task, max_retries=TASK_RETRIES)(_ray_shard)
        blobs_ref = ray.put(blobs)
        pending = {task.remote(shard, blobs_ref, preprocess_json, cpus_per_task): shard.index for shard in shards}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    if isinstance(cause, UnifiedError):
                        raise cause from None
                    raise BackendError(f"shard {index} failed on a Ray worker: {type(cause).__name__}: "
                                       f"{str(cause)[:300]}") from exc
                except ray.exceptions.RayError as exc:
                    raise BackendError(f"shard {index} was lost on Ray after {TASK_RETRIES} retries: "
                                       f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        if started:
            ray.shutdown()
