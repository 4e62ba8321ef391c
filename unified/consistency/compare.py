"""Cross-backend consistency: one model, one set of images, every backend against fp32.

Per backend: top-1 agreement with fp32, top-5 overlap, mean and min cosine and max abs error of
the logits; and, where the backend exposes internals (the optional `unified_layer_outputs` hook),
per-layer cosine and SQNR of every quantized tensor against fp32, "entire" (errors accumulated
along the quantized graph) and "single" (each layer fed fp32 inputs), as RKNN-Toolkit2's
accuracy_analysis reports them. A table for terminals, JSON for machines, a PNG for people.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from unified.core import plugins
from unified.core.api import quantize
from unified.core.errors import ImageError, UnifiedError, public_api
from unified.core.quantized_model import concatenate_outputs
from unified.inputs.model_source import resolve_model
from unified.inputs.zoo import DEFAULT_MODEL
from unified.inputs.preprocess import Preprocess
from unified.terminal.progress import progress
from unified.terminal.table import format_table


@dataclass
class LayerFigures:
    tensor: str
    entire_cosine: float
    entire_sqnr_db: float
    single_cosine: float | None
    single_sqnr_db: float | None


@dataclass
class OutputFigures:
    """One model output against fp32; top-1/top-5 only where the output holds class scores."""

    name: str
    mean_cosine: float
    min_cosine: float
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None = None
    top5_overlap: float | None = None


@dataclass
class BackendFigures:
    """A backend's figures: per output, and summarized (the class-score output's top-1/top-5,
    the worst output's cosine and error)."""

    label: str
    backend: str
    mode: str
    options: dict[str, Any]
    top1_agreement: float | None
    top5_overlap: float | None
    mean_cosine: float
    min_cosine: float
    max_abs_error: float
    run_seconds: float
    layers: list[LayerFigures] = field(default_factory=list)
    outputs: list[OutputFigures] = field(default_factory=list)

    def worst_layers(self, n: int = 5, by: str = "single") -> list[LayerFigures]:
        """The layers where most error enters: lowest "single" SQNR (or "entire")."""
        key = (lambda l: l.single_sqnr_db if l.single_sqnr_db is not None else np.inf) if by == "single" \
            else (lambda l: l.entire_sqnr_db)
        return sorted(self.layers, key=key)[:n]


