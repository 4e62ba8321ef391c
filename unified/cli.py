"""The `unified` command: infer, quantize, compare, eval, backends.

With no model given, the built-in pretrained EfficientNet-Lite0 is used; with no image, the
bundled cat photo. `unified infer` with no `--backend` runs every installed backend and mode.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Any, Sequence

from unified.core import api, plugins
from unified.core.errors import InputError, UnifiedError
from unified.terminal.table import format_table


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UnifiedError(f"option {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _add_preprocess_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input preprocessing (default: the model's own, or a guess with a warning)")
    g.add_argument("--mean", nargs="+", type=float, help="mean in pixel units, one value or one per channel")
    g.add_argument("--std", nargs="+", type=float, help="std in pixel units, one value or one per channel")
    g.add_argument("--size", type=int, help="input size: center crop of this many pixels")
    g.add_argument("--resize", type=int, help="shorter side before the crop (default: size * 256/224)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="the model's input layout")
    g.add_argument("--bgr", action="store_true", help="the model takes BGR channel order")


def _preprocess(args: argparse.Namespace):
    """A Preprocess from the flags over the model's own (None when no flag is given)."""
    changes: dict[str, Any] = {}
    if args.mean:
        changes["mean"] = args.mean
    if args.std:
        changes["std"] = args.std
    if args.size:
        changes["crop"] = args.size
        changes["resize"] = args.resize or int(round(args.size * 256 / 224))
    elif args.resize:
        changes["resize"] = args.resize
    if args.layout:
        changes["layout"] = args.layout
    if args.bgr:
        changes["channels"] = "BGR"
    if not changes:
        return None
    from dataclasses import replace

    from unified.inputs.model_source import resolve_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flags replace the guess the warning is about
        base = resolve_model(getattr(args, "model", None)).preprocess
    return replace(base, **changes)


def _float_line(qm) -> str | None:
    nodes = qm.float_nodes
    if not nodes:
        return None
    from collections import Counter

    ops = Counter(reason.split()[-1] if reason.startswith("no integer kernel") else reason for reason in nodes.values())
    return f"{qm.backend}: {len(nodes)} node(s) run in float: " + ", ".join(f"{k} x{v}" for k, v in ops.most_common(6))


def _runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    specs = api.backends()
    if args.backend:
        spec = plugins.get_backend(args.backend)
        return [(spec.name, m) for m in ([args.mode] if args.mode else [spec.default_mode])]
    runs = []
    for spec in specs:
        modes = [args.mode] if args.mode and args.mode in spec.modes else list(spec.modes)
        runs += [(spec.name, m) for m in modes]
    return runs


