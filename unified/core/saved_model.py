"""The one-file format of a quantized model: a zip of a JSON manifest plus the backend's blobs.

A `.uqm` file is shared like a model-zoo file, so reading it treats it as untrusted input:

* No pickle anywhere: the manifest is JSON, blobs are bytes the backend itself parses (ONNX
  protobufs, .npy arrays read with `allow_pickle=False`).
* Size caps: the manifest member may inflate to at most `MAX_MANIFEST_BYTES`; every blob to at
  most the size its manifest entry declares, and all of them together to at most `max_bytes`
  (default `DEFAULT_MAX_BYTES`, raised with `unified.load(path, max_bytes=...)` or
  `UNIFIED_MAX_LOAD_BYTES`). Members are read in chunks and the read stops the moment a cap is
  passed, so a zip bomb costs a few megabytes, not gigabytes.
* One digest: SHA-256 over the canonical manifest, which holds each blob's SHA-256, so editing any
  value or any byte is detected. It protects against accidents and tampering in transit; it does
  not stop a forger who rewrites the file and recomputes the digest (that needs a signature).
* Member names are `blobs/<name>` with names made of letters, digits and `._-/` and no `..`, no
  absolute paths: a naive unzip of a shared file cannot write outside its folder.
* The manifest's shape is checked here (`check_manifest`); each backend validates its own part
  when it restores the artifact. Every problem is a `SavedModelError` naming the file and value.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from unified.core.errors import SavedModelError
from unified.core.paths import atomic_write

FORMAT_NAME = "unified-quantized-model"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20
DEFAULT_MAX_BYTES = 2 * 2**30
CHUNK = 1 << 20
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def max_load_bytes() -> int:
    return int(os.environ.get("UNIFIED_MAX_LOAD_BYTES", DEFAULT_MAX_BYTES))


def safe_blob_name(name: str) -> bool:
    return bool(SAFE_NAME.match(name)) and ".." not in name.split("/") and len(name) <= 200


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its digest, serialized canonically (sorted keys)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def container_bytes(manifest: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    """The whole `.uqm` file as bytes (what `write_container` writes; what Ray ships to workers)."""
    for name in blobs:
        if not safe_blob_name(name):
            raise SavedModelError(f"blob name {name!r} is not a safe member name")
    manifest = dict(manifest, format=FORMAT_NAME, version=FORMAT_VERSION,
                    files={name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                           for name, data in blobs.items()})
    manifest["digest"] = manifest_digest(manifest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in blobs.items():
            zf.writestr(f"blobs/{name}", data)
    return buffer.getvalue()


def write_container(path: str | os.PathLike, manifest: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Write atomically: the destination either holds the whole file or is left as it was."""
    data = container_bytes(manifest, blobs)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def _read_capped(zf: zipfile.ZipFile, member: str, cap: int, p: Path) -> bytes:
    """A member's bytes, refusing as soon as it inflates beyond `cap` (whatever its header claims)."""
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise SavedModelError(f"{p}: member {member!r} is missing") from None
    if info.file_size > cap:
        raise SavedModelError(f"{p}: member {member!r} declares {info.file_size} bytes, over its limit of {cap}")
    parts, total = [], 0
    with zf.open(info) as stream:
        while True:
            chunk = stream.read(min(CHUNK, cap + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise SavedModelError(f"{p}: member {member!r} inflates beyond its limit of {cap} bytes")
            parts.append(chunk)
    return b"".join(parts)


def check_manifest(manifest: Any, p: Path) -> dict[str, Any]:
    """The shape every manifest has, whatever the backend; raises naming the bad value."""
    if not isinstance(manifest, dict):
        raise SavedModelError(f"{p}: the manifest is a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT_NAME:
        raise SavedModelError(f"{p} is not a unified quantized model (format {manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise SavedModelError(f"{p}: unsupported format version {manifest.get('version')!r} (this unified reads "
                              f"{FORMAT_VERSION}; save the model again)")
    expected = {"backend": str, "mode": str, "model_name": str, "options": dict, "preprocess": dict,
                "artifact": dict, "files": dict, "digest": str}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise SavedModelError(f"{p}: manifest field {key!r} must be a {kind.__name__}, got {manifest.get(key)!r:.80}")
    names = manifest.get("input_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SavedModelError(f"{p}: manifest field 'input_names' must be a list of names")
    rank = manifest.get("input_rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 8):
        raise SavedModelError(f"{p}: manifest field 'input_rank' must be an integer from 1 to 8, got {rank!r:.40}")
    for name, entry in manifest["files"].items():
        if not safe_blob_name(name):
            raise SavedModelError(f"{p}: blob name {name!r} is not a safe member name")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("size"), int) and entry["size"] >= 0):
            raise SavedModelError(f"{p}: manifest entry of blob {name!r} must give its sha256 and size")
    return manifest


def read_container(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    p = Path(path)
    if not p.exists():
        raise SavedModelError(f"saved model not found: {p}")
    return _read(p, p, max_bytes)


def read_container_bytes(data: bytes, label: str = "<bytes>",
                         max_bytes: int | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """`read_container` on a file's bytes, with the same checks; `label` names it in errors."""
    return _read(io.BytesIO(data), Path(label), max_bytes)


def _read(source: Any, p: Path, max_bytes: int | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    limit = max_bytes if max_bytes is not None else max_load_bytes()
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                if info.filename != MANIFEST and not (info.filename.startswith("blobs/")
                                                      and safe_blob_name(info.filename[len("blobs/"):])):
                    raise SavedModelError(f"{p}: unexpected member name {info.filename!r}")
            raw = _read_capped(zf, MANIFEST, MAX_MANIFEST_BYTES, p)
            try:
                manifest = check_manifest(json.loads(raw), p)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SavedModelError(f"{p}: the manifest is not valid JSON ({exc})") from exc
            if manifest_digest(manifest) != manifest["digest"]:
                raise SavedModelError(f"{p}: the manifest does not match its digest (file edited or damaged)")
            declared = sum(entry["size"] for entry in manifest["files"].values())
            if declared > limit:
                raise SavedModelError(f"{p}: its blobs declare {declared} bytes, over the load limit of {limit} "
                                      "(raise it with unified.load(path, max_bytes=...) or UNIFIED_MAX_LOAD_BYTES)")
            blobs = {}
            for name, entry in manifest["files"].items():
                data = _read_capped(zf, f"blobs/{name}", entry["size"], p)
                if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise SavedModelError(f"{p}: blob {name!r} does not match its checksum (file tampered with)")
                blobs[name] = data
    except SavedModelError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise SavedModelError(f"{p} is truncated or corrupt: {exc}") from exc
    return manifest, blobs
