"""unified.evaluate: datasets and labels, deterministic merging, skipped images, local vs Ray."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unified
from unified.evaluation.datasets import class_index, imagenet_wnids, load_dataset
from unified.evaluation.figures import accuracy, merge, output_figures
from unified.evaluation.shards import OutputSummary, ShardResult

PRE16 = unified.Preprocess(resize=16, crop=16)


def _write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")


# -- datasets --------------------------------------------------------------------------------
def test_class_folders_map_indices_wordnet_ids_and_names() -> None:
    assert class_index("281", 1000) == 281
    assert imagenet_wnids()[0] == "n01440764" and len(imagenet_wnids()) == 1000
    assert class_index("n01440764", 1000) == 0           # ImageNet's own folder names
    assert class_index("n15075141", 1000) == 999
    assert class_index("Tabby", 1000) == class_index("tabby", 1000) == 281
    assert class_index("great_white_shark", 1000) == 2
    assert class_index("7", 10) == 7
    with pytest.raises(unified.InputError, match="'cats'"):
        class_index("cats", 1000)
    with pytest.raises(unified.InputError, match="index 12 is outside the model's 10 classes"):
        class_index("12", 10)


def test_dataset_forms(tmp_path) -> None:
    _write_images(tmp_path / "tree" / "3", 2, 0)
    _write_images(tmp_path / "tree" / "1", 3, 1)
    tree = load_dataset(tmp_path / "tree", num_classes=10)
    assert tree.kind == "class-folders" and len(tree) == 5
    assert [i.label for i in tree.items] == [1, 1, 1, 3, 3]       # folders sorted, items indexed in order
    assert [i.index for i in tree.items] == list(range(5))

    flat = load_dataset(tmp_path / "tree" / "1")
    assert flat.kind == "folder" and not flat.labelled and len(flat) == 3

    (tmp_path / "val.txt").write_text("tree/1/0.png 4\ntree/3/1.png 0\n")
    labelled = load_dataset(tmp_path / "val.txt", num_classes=10)
    assert labelled.kind == "labels" and [i.label for i in labelled.items] == [4, 0]
    assert labelled.items[0].source == str(tmp_path / "tree" / "1" / "0.png")    # relative to the list

    (tmp_path / "dataset.txt").write_text("tree/1/0.png\ntree/1/1.png tree/1/2.png\n")
    listed = load_dataset(tmp_path / "dataset.txt")
    assert listed.kind == "dataset.txt" and not listed.labelled
    assert listed.items[1].source == (str(tmp_path / "tree/1/1.png"), str(tmp_path / "tree/1/2.png"))

    (tmp_path / "bad.txt").write_text("tree/1/0.png 10\n")
    with pytest.raises(unified.InputError, match=r"bad.txt, line 1: class index 10 is outside"):
        load_dataset(tmp_path / "bad.txt", num_classes=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(unified.InputError, match="holds no images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(unified.InputError, match="no class-score output"):
        load_dataset(tmp_path / "tree", num_classes=None)


# -- figures ---------------------------------------------------------------------------------
def _summary(cos, top5=None) -> OutputSummary:
    n = len(cos)
    return OutputSummary(np.array(cos, float), np.full(n, 4.0), np.full(n, 1.0), np.arange(n, dtype=float),
                         None if top5 is None else np.array(top5))


def test_figures_exact_on_hand_values() -> None:
    ref = _summary([1, 1, 1], [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])
    out = _summary([0.5, 1.0, 0.9], [[0, 2, 1, 9, 8], [6, 5, 7, 8, 9], [1, 0, 9, 8, 7]])
    f = output_figures("logits", out, ref)
    assert f.top1_agreement == pytest.approx(2 / 3)
    assert f.top5_overlap == pytest.approx((3 / 5 + 5 / 5 + 1 / 5) / 3)
    assert f.mean_cosine == pytest.approx(0.8) and f.min_cosine == 0.5
    assert f.sqnr_db == pytest.approx(10 * np.log10(4.0))            # signal 12 over noise 3
    assert f.max_abs_error == 2.0
    top1, top5 = accuracy(out.top5, np.array([0, 7, -1]))             # the third image has no label
    assert (top1, top5) == (0.5, 1.0)
    assert accuracy(out.top5, np.array([-1, -1, -1])) == (None, None)


def test_merge_does_not_depend_on_finishing_order() -> None:
    rng = np.random.default_rng(0)
    results = []
    for index in range(6):
        n = 3
        summary = OutputSummary(rng.random(n), rng.random(n), rng.random(n), rng.random(n),
                                rng.integers(0, 10, (n, 5)))
        results.append(ShardResult(index, np.arange(index * n, index * n + n), np.full(n, -1),
                                   outputs={"fp32": {"o": summary}, "rknn": {"o": summary}},
                                   seconds={"fp32": 0.1, "rknn": 0.2}))
    shuffled = results[:]
    random.Random(3).shuffle(shuffled)
    a, b = merge(results), merge(shuffled)
    assert np.array_equal(a.kept, np.arange(18)) and np.array_equal(a.kept, b.kept)
    for field in ("cosine", "signal", "noise", "max_abs", "top5"):
        assert np.array_equal(getattr(a.outputs["rknn"]["o"], field), getattr(b.outputs["rknn"]["o"], field))
    assert output_figures("o", a.outputs["rknn"]["o"], a.outputs["fp32"]["o"]) == \
        output_figures("o", b.outputs["rknn"]["o"], b.outputs["fp32"]["o"])


# -- evaluate, local -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_tree")
    for label, seed in (("0", 0), ("1", 1), ("3", 2)):
        _write_images(root / label, 5, seed)
    (root / "1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_evaluate_local_accuracy_and_skipped_images(tiny_model, tiny_calibration, tiny_tree) -> None:
    report = unified.evaluate(tiny_model, tiny_tree, backends=["ort", "rknn"], calibration=tiny_calibration,
                              preprocess=PRE16, shard_size=4, layer_images=2)
    assert report.images == 15 and report.labelled_images == 15 and report.shards == 4
    assert [(Path(s.path).name, "not an image" in s.reason) for s in report.skipped] == [("broken.jpg", True)]
    # fp32 accuracy, recomputed here from the images themselves
    paths = sorted(p for p in tiny_tree.rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in paths])
    fp32 = unified.quantize(tiny_model, backend="ort", mode="fp32", preprocess=PRE16)
    logits = fp32.run(np.concatenate([PRE16(str(p)) for p in paths]))
    assert report.reference_top1_accuracy == pytest.approx(float((logits.argmax(1) == labels).mean()))
    rknn = report.backends[1]
    rknn_logits = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16).run(
        np.concatenate([PRE16(str(p)) for p in paths]))
    assert rknn.top1_accuracy == pytest.approx(float((rknn_logits.argmax(1) == labels).mean()))
    assert rknn.top1_agreement == pytest.approx(float((rknn_logits.argmax(1) == logits.argmax(1)).mean()))
    assert len(rknn.layers) == 5 and report.layer_images == 2
    table = report.table()
    assert "acc@1" in table and "1 unreadable skipped" in table


def test_evaluate_rejects_bad_arguments(tiny_model, tiny_tree) -> None:
    with pytest.raises(unified.InputError, match="executor must be one of local, ray"):
        unified.evaluate(tiny_model, tiny_tree, executor="dask", preprocess=PRE16)
    with pytest.raises(unified.InputError, match="distinct"):
        unified.evaluate(tiny_model, tiny_tree, backends=["rknn", "rknn"], preprocess=PRE16)


def test_cli_eval_prints_json(tiny_model, tiny_calibration, tiny_tree, tmp_path) -> None:
    import onnx

    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, model_path)
    proc = subprocess.run([sys.executable, "-m", "unified.cli", "eval", str(tiny_tree), "--model", str(model_path),
                           "--backends", "rknn", "--size", "16", "--resize", "16", "--mean", "0.5", "--std", "0.5",
                           "--layer-images", "1", "--json"],
                          capture_output=True, text=True, env=dict(os.environ, UNIFIED_PROGRESS="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["images"] == 15 and data["labelled_images"] == 15 and len(data["skipped"]) == 1
    assert [b["label"] for b in data["backends"]] == ["rknn"]
    assert 0 <= data["backends"][0]["top1_accuracy"] <= 1


def test_local_evaluation_never_imports_ray(tiny_model, tiny_tree, tmp_path) -> None:
    import onnx

    onnx.save(tiny_model, tmp_path / "tiny.onnx")
    code = ("import sys, numpy as np, unified; "
            f"r = unified.evaluate({str(tmp_path / 'tiny.onnx')!r}, {str(tiny_tree)!r}, backends=['rknn'], "
            "calibration=[np.zeros((1, 3, 16, 16), np.float32)] * 4, layer_images=0, "
            "preprocess=unified.Preprocess(resize=16, crop=16)); "
            "print(r.images, 'ray' in sys.modules, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, UNIFIED_PROGRESS="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["15", "False", "False"]


# -- Ray -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory, lite0) -> Path:
    """A labelled class-per-folder tree of offline photo crops: ImageNet class names as folders,
    each crop (lossless PNG) filed under fp32's own decision, so fp32's accuracy is exactly 1."""
    from unified.inputs.labels import imagenet_labels
    from unified.inputs.sample_images import random_crops

    root = tmp_path_factory.mktemp("photos")
    crops = random_crops(24, seed=11)
    fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32")
    for i, (crop, label) in enumerate(zip(crops, fp32.run(crops).argmax(1))):
        folder = root / imagenet_labels()[int(label)].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        crop.convert("RGB").save(folder / f"{i:03d}.png")
    (root / imagenet_labels()[281].replace(" ", "_")).mkdir(exist_ok=True)
    (root / imagenet_labels()[281].replace(" ", "_") / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    return root


@pytest.fixture(scope="module")
def local_report(photo_tree):
    return unified.evaluate("efficientnet_lite0", photo_tree, shard_size=5, layer_images=0)


@pytest.fixture()
def two_cpu_ray():
    ray = pytest.importorskip("ray", reason="the Ray tests need the [ray] extra")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.lite0
@pytest.mark.ray
def test_ray_equals_local_to_the_last_digit(photo_tree, local_report, two_cpu_ray) -> None:
    report = unified.evaluate("efficientnet_lite0", photo_tree, shard_size=5, layer_images=0, executor="ray")
    assert report.executor == "ray" and local_report.executor == "local"
    assert report.images == 24 and report.labelled_images == 24 and len(report.skipped) == 1
    assert report.to_json(timings=False) == local_report.to_json(timings=False)
    assert [b.label for b in report.backends] == ["ort", "rknn", "tengine"]
    assert report.reference_top1_accuracy == 1.0     # labelled with fp32's own decisions
    assert all(b.top1_accuracy == b.top1_agreement for b in report.backends)
    assert len({w.split(":")[1] for w in report.shard_workers}) >= 1 and os.getpid() not in \
        {int(w.split(":")[1]) for w in report.shard_workers}   # the shards ran on Ray's workers


def _shard_worker_pids() -> list[int]:
    """Ray worker processes busy with a shard (Ray titles a busy worker after its task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::_ray_shard"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.lite0
@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's workers through /proc")
def test_a_worker_killed_mid_shard_is_retried(photo_tree, local_report, two_cpu_ray) -> None:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = unified.evaluate("efficientnet_lite0", photo_tree, shard_size=5, layer_images=0,
                                                 executor="ray")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        busy = _shard_worker_pids()
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    thread.join(300)
    assert killed is not None, "no worker was seen running a shard"
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert killed not in {int(w.split(":")[1]) for w in report.shard_workers}   # its shard ran again elsewhere
    assert report.images == 24 and report.to_json(timings=False) == local_report.to_json(timings=False)
