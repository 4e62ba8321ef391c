"""The one-file format of a quantized model: a zip of a JSON manifest plus the backend's blobs.

No pickle anywhere: the manifest is JSON, blobs are bytes the backend itself parses (ONNX
protobufs, .npy arrays). Each blob's SHA-256 is in the manifest, so truncation (zip CRC) and
tampering (hash mismatch) are both caught before any backend code sees the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from unified.core.errors import SavedModelError
from unified.core.paths import atomic_write

FORMAT_NAME = "unified-quantized-model"
FORMAT_VERSION = 1


def write_container(path: str | os.PathLike, manifest: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Write atomically: the destination either holds the whole file or is left as it was."""
    manifest = dict(manifest, format=FORMAT_NAME, version=FORMAT_VERSION,
                    files={name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()})
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            for name, data in blobs.items():
                zf.writestr(f"blobs/{name}", data)


def read_container(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    p = Path(path)
    if not p.exists():
        raise SavedModelError(f"saved model not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            if manifest.get("format") != FORMAT_NAME:
                raise SavedModelError(f"{p} is not a unified quantized model (format {manifest.get('format')!r})")
            if manifest.get("version") != FORMAT_VERSION:
                raise SavedModelError(f"{p}: unsupported format version {manifest.get('version')!r}")
            blobs = {}
            for name, digest in manifest["files"].items():
                data = zf.read(f"blobs/{name}")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SavedModelError(f"{p}: blob {name!r} does not match its checksum (file tampered with)")
                blobs[name] = data
    except SavedModelError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SavedModelError(f"{p} is truncated or corrupt: {exc}") from exc
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{p} is damaged (missing or unreadable part: {exc})") from exc
    return manifest, blobs