def cmd_infer(args: argparse.Namespace) -> int:
    from unified.inputs.sample_images import bundled_photo_path

    image = args.image or str(bundled_photo_path())
    options = _parse_options(args.option)
    print(f"model: {args.model or 'efficientnet_lite0 (built-in, pretrained)'}   image: {image}")
    saved = api.load(args.model) if args.model and api.looks_saved(args.model) else None
    if saved and ((args.backend and args.backend != saved.backend) or (args.mode and args.mode != saved.mode)):
        raise UnifiedError(f"{args.model} is a saved {saved.backend}/{saved.mode} model; --backend/--mode "
                           "cannot change it (quantize the float model again for another backend)")
    flags = any(getattr(args, k) for k in ("mean", "std", "size", "resize", "layout", "bgr"))
    if saved and (flags or args.calibration or args.option):
        raise UnifiedError(f"{args.model} is a saved model: its calibration, options and preprocessing are fixed")
    runs = [(saved.backend, saved.mode)] if saved else _runs(args)
    preprocess = None if saved else _preprocess(args)
    for backend, mode in runs:
        qm = saved or api.quantize(args.model, backend=backend, mode=mode, calibration=args.calibration,
                                   preprocess=preprocess, **options)
        result = qm.infer(image)
        print(f"\n{backend} / {mode}")
        if line := _float_line(qm):
            print(line)
        if result.scores_name is not None:
            print(format_table(["rank", "class", "label", "probability"],
                               [(i + 1, idx, label, f"{p:.4f}") for i, (idx, label, p) in enumerate(result.top5)]))
        else:  # a detector or segmenter: one summary line per output
            print(format_table(["output", "shape", "min", "max", "mean"],
                               [(name, "x".join(map(str, v.shape)), float(v.min()), float(v.max()), float(v.mean()))
                                for name, v in result.outputs.items()]))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    options = _parse_options(args.option)
    qm = api.quantize(args.model, backend=args.backend, mode=args.mode, calibration=args.calibration,
                      preprocess=_preprocess(args), **options)
    qm.save(args.output)
    if args.export_qdq:
        qm.export_qdq(args.export_qdq)
        print(f"wrote the QDQ model (float I/O, {qm.backend}'s scales and zero points) to {args.export_qdq}")
    if args.export_toolkit:
        for path in qm.export_toolkit(args.export_toolkit):
            print(f"wrote {path}")
    reused = " (reused the cached build of the same model, options and calibration)" if qm.from_cache else ""
    print(f"saved {qm.backend}/{qm.mode} model to {args.output}{reused}")
    if line := _float_line(qm):
        print(line)
    if qm.import_report:
        print(f"{qm.backend}: imported a QDQ model; {len(qm.import_report)} tensor(s) not adopted as given, "
              f"e.g. {qm.import_report[0]}")
    if qm.input_quant is not None:
        print(f"input:  {qm.input_quant}")
        print(f"output: {qm.output_quant}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [(s.name, s.io, f"{s.input_dtype} {s.input_layout}", s.output_dtype, ",".join(s.modes), s.plugin, s.description)
            for s in api.backends()]
    print(format_table(["backend", "io", "input", "output", "modes", "plugin", "description"], rows))
    for name, error in plugins.plugin_failures().items():
        print(f"plugin {name!r} failed to load: {error}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from unified.consistency.compare import compare

    images = args.images or None
    if images and len(images) == 1:
        images = images[0]
    report = compare(args.model, images, backends=args.backends, calibration=args.calibration,
                     layer_images=args.layer_images, preprocess=_preprocess(args))
    print(report.table())
    for b in report.backends:
        worst = b.worst_layers(3)
        if worst:
            print(f"  {b.label}: most error enters at " + "; ".join(
                f"{l.tensor} (single {l.single_sqnr_db:.1f} dB, entire {l.entire_sqnr_db:.1f} dB)" for l in worst))
    _write_report(report, args)
    return 0


def _write_report(report: Any, args: argparse.Namespace) -> None:
    if args.json and args.json != "-":
        report.save_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")


def cmd_eval(args: argparse.Namespace) -> int:
    from unified.evaluation.evaluate import evaluate

    report = evaluate(args.model, args.dataset, backends=args.backends, executor=args.executor,
                      address=args.address, workers=args.workers, calibration=args.calibration,
                      layer_images=args.layer_images, shard_size=args.shard_size, preprocess=_preprocess(args))
    if args.json == "-":  # machine-readable on stdout, nothing else there
        print(json.dumps(report.to_json(), indent=1, default=float))
        return 0
    print(report.table())
    for skipped in report.skipped[:5]:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    if len(report.skipped) > 5:
        print(f"  ... and {len(report.skipped) - 5} more unreadable images (all in the JSON report)")
    _write_report(report, args)
    return 0


def cmd_rknn_table(args: argparse.Namespace) -> int:
    from unified.backends.rknn.toolkit_export import merge_tables
    from unified.core.paths import atomic_write, existing_file

    toolkit = existing_file(args.toolkit_table, "quantization table", InputError)
    ours = existing_file(args.unified_table, "quantization table", InputError)
    merged, missing = merge_tables(toolkit.read_text(), ours.read_text())
    out = args.output or args.toolkit_table
    with atomic_write(out) as tmp:
        tmp.write_text(merged)
    print(f"wrote {out}: unified's min/max in the toolkit's table" +
          (f"; kept the toolkit's own for {len(missing)} tensors unified does not name: {', '.join(missing[:5])}"
           if missing else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unified", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="classify an image on one or every backend")
    p.add_argument("image", nargs="?", help="image file (default: the bundled cat photo)")
    p.add_argument("--model", help="zoo name, .onnx file or saved quantized model (default: efficientnet_lite0)")
    p.add_argument("--backend", help="backend name (default: every installed backend)")
    p.add_argument("--mode", help="backend mode, e.g. ort: static | dynamic | fp32")
    p.add_argument("--calibration", help="folder of images or dataset.txt (default: built-in photo crops)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE", help="backend option")
    _add_preprocess_flags(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("quantize", help="quantize a model for a backend and save it")
    p.add_argument("--model", help="zoo name or .onnx file (default: efficientnet_lite0)")
    p.add_argument("--backend", default="ort")
    p.add_argument("--mode")
    p.add_argument("--calibration", help="folder of images or dataset.txt (default: built-in photo crops)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE", help="backend option")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    p.add_argument("--export-qdq", metavar="OUT.onnx", help="also write a standard ONNX QDQ model")
    p.add_argument("--export-toolkit", metavar="DIR",
                   help="also write the real toolkit's files (rknn: float ONNX + quantization table; tengine: scale table)")
    _add_preprocess_flags(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("backends", help="list installed backends and their I/O contracts")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("compare", help="compare backends with fp32 on the same images (table, JSON, plot)")
    p.add_argument("images", nargs="*", help="images or folders (default: 50 crops of the offline photos)")
    p.add_argument("--model", help="zoo name or .onnx file (default: efficientnet_lite0)")
    p.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
    p.add_argument("--calibration", help="folder of images or dataset.txt (default: built-in photo crops)")
    p.add_argument("--layer-images", type=int, default=8, help="images used by the per-layer analysis")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--plot", help="write a PNG of per-layer error across backends")
    _add_preprocess_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("rknn-table", help="write unified's ranges into the table of RKNN-Toolkit2's "
                                            "hybrid_quantization_step1 (then run step2)")
    p.add_argument("toolkit_table", help="the <model>.quantization.cfg step1 wrote")
    p.add_argument("unified_table", help="the .quantization.cfg of `unified quantize --export-toolkit`")
    p.add_argument("-o", "--output", help="where to write the merged table (default: over the toolkit's)")
    p.set_defaults(func=cmd_rknn_table)

    p = sub.add_parser("eval", help="evaluate backends on a dataset: accuracy, agreement with fp32, throughput")
    p.add_argument("dataset", help="folder of images, class-per-folder tree, dataset.txt or labels file "
                                   "('path class_index' per line)")
    p.add_argument("--model", help="zoo name or .onnx file (default: efficientnet_lite0)")
    p.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="Ray cluster to join: auto or ray://host:10001 (default: start Ray here)")
    p.add_argument("--workers", type=int, help="CPUs of the Ray started here (default: all)")
    p.add_argument("--calibration", help="folder of images or dataset.txt (default: built-in photo crops)")
    p.add_argument("--layer-images", type=int, default=8, help="images used by the per-layer analysis")
    p.add_argument("--shard-size", type=int, default=25, help="images per shard (one task)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the report as JSON to PATH (no PATH: print it instead of the table)")
    p.add_argument("--plot", help="write a PNG of per-layer error across backends")
    _add_preprocess_flags(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs through root
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from unified.inputs.model_source import UnknownNormalizationWarning

    warnings.filterwarnings("default", category=UnknownNormalizationWarning)
    warnings.showwarning = lambda message, *a, **k: print(f"unified: warning: {message}", file=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UnifiedError as exc:
        print(f"unified: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `unified infer | head -1`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # one line, never a traceback
        from unified.core.errors import as_unified_error

        print(f"unified: error: {as_unified_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
