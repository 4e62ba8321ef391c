"""unified's `profile="toolkit"` against the real toolkits, algorithm by algorithm.

Never runs in CI: it needs the real toolkits (recipes: ../shared/oracles/README.md). Both sides
quantize EfficientNet-Lite0 on the same calibration pixels and run the same evaluation crops.

  * `--rknn-venv V`: a virtual environment holding RKNN-Toolkit2. The toolkit writes its table
    (`hybrid_quantization_step1`) and runs its PC simulator on it (step2); unified builds
    `quantize(backend="rknn", profile="toolkit", quantized_algorithm=..., quantized_method=...)`.
  * `--tengine-build B`: a Tengine build folder (convert_tool, quant_tool_uint8 and
    libtengine-lite.so; the C API header is read from the source tree above it). Tengine's quant
    tool writes its scale table and uint8 model for `-a 0|1|2`; a small C program (compiled here
    with gcc) runs that model in `TENGINE_MODE_UINT8`; unified builds `quantize(backend="tengine",
    profile="toolkit", algorithm=...)`. Tengine's uint8 Pad leaves the right-hand column of an
    asymmetric pad (left 0, right 1, as TF-style "same" padding exports) unwritten, so the real
    runtime reads stale memory there and its outputs change from run to run; patch
    `source/device/cpu/op/pad/pad_ref.c` (`x = out_w - left` -> `x = left + in_w` in the two
    right-padding loops) before building, or the figures below mean little. The script says so
    when the source is unpatched.

It prints per configuration the top-1 agreement between the two, each one's share of fp32's top-1
decisions, the output cosine (Tengine), and how the two sides' scale tables compare.

    python benchmarks/toolkit_agreement.py [--rknn-venv /tmp/rknn-venv] [--tengine-build /tmp/tengine/build]
                                           [--calib 50] [--images 200]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("UNIFIED_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = [("normal", "channel"), ("normal", "layer"), ("kl_divergence", "channel")]
TENGINE_ALGORITHMS = {"minmax": 0, "kl": 1, "aciq": 2}

TENGINE_RUNNER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "tengine/c_api.h"
/* run_u8 model.tmfile inputs.bin n c h w out.bin: raw uint8 NCHW in, raw uint8 out, one graph */
int main(int argc, char** argv)
{
    int n = atoi(argv[3]), c = atoi(argv[4]), h = atoi(argv[5]), w = atoi(argv[6]), size = c * h * w;
    int dims[4] = {1, c, h, w};
    float s; int zp;
    init_tengine();
    graph_t graph = create_graph(NULL, "tengine", argv[1]);
    struct options opt = {1, TENGINE_CLUSTER_ALL, TENGINE_MODE_UINT8, 0};
    unsigned char* in = malloc(size);
    tensor_t input = get_graph_input_tensor(graph, 0, 0);
    set_tensor_shape(input, dims, 4);
    set_tensor_buffer(input, in, size);
    if (!graph || prerun_graph_multithread(graph, opt) < 0) return 1;
    tensor_t output = get_graph_output_tensor(graph, 0, 0);
    FILE* fi = fopen(argv[2], "rb");
    FILE* fo = fopen(argv[7], "wb");
    for (int i = 0; i < n; i++) {
        if (fread(in, 1, size, fi) != (size_t)size || run_graph(graph, 1) < 0) return 1;
        fwrite(get_tensor_buffer(output), 1, get_tensor_buffer_size(output), fo);
    }
    get_tensor_quant_param(output, &s, &zp, 1);
    printf("%.9g %d\n", s, zp);
    fclose(fi); fclose(fo);
    return 0;
}
"""

TOOLKIT_SCRIPT = r"""
import json, os, sys
import numpy as np
from rknn.api import RKNN
work, algorithm, method = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(work)
tag = f"{algorithm}_{method}"
os.makedirs(tag, exist_ok=True)
os.chdir(tag)
r = RKNN(verbose=False)
r.config(mean_values=[[127, 127, 127]], std_values=[[128, 128, 128]], target_platform="rk3588",
         quantized_dtype="w8a8", quantized_algorithm=algorithm, quantized_method=method)
assert r.load_onnx("../model.onnx", inputs=["input"], input_size_list=[[1, 3, 224, 224]]) == 0
assert r.hybrid_quantization_step1(dataset="../dataset.txt", proposal=False) == 0
r2 = RKNN(verbose=False)
assert r2.hybrid_quantization_step2(model_input="model.model", data_input="model.data",
                                    model_quantization_cfg="model.quantization.cfg") == 0
assert r2.init_runtime() == 0
images = np.load("../eval_u8.npy")
out = np.concatenate([r2.inference(inputs=[im[None]], data_format="nhwc")[0] for im in images])
np.save("outputs.npy", out)
print(json.dumps({"done": tag}))
"""


