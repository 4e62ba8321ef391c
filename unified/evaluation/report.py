"""The report of `compare` and `evaluate`: figures per backend and per output, a table for
terminals, JSON for machines, a PNG of per-layer error for people.

Per backend: top-1 agreement with fp32, top-5 overlap, mean and min cosine and max abs error of
the outputs (SQNR per output); accuracy against labels where the dataset has them; throughput;
and, where the backend exposes internals, per-layer cosine and SQNR on a sample of images,
"entire" (errors accumulated along the quantized graph) and "single" (each layer fed fp32
inputs), as RKNN-Toolkit2's accuracy_analysis reports them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from unified.terminal.table import format_table

TIMING_FIELDS = ("run_seconds", "images_per_second", "wall_seconds", "run_wall_seconds",
                 "reference_images_per_second")


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
    the worst output's cosine and error); accuracy where the images have labels."""

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
    top1_accuracy: float | None = None
    top5_accuracy: float | None = None
    images_per_second: float = 0.0

    def worst_layers(self, n: int = 5, by: str = "single") -> list[LayerFigures]:
        """The layers where most error enters: lowest "single" SQNR (or "entire")."""
        key = (lambda l: l.single_sqnr_db if l.single_sqnr_db is not None else np.inf) if by == "single" \
            else (lambda l: l.entire_sqnr_db)
        return sorted(self.layers, key=key)[:n]


@dataclass
class SkippedImage:
    path: str
    reason: str


@dataclass
class EvaluationReport:
    """What `compare` and `evaluate` return. `images` counts the images evaluated (skipped ones
    excluded); `labelled_images` those with a label; the reference_* fields are fp32's own."""

    model: str
    images: int
    layer_images: int
    backends: list[BackendFigures]
    dataset: str = ""
    labelled_images: int = 0
    reference_top1_accuracy: float | None = None
    reference_top5_accuracy: float | None = None
    reference_images_per_second: float = 0.0
    skipped: list[SkippedImage] = field(default_factory=list)
    executor: str = "local"
    shards: int = 0
    wall_seconds: float = 0.0      # the whole call: builds (or cache loads), running, analysis
    run_wall_seconds: float = 0.0  # running the shards: what more workers shorten
    images_per_second: float = 0.0  # the dataset's throughput: images / run_wall_seconds
    shard_workers: list[str] = field(default_factory=list)  # "host:pid" that ran each shard, by shard

    def to_json(self, timings: bool = True) -> dict[str, Any]:
        """The report as plain data; `timings=False` leaves out what depends on the machine's load
        (the part that must be equal between executors)."""
        data = asdict(self)
        for b, fig in zip(data["backends"], self.backends):
            b["worst_layers"] = [l.tensor for l in fig.worst_layers()]
        if not timings:
            data = _without(data, TIMING_FIELDS + ("executor", "shards", "shard_workers"))
        return data

    def save_json(self, path: str) -> None:
        from unified.core.paths import atomic_write

        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1, default=float))

    def table(self) -> str:
        pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        labelled = self.labelled_images > 0
        headers = ["backend", "top-1", "top-5", "cos mean", "cos min", "max|err|"]
        headers += ["acc@1", "acc@5", "img/s"] if labelled else ["worst layer"]
        width = 16 if labelled else 28

        def extra(b: BackendFigures) -> tuple:
            if labelled:
                return pct(b.top1_accuracy), pct(b.top5_accuracy), f"{b.images_per_second:.1f}"
            return (_short(b.worst_layers(1)[0].tensor) if b.layers else "-",)

        rows = [(b.label[:width], pct(b.top1_agreement), pct(b.top5_overlap), f"{b.mean_cosine:.4f}",
                 f"{b.min_cosine:.4f}", f"{b.max_abs_error:.3f}") + extra(b) for b in self.backends]
        if labelled:
            rows.insert(0, ("fp32", "-", "-", "-", "-", "-", pct(self.reference_top1_accuracy),
                            pct(self.reference_top5_accuracy), f"{self.reference_images_per_second:.1f}"))
        if any(len(b.outputs) > 1 for b in self.backends):
            rows += [(f"  {b.label[:12]}:{o.name[:14]}", pct(o.top1_agreement), pct(o.top5_overlap),
                      f"{o.mean_cosine:.4f}", f"{o.min_cosine:.4f}", f"{o.max_abs_error:.3f}", f"{o.sqnr_db:.1f} dB")
                     + (("", "") if labelled else ())
                     for b in self.backends for o in b.outputs]
        head = f"{self.model}: {self.images} images vs ort fp32 (per-layer on {self.layer_images})"
        if labelled:
            head += f", {self.labelled_images} labelled"
        if self.skipped:
            head += f", {len(self.skipped)} unreadable skipped"
        if self.run_wall_seconds:
            head += f"\n{self.executor}, {self.shards} shards: {self.images_per_second:.1f} images/s (all backends)"
        return head + "\n" + format_table(headers, rows)

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


CompareReport = EvaluationReport  # the name `compare` has always returned


def _without(data: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(data, dict):
        return {k: _without(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [_without(v, keys) for v in data]
    return data


def _short(tensor: str, width: int = 28) -> str:
    """'/_blocks.14/_project_conv/Conv_output_0' -> '_blocks.14/_project_conv'."""
    parts = [p for p in tensor.split("/") if p]
    name = "/".join(parts[:-1]) if len(parts) > 1 else tensor
    return name if len(name) <= width else "..." + name[-(width - 3):]