@dataclass
class CompareReport:
    model: str
    images: int
    layer_images: int
    backends: list[BackendFigures]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for b, fig in zip(data["backends"], self.backends):
            b["worst_layers"] = [l.tensor for l in fig.worst_layers()]
        return data

    def save_json(self, path: str) -> None:
        from unified.core.paths import atomic_write

        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1, default=float))

    def table(self) -> str:
        pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        rows = [(b.label[:28], pct(b.top1_agreement), pct(b.top5_overlap), f"{b.mean_cosine:.4f}",
                 f"{b.min_cosine:.4f}", f"{b.max_abs_error:.3f}",
                 _short(b.worst_layers(1)[0].tensor) if b.layers else "-")
                for b in self.backends]
        if any(len(b.outputs) > 1 for b in self.backends):
            rows += [(f"  {b.label[:12]}:{o.name[:14]}", pct(o.top1_agreement), pct(o.top5_overlap),
                      f"{o.mean_cosine:.4f}", f"{o.min_cosine:.4f}", f"{o.max_abs_error:.3f}", f"{o.sqnr_db:.1f} dB")
                     for b in self.backends for o in b.outputs]
        head = f"{self.model}: {self.images} images vs ort fp32 (per-layer on {self.layer_images})"
        return head + "\n" + format_table(["backend", "top-1", "top-5", "cos mean", "cos min", "max|err|", "worst layer"], rows)

    def plot(self, path: str) -> None:
        """PNG of per-layer SQNR ("entire") across backends, layers in graph order."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from unified.core.paths import atomic_write

        fig, ax = plt.subplots(figsize=(11, 6), dpi=100)
        for b in self.backends:
            if b.layers:
                (line,) = ax.plot(range(len(b.layers)), [l.entire_sqnr_db for l in b.layers], marker=".",
                                  label=f"{b.label}: entire")
                if any(l.single_sqnr_db is not None for l in b.layers):
                    ax.plot(range(len(b.layers)), [l.single_sqnr_db if l.single_sqnr_db is not None else np.nan
                                                   for l in b.layers], linestyle=":", color=line.get_color(),
                            label=f"{b.label}: single")
        ax.set_xlabel("quantized tensor, graph order")
        ax.set_ylabel("SQNR vs fp32 (dB)")
        ax.set_title(f"{self.model}: per-layer error across backends")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
        fig.tight_layout()
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


def _short(tensor: str, width: int = 28) -> str:
    """'/_blocks.14/_project_conv/Conv_output_0' -> '_blocks.14/_project_conv'."""
    parts = [p for p in tensor.split("/") if p]
    name = "/".join(parts[:-1]) if len(parts) > 1 else tensor
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _as_batch(images: Any, pre: Preprocess) -> np.ndarray:
    if images is None:
        from unified.inputs.sample_images import random_crops

        images = random_crops(50, seed=0)
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        return images if images.ndim == 4 else images[None]
    from unified.inputs.calibration import make_calibration_set

    try:
        items = make_calibration_set(images, pre).tensors
    except UnifiedError as exc:
        raise ImageError(f"compare: {exc}") from exc
    return np.concatenate(items)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _sqnr(ref: np.ndarray, q: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - q) ** 2).sum())
    return float(10 * np.log10(max(float((ref.astype(np.float64) ** 2).sum()), 1e-30) / max(noise, 1e-30)))


def _run(qm, x: np.ndarray, batch: int, label: str) -> tuple[dict[str, np.ndarray], float]:
    """Every output of `qm` over `x`, by name (a single output is named "output")."""
    t = time.perf_counter()
    starts = range(0, len(x), batch)
    out = concatenate_outputs([qm.run(x[s:s + batch])
                               for s in progress(starts, len(starts), f"{label:>12s}", f"{len(x)} images")])
    return (out if isinstance(out, dict) else {"output": out}), time.perf_counter() - t


def _output_figures(name: str, out: np.ndarray, ref: np.ndarray) -> OutputFigures:
    cos = _cosine(out, ref)
    figures = OutputFigures(name, float(cos.mean()), float(cos.min()), _sqnr(ref, out), float(np.abs(out - ref).max()))
    if ref.ndim == 2 and ref.shape[1] >= 2:  # a batch of class scores
        top5, ref_top5 = np.argsort(-out, axis=1)[:, :5], np.argsort(-ref, axis=1)[:, :5]
        figures.top1_agreement = float((out.argmax(1) == ref.argmax(1)).mean())
        figures.top5_overlap = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(top5, ref_top5)]))
    return figures


def _backend_entries(backends: Iterable[Any]) -> list[tuple[str, str, dict[str, Any]]]:
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
    return entries


def _reference_tensors(model, x: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]] | None:
    try:
        from unified.graph.float_stats import float_session, with_outputs
        from unified.graph.onnx_model import graph_inputs
        from unified.graph.prepare import prepare

        prepared = prepare(model)
        names = [o for n in prepared.graph.node for o in n.output if o]
        session = float_session(with_outputs(prepared, names))
        input_name = graph_inputs(prepared)[0].name
        values = dict(zip(names, session.run(names, {input_name: x})))
        values[input_name] = x  # so the first layer's "single" figure sees the fp32 input too
        return values, names
    except Exception:  # a graph the float preparation cannot handle: output-level figures only
        return None


@public_api
def compare(model: Any = None, images: Any = None, backends: Sequence[Any] = ("ort", "rknn", "tengine"),
            calibration: Any = None, layer_images: int = 8, batch_size: int = 25,
            preprocess: Preprocess | None = None) -> CompareReport:
    """Run `images` through fp32 and every backend; see the module docstring for the figures.

    backends: names, or (name, options) / (name, options, label) tuples to compare settings of
    one backend, e.g. ("rknn", {"quantized_method": "layer"}, "rknn-layer").
    images: paths, a folder, PIL images, arrays or a float NCHW batch (None: 50 photo crops).
    layer_images: how many images the per-layer analysis uses (it keeps every tensor in memory).
    """
    source = resolve_model(model, preprocess)
    x = _as_batch(images, source.preprocess)
    entries = _backend_entries(backends)
    # the model as the user named it (the zoo name by default, so cached builds are reused) and the
    # preprocessing resolved once: a guessed normalization is announced once, not per backend
    model_arg = model if model is not None else DEFAULT_MODEL
    preprocess = preprocess or source.preprocess
    fp32 = quantize(model_arg, backend="ort", mode="fp32", preprocess=preprocess)
    ref, _ = _run(fp32, x, batch_size, "ort fp32")
    k = min(layer_images, len(x))
    reference = _reference_tensors(source.proto, x[:k]) if k else None
    results = []
    for label, name, options in entries:
        qm = quantize(model_arg, backend=name, calibration=calibration, preprocess=preprocess, **options)
        out, seconds = _run(qm, x, batch_size, label[:12])
        per_output = [_output_figures(o, out[o], ref[o]) for o in ref]
        scores = next((o for o in per_output if o.top1_agreement is not None), None)
        figures = BackendFigures(label, name, qm.mode, options,
                                 scores.top1_agreement if scores else None, scores.top5_overlap if scores else None,
                                 min(o.mean_cosine for o in per_output), min(o.min_cosine for o in per_output),
                                 max(o.max_abs_error for o in per_output), seconds, outputs=per_output)
        if reference is not None:
            tensors, order = reference
            layered = plugins.call_optional(name, "unified_layer_outputs", artifact=qm.artifact,
                                                 inputs=qm.quantize_input(x[:k]), reference=tensors)
            if layered:
                for tensor in order:
                    if tensor in layered["entire"]:
                        f = tensors[tensor]
                        single = layered["single"].get(tensor)
                        figures.layers.append(LayerFigures(
                            tensor, float(_cosine(layered["entire"][tensor], f).mean()), _sqnr(f, layered["entire"][tensor]),
                            float(_cosine(single, f).mean()) if single is not None else None,
                            _sqnr(f, single) if single is not None else None))
        results.append(figures)
    return CompareReport(source.name, len(x), k, results)