def toolkit_scales(table: str) -> dict[str, float]:
    """tensor -> scale from a `.quantization.cfg` (int8 tensors only)."""
    scales, current, lines = {}, None, table.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^    ([^ ].*):$", line)
        if key:
            current = key.group(1)
        elif current and line.strip() == "scale:" and i + 1 < len(lines) and lines[i + 1].strip().startswith("-"):
            scales[current] = float(lines[i + 1].split()[-1])
    return scales


def tengine_names(model) -> dict[str, str]:
    """Tengine's tensor name -> unified's: a Conv fused with its Clip/Relu keeps the Conv's name."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.input[0]: n.output[0] for n in model.graph.node
            if n.op_type in ("Clip", "Relu") and n.input[0] in producer and producer[n.input[0]].op_type == "Conv"}


def compare_tables(theirs: dict[str, tuple[float, int]], ours: dict[str, tuple[float, int]],
                   alias: dict[str, str]) -> str:
    pairs = {k: (v, ours[alias.get(k, k)]) for k, v in theirs.items() if alias.get(k, k) in ours}
    same = sum(a == b for a, b in pairs.values())
    close = sum(a[1] == b[1] and abs(a[0] - b[0]) <= 1.5e-6 for a, b in pairs.values())
    ratio = max(max(a[0], b[0]) / min(a[0], b[0]) for a, b in pairs.values())
    return (f"table: {same}/{len(theirs)} lines identical, {close} within one unit of the printed 6th decimal, "
            f"largest scale ratio {ratio:.4f}")


def run_tengine(build: Path, work: Path, model, cal: list, calib_dir: Path, x: np.ndarray, fp32: np.ndarray,
                algorithms: list[str]) -> None:
    import unified
    from unified.backends.tengine.plugin import write_scale_file
    from unified.engine.scale_table import read_scale_table

    source = build.parent
    header = source / "source" / "api" / "c_api.h"
    lib = build / "source"
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib))
    if "x = out_w - left" in (source / "source/device/cpu/op/pad/pad_ref.c").read_text():
        print("  note: this Tengine's pad_ref.c is unpatched (see the docstring): its outputs vary from run to run")
    (work / "inc" / "tengine").mkdir(parents=True)
    (work / "inc" / "tengine" / "c_api.h").write_text(header.read_text())
    (work / "run_u8.c").write_text(TENGINE_RUNNER)
    subprocess.run(["gcc", "-O2", "-o", str(work / "run_u8"), str(work / "run_u8.c"), f"-I{work / 'inc'}",
                    f"-L{lib}", "-ltengine-lite", f"-Wl,-rpath,{lib}"], check=True)
    import onnx

    onnx.save(model, work / "model.onnx")
    subprocess.run([str(build / "tools/convert_tool/convert_tool"), "-f", "onnx", "-m", str(work / "model.onnx"),
                    "-o", str(work / "model.tmfile")], check=True, capture_output=True, env=env)
    alias = tengine_names(model)
    pre = unified.Preprocess(resize=224, crop=224, mean=127, std=128)
    for algorithm in algorithms:
        folder = work / f"tengine_{algorithm}"
        folder.mkdir()
        subprocess.run([str(build / "tools/quantize/quant_tool_uint8"), "-m", str(work / "model.tmfile"), "-i",
                        str(calib_dir), "-o", "model_u8.tmfile", "-g", "3,224,224", "-a",
                        str(TENGINE_ALGORITHMS[algorithm]), "-w", "127,127,127", "-s", "0.0078125,0.0078125,0.0078125"],
                       check=True, capture_output=True, cwd=folder, env=env)
        theirs_table = read_scale_table(folder / f"table_{algorithm}.scale")
        qm = unified.quantize(work / "model.onnx", backend="tengine", calibration=cal, profile="toolkit",
                              algorithm=algorithm, preprocess=pre)
        write_scale_file(qm.artifact, folder / "unified.scale")
        native = qm.quantize_input(x)  # the same rule as Tengine's application side, with the same input params
        native.astype(np.uint8).tofile(folder / "input.bin")
        run = subprocess.run([str(work / "run_u8"), str(folder / "model_u8.tmfile"), str(folder / "input.bin"),
                              str(len(x)), "3", "224", "224", str(folder / "output.bin")],
                             check=True, capture_output=True, text=True, env=env)
        scale, zero_point = run.stdout.split()
        theirs = (np.fromfile(folder / "output.bin", np.uint8).reshape(len(x), -1).astype(np.float32)
                  - int(zero_point)) * float(scale)
        ours = qm.run(x)
        cos = (theirs * ours).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
        print(f"  tengine {algorithm}: top-1 agreement {np.mean(theirs.argmax(1) == ours.argmax(1)):.1%}, output "
              f"cosine mean {cos.mean():.4f} (min {cos.min():.4f}); kept fp32 top-1: Tengine "
              f"{np.mean(theirs.argmax(1) == fp32):.1%}, unified {np.mean(ours.argmax(1) == fp32):.1%}")
        print("    " + compare_tables(theirs_table, read_scale_table(folder / "unified.scale"), alias))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rknn-venv", help="virtual environment holding rknn-toolkit2")
    parser.add_argument("--tengine-build", help="Tengine build folder (convert_tool, quant_tool_uint8, library)")
    parser.add_argument("--tengine-algorithms", nargs="+", default=list(TENGINE_ALGORITHMS))
    parser.add_argument("--keep", help="work in this (new) folder and keep the toolkits' files there")
    parser.add_argument("--calib", type=int, default=50, help="calibration crops (seed 1)")
    parser.add_argument("--images", type=int, default=200, help="evaluation crops (seed 0)")
    parser.add_argument("--configs", nargs="+", default=[f"{a}/{m}" for a, m in CONFIGS],
                        help="algorithm/method pairs (default: %(default)s)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    import onnx

    import unified
    from unified.graph.prepare import prepare
    from unified.inputs.sample_images import random_crops
    from unified.inputs.zoo import load_zoo_model

    if not (args.rknn_venv or args.tengine_build):
        sys.exit("give --rknn-venv and/or --tengine-build (recipes: ../shared/oracles/README.md)")
    python = Path(args.rknn_venv or "-") / "bin" / "python"
    if args.rknn_venv and not python.exists():
        sys.exit(f"no python in {args.rknn_venv}: install RKNN-Toolkit2 there first (../shared/oracles/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # the toolkit reads the float model with Pads folded (its own Pad fusion fails on read-only arrays)
        onnx.save(prepare(load_zoo_model("efficientnet_lite0")), work / "model.onnx")
        calib = [c.convert("RGB").resize((224, 224)) for c in random_crops(args.calib, seed=1)]
        for i, image in enumerate(calib):
            image.save(work / f"cal{i:03d}.png")
        (work / "dataset.txt").write_text("".join(f"{work / f'cal{i:03d}.png'}\n" for i in range(len(calib))))
        pixels = np.stack([np.asarray(c.convert("RGB").resize((224, 224))) for c in random_crops(args.images, seed=0)])
        np.save(work / "eval_u8.npy", pixels)
        x = ((pixels.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()
        cal = [((np.asarray(c, np.float32) - 127) / 128).transpose(2, 0, 1)[None].copy() for c in calib]
        fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32").run(x).argmax(1)
        print(f"EfficientNet-Lite0, {args.calib} calibration crops, {args.images} evaluation crops")
        if args.tengine_build:
            calib_dir = work / "calib"
            calib_dir.mkdir()
            for i, image in enumerate(calib):
                image.save(calib_dir / f"cal{i:03d}.png")
            run_tengine(Path(args.tengine_build).resolve(), work, load_zoo_model("efficientnet_lite0"), cal, calib_dir,
                        x, fp32, args.tengine_algorithms)
        for algorithm, method in (c.split("/") for c in (args.configs if args.rknn_venv else [])):
            proc = subprocess.run([str(python), "-c", TOOLKIT_SCRIPT, str(work), algorithm, method],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {algorithm}/{method}: the toolkit failed: {proc.stderr.strip().splitlines()[-1][:200]}")
                continue
            folder = work / f"{algorithm}_{method}"
            theirs = np.load(folder / "outputs.npy")
            qm = unified.quantize("efficientnet_lite0", backend="rknn", calibration=cal, profile="toolkit",
                                  quantized_algorithm=algorithm, quantized_method=method)
            ours = qm.run(x)
            scales = toolkit_scales((folder / "model.quantization.cfg").read_text())
            ratios = [max(s, t.scale) / min(s, t.scale) for name, s in scales.items()
                      if (t := qm.artifact.graph.tensors.get(name)) is not None and s > 0]
            print(f"  rknn {algorithm}/{method}: top-1 agreement {np.mean(theirs.argmax(1) == ours.argmax(1)):.1%}; "
                  f"kept fp32 top-1: toolkit {np.mean(theirs.argmax(1) == fp32):.1%}, unified "
                  f"{np.mean(ours.argmax(1) == fp32):.1%}; largest scale ratio {max(ratios):.3f} over {len(ratios)} "
                  f"tensors")


if __name__ == "__main__":
    main()
