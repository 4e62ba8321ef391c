"""Saved models are untrusted input: caps, one digest, validated values, safe names, careful writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import unified
from unified.core.saved_model import manifest_digest

PRE16 = unified.Preprocess(resize=16, crop=16)


@pytest.fixture(scope="module")
def saved(tiny_model, tiny_calibration, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "tiny.uqm"
    unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                     quantized_algorithm="normal").save(path)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _edited(saved: Path, tmp_path: Path, edit, resign: bool = True) -> Path:
    """A copy whose manifest `edit` changed; `resign` recomputes the digest as a forger would."""
    members = _members(saved)
    manifest = json.loads(members["manifest.json"])
    replaced = edit(manifest)
    manifest = manifest if replaced is None else replaced
    if resign and isinstance(manifest, dict):
        manifest["digest"] = manifest_digest(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    return _write(tmp_path / "edited.uqm", members)


def test_a_blob_bomb_is_refused_early_and_cheaply(saved, tmp_path) -> None:
    members = _members(saved)
    members["blobs/arrays.npz"] = bytes(300 * 2**20)  # 300 MB of zeros, a few hundred KB compressed
    bomb = _write(tmp_path / "bomb.uqm", members)
    assert bomb.stat().st_size < 2 * 2**20
    tracemalloc.start()
    with pytest.raises(unified.SavedModelError, match="arrays.npz.*(declares|inflates beyond)"):
        unified.load(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, peak


def test_a_manifest_bomb_is_refused(saved, tmp_path) -> None:
    members = _members(saved)
    members["manifest.json"] = b" " * (64 * 2**20)
    with pytest.raises(unified.SavedModelError, match="manifest.json.*limit"):
        unified.load(_write(tmp_path / "bomb.uqm", members))


def test_the_load_limit_can_be_raised(saved) -> None:
    with pytest.raises(unified.SavedModelError, match="over the load limit of 1000.*max_bytes"):
        unified.load(saved, max_bytes=1000)
    assert unified.load(saved, max_bytes=10**9).backend == "rknn"


@pytest.mark.parametrize("value", [0.0, -1.0, "NaN", "Infinity"])
def test_an_edited_scale_breaks_the_digest(saved, tmp_path, value) -> None:
    def edit(m):
        name = next(iter(m["artifact"]["graph"]["tensors"]))
        m["artifact"]["graph"]["tensors"][name][0] = float(value)
    with pytest.raises(unified.SavedModelError, match="does not match its digest"):
        unified.load(_edited(saved, tmp_path, edit, resign=False))


@pytest.mark.parametrize("value, message", [(0.0, "scale 0.0"), (-1.0, "scale -1.0"), (float("nan"), "scale nan"),
                                            (float("inf"), "scale inf")])
def test_a_resigned_bad_scale_is_refused_by_validation(saved, tmp_path, value, message) -> None:
    def edit(m):
        m["artifact"]["graph"]["tensors"]["input"][0] = value
    with pytest.raises(unified.SavedModelError, match=f"tensor 'input' has {message}"):
        unified.load(_edited(saved, tmp_path, edit))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["artifact"]["graph"]["tensors"]["input"].__setitem__(1, 1000), "zero point 1000, outside int8"),
    (lambda m: m["artifact"]["graph"]["nodes"][0].__setitem__("op", "conv9000"), "unknown kernel 'conv9000'"),
    (lambda m: m["artifact"]["graph"]["nodes"][1]["inputs"].__setitem__(0, "ghost"), "reads tensor 'ghost'"),
    (lambda m: m["artifact"]["graph"]["nodes"][0]["attrs"].__setitem__("group", 0), "group=0"),
    (lambda m: m.__setitem__("options", []), "field 'options' must be a dict"),
    (lambda m: list(m), "manifest is a JSON list"),
])
def test_resigned_bad_values_are_refused_naming_them(saved, tmp_path, edit, message) -> None:
    with pytest.raises(unified.SavedModelError, match=message):
        unified.load(_edited(saved, tmp_path, edit))


def test_member_names_are_safe_even_for_hostile_node_names(tiny_calibration, tiny_batch, tmp_path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("LpNormalization", ["c"], ["out"], name="../../../../outside/x", axis=1)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])], [w])
    qm = unified.quantize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), backend="tengine",
                          calibration=tiny_calibration, preprocess=PRE16, rounding="nearest")
    assert list(qm.float_nodes) == ["../../../../outside/x"]
    qm.save(tmp_path / "m.uqm")
    names = zipfile.ZipFile(tmp_path / "m.uqm").namelist()
    assert all(".." not in n and not n.startswith("/") for n in names), names
    np.testing.assert_array_equal(unified.load(tmp_path / "m.uqm").run(tiny_batch), qm.run(tiny_batch))
    members = _members(tmp_path / "m.uqm")
    members["blobs/../escape"] = b"x"
    with pytest.raises(unified.SavedModelError, match="unexpected member name 'blobs/../escape'"):
        unified.load(_write(tmp_path / "evil.uqm", members))


def test_saving_honours_umask_and_existing_mode(tiny_model, tmp_path) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    old = os.umask(0o027)
    try:
        qm.save(tmp_path / "new.uqm")
    finally:
        os.umask(old)
    assert (tmp_path / "new.uqm").stat().st_mode & 0o777 == 0o640
    existing = tmp_path / "existing.uqm"
    existing.write_bytes(b"old")
    existing.chmod(0o604)
    qm.save(existing)
    assert existing.stat().st_mode & 0o777 == 0o604 and unified.load(existing).backend == "ort"


def test_partials_orphaned_by_a_killed_save_are_cleaned(tiny_model, tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".m.uqm.{dead.stdout.strip()}.abcd.partial"
    orphan.write_bytes(b"half a model")
    unified.quantize(tiny_model, backend="ort", mode="fp32").save(tmp_path / "m.uqm")
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.uqm"]


def test_a_damaged_cache_entry_is_rebuilt(tiny_model, tmp_path, monkeypatch) -> None:
    from unified.core import api
    from unified.graph.onnx_model import fingerprint
    from unified.inputs.model_source import resolve_model

    monkeypatch.setenv("UNIFIED_CACHE_DIR", str(tmp_path))
    source = resolve_model(tiny_model, PRE16)
    entry = api._cache_path(fingerprint(source.proto), "ort", "static", {}, PRE16)
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(b"this is not a zip file")
    qm = unified.quantize(tiny_model, backend="ort", preprocess=PRE16)
    assert qm.mode == "static" and zipfile.is_zipfile(entry)


def test_a_saved_model_given_as_a_float_model_is_named(saved) -> None:
    with pytest.raises(unified.ModelError, match="is a saved quantized model, not a float model"):
        unified.quantize(str(saved), backend="ort", mode="fp32")


def test_fuzzed_files_raise_only_saved_model_errors_and_never_run_tampered(saved, tmp_path, tiny_batch) -> None:
    """A seeded mutation loop: flipped bytes, truncations, edited JSON values, inflated members,
    odd names. Every outcome is a SavedModelError, or a model whose outputs are the original's; an
    edit re-signed with a recomputed digest (a forger, which a digest cannot stop) may load, but
    only with valid values, and still raises nothing else."""
    original = saved.read_bytes()
    reference = unified.load(saved).run(tiny_batch)
    rng = np.random.default_rng(0)
    members = _members(saved)
    outcomes = {"refused": 0, "identical": 0}
    for trial in range(150):
        kind, forged = trial % 5, False
        if kind == 0:  # flipped bytes anywhere
            data = bytearray(original)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] ^= int(rng.integers(1, 256))
            blob = bytes(data)
        elif kind == 1:  # truncation
            blob = original[: int(rng.integers(0, len(original)))]
        elif kind == 2:  # an edited JSON value
            manifest = json.loads(members["manifest.json"])
            tensors = manifest["artifact"]["graph"]["tensors"]
            name = list(tensors)[int(rng.integers(0, len(tensors)))]
            tensors[name][int(rng.integers(0, 2))] = [0, -3, 1e300, "x", None, 2**40][int(rng.integers(0, 6))]
            if rng.random() < 0.5:
                manifest["digest"] = manifest_digest(manifest)
                forged = True
            blob = _write(tmp_path / "f.uqm", dict(members, **{"manifest.json": json.dumps(manifest).encode()})).read_bytes()
        elif kind == 3:  # an inflated member
            name = list(members)[int(rng.integers(0, len(members)))]
            blob = _write(tmp_path / "f.uqm", dict(members, **{name: bytes(int(rng.integers(1, 40)) * 2**20)})).read_bytes()
        else:  # an odd member name
            odd = ["../x", "/abs", "blobs/../../x", "blobs/a\\\\b", "blobs/" + "a" * 300][int(rng.integers(0, 5))]
            blob = _write(tmp_path / "f.uqm", dict(members, **{odd: b"x"})).read_bytes()
        path = tmp_path / f"fuzz{trial}.uqm"
        path.write_bytes(blob)
        del blob
        tracemalloc.start()
        try:
            qm = unified.load(path)
        except unified.SavedModelError:
            outcomes["refused"] += 1
            continue
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 64 * 2**20, (trial, kind, peak)  # whatever a member claims to inflate to
        if forged:
            assert all(np.isfinite(t.scale) and t.scale > 0 for t in qm.artifact.graph.tensors.values())
            outcomes["forged"] = outcomes.get("forged", 0) + 1
            continue
        np.testing.assert_array_equal(qm.run(tiny_batch), reference)  # accepted only if untouched in effect
        outcomes["identical"] += 1
    assert outcomes["refused"] >= 120, outcomes
