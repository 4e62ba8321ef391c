"""`unified.evaluate`: a model on a whole dataset, every backend against fp32 and against labels.

The driver builds (or takes from the cache) every backend's model once, ships them as `.uqm`
bytes, cuts the dataset into shards of item paths and lets an executor run them: here, or on Ray
workers that read and preprocess their own images. The merged per-image figures become one
`EvaluationReport`; the per-layer analysis runs on the driver on a small sample.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from unified.core import plugins
from unified.core.api import quantize
from unified.core.errors import InputError, public_api
from unified.evaluation import executors
from unified.evaluation.datasets import Dataset, load_dataset
from unified.evaluation.figures import accuracy, class_output, merge, output_figures
from unified.evaluation.layers import layer_analysis
from unified.evaluation.report import BackendFigures, EvaluationReport
from unified.evaluation.shards import REFERENCE, make_shards, read_items
from unified.inputs.model_source import resolve_model
from unified.inputs.preprocess import Preprocess
from unified.inputs.zoo import DEFAULT_MODEL
from unified.terminal.progress import progress

DEFAULT_SHARD_SIZE = 25


def backend_entries(backends: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, backend name, options) per entry: a name, or (name, options[, label])."""
    entries = []
    for item in backends:
        label = None
        if isinstance(item, str):
            name, options = item, {}
        else:
            name, options = item[0], dict(item[1])
            label = item[2] if len(item) > 2 else None
        plugins.get_backend(name)
        label = label or (name if not options else name + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]")
        entries.append((label, name, options))
    labels = [e[0] for e in entries]
    if len(set(labels)) != len(labels) or REFERENCE in labels:
        raise InputError(f"backend labels must be distinct and not {REFERENCE!r}: {labels}")
    return entries


def class_count(proto: Any) -> int | None:
    """Classes of the model's first [N, classes] output (None for detectors, segmenters...)."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value >= 2:
            return int(dims[1].dim_value)
    return None


def default_images() -> list[Any]:
    from unified.inputs.sample_images import random_crops

    return random_crops(50, seed=0)


@public_api
def evaluate(model: Any = None, dataset: Any = None, backends: Sequence[Any] = ("ort", "rknn", "tengine"),
             executor: str = "local", address: str | None = None, calibration: Any = None,
             preprocess: Preprocess | None = None, layer_images: int = 8, shard_size: int = DEFAULT_SHARD_SIZE,
             workers: int | None = None) -> EvaluationReport:
    """Every backend over `dataset`, against fp32 and (where there are labels) against the labels.

    dataset: a folder of images, a class-per-folder tree, a dataset.txt, a labels file
    ("path class_index" per line), or a list of images / (image, label) pairs (None: 50 crops of
    the offline photos). executor: "local" (this process) or "ray" (`address` None starts Ray on
    this machine with `workers` CPUs; "auto" or "ray://host:port" joins a cluster whose workers
    can read the dataset's paths). Unreadable images are skipped and listed in `report.skipped`.
    """
    if executor not in executors.EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(executors.EXECUTORS)}; got {executor!r}")
    if shard_size < 1:
        raise InputError(f"shard_size must be at least 1; got {shard_size}")
    started = time.perf_counter()
    source = resolve_model(model, preprocess)
    entries = backend_entries(backends)
    data = load_dataset(default_images() if dataset is None else dataset, class_count(source.proto))
    # the model as the user named it (so cached builds are reused), its preprocessing resolved once
    model_arg = model if model is not None else DEFAULT_MODEL
    preprocess = preprocess or source.preprocess
    fp32 = quantize(model_arg, backend="ort", mode="fp32", preprocess=preprocess)
    built = {label: quantize(model_arg, backend=name, calibration=calibration, preprocess=preprocess, **options)
             for label, name, options in entries}
    blobs = {REFERENCE: fp32.to_bytes(), **{label: qm.to_bytes() for label, qm in built.items()}}
    shards = make_shards(data.items, shard_size)
    if executor == "ray":
        results = executors.run_ray(shards, blobs, preprocess.to_json(), address=address, workers=workers)
    else:
        results = executors.run_local(shards, blobs, preprocess.to_json())
    running = time.perf_counter()
    merged = merge(progress(results, len(shards), "evaluating", f"{len(data)} images in {len(shards)} shards"))
    run_wall = time.perf_counter() - running
    if not len(merged.kept):
        raise InputError(f"no image of the dataset could be read ({data.description}); first problem: "
                         f"{merged.skipped[0].path}: {merged.skipped[0].reason}" if merged.skipped else "empty dataset")

    sample, k = _layer_sample(data, preprocess, fp32.input_names, layer_images)
    layers = layer_analysis(built, source.proto, sample) if k else {}
    scores = class_output(merged)
    ref_figures = merged.outputs[REFERENCE]
    n = len(merged.kept)
    report = EvaluationReport(source.name, n, k, [], dataset=data.description,
                              labelled_images=int((merged.labels >= 0).sum()), skipped=merged.skipped,
                              executor=executor, shards=len(shards), run_wall_seconds=run_wall,
                              images_per_second=n / max(run_wall, 1e-9), shard_workers=merged.workers,
                              reference_images_per_second=n / max(merged.seconds[REFERENCE], 1e-9))
    if scores is not None:
        report.reference_top1_accuracy, report.reference_top5_accuracy = accuracy(ref_figures[scores].top5, merged.labels)
    for label, name, options in entries:
        per_output = [output_figures(o, s, ref_figures[o]) for o, s in merged.outputs[label].items()]
        summary = next((o for o in per_output if o.top1_agreement is not None), None)
        figures = BackendFigures(label, name, built[label].mode, options,
                                 summary.top1_agreement if summary else None, summary.top5_overlap if summary else None,
                                 min(o.mean_cosine for o in per_output), min(o.min_cosine for o in per_output),
                                 max(o.max_abs_error for o in per_output), merged.seconds[label], outputs=per_output,
                                 images_per_second=n / max(merged.seconds[label], 1e-9))
        if scores is not None:
            figures.top1_accuracy, figures.top5_accuracy = accuracy(merged.outputs[label][scores].top5, merged.labels)
        figures.layers = layers.get(label, [])
        report.backends.append(figures)
    report.wall_seconds = time.perf_counter() - started
    return report


def _layer_sample(data: Dataset, preprocess: Preprocess, input_names: Sequence[str] | None,
                  count: int) -> tuple[np.ndarray | None, int]:
    """The first `count` readable images, preprocessed here on the driver (single-input models)."""
    if count <= 0 or (input_names and len(input_names) > 1):
        return None, 0
    kept, samples, _ = read_items(data.items[:count * 2], preprocess, input_names)
    samples = samples[:count]
    if not samples:
        return None, 0
    return np.concatenate(samples), len(samples)
