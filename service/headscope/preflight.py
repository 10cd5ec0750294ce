"""Artifact checks that run before `headscope serve` imports anything heavy.

Importing torch and NLTK costs seconds of CPU, so without these checks a truncated weight file
or a tampered probe run would stop the server only after that. With the standard library alone
they find, in about a second, the failures that need no model to see: a safetensors file that is
cut short or not safetensors at all, and a probe run whose artifacts are missing or do not match
the sha256 in its manifest. Each raises StartupError naming the file.

They are never stricter than the loader (runtime/loading.py, runtime/probes/): they look only at
the files the loader would read, and anything they do not recognise is left for the loader to
judge. Missing files are the loader's to report too, in its own words.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from headscope.errors import StartupError
from headscope.model.loading import sha256_of_files
from headscope.settings import Settings

# The loader's choice of weight files (runtime/loading.py): the first single file present, else
# the shards of an index.
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# The probe store's layout (runtime/probes/store.py).
PROBE_MANIFEST = "manifest.json"
PROBE_FORMAT = "headscope-probes/1"


def check_artifacts(settings: Settings) -> None:
    directory = Path(settings.model).expanduser()
    if not directory.is_dir():
        return  # a hub id, or missing: the loader downloads or reports it
    weights = _weight_files(directory)
    for path in weights:
        if path.suffix == ".safetensors":
            check_safetensors(path)
    if weights and not settings.allow_missing_probes:
        _check_probe_run(settings, sha256_of_files(weights))


def check_safetensors(path: Path) -> None:
    """The file is a complete safetensors file: a JSON header, then exactly the data it lists."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if header_size is None or header_size > size - 8 or header_size > 100 << 20:
            raise _not_safetensors(path, "no safetensors header")
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            raise _not_safetensors(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + header_size + max(ends, default=0)
    if expected != size:
        raise StartupError(
            f"'{path}' is truncated or corrupt: it is {size} bytes, its header describes "
            f"{expected}. Download or copy it again."
        )


def _not_safetensors(path: Path, why: str) -> StartupError:
    return StartupError(f"'{path}' is not a safetensors file ({why}); it was not loaded.")


def _weight_files(directory: Path) -> list[Path]:
    for name in SINGLE_WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    for name in SHARD_INDEX_FILES:
        index = directory / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return []
            paths = [directory / shard for shard in shards]
            return paths if all(path.is_file() for path in paths) else []
    return []


def _read_manifest(run: Path) -> dict | None:
    try:
        manifest = json.loads((run / PROBE_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != PROBE_FORMAT:
        return None
    return manifest


def _newest_matching_run(store: Path, fingerprint: str) -> Path | None:
    """The run the loader picks from the store: the newest whose model fingerprint matches."""
    if not store.is_dir():
        return None
    candidates = []
    for child in store.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        manifest = _read_manifest(child) or {}
        model = manifest.get("model")
        if not isinstance(model, dict) or model.get("weights_sha256") != fingerprint:
            continue
        candidates.append((str(manifest.get("created")), str(manifest.get("run_id")), child))
    return max(candidates)[2] if candidates else None


def _check_probe_run(settings: Settings, fingerprint: str) -> None:
    if settings.probes is not None:
        run = Path(settings.probes)
        if not run.is_dir():
            return  # the loader names it
        if _read_manifest(run) is None:
            raise StartupError(
                f"Probe run '{run}' failed the manifest check: {PROBE_MANIFEST} is missing, "
                "not JSON, or not a headscope probe manifest."
            )
    else:
        newest = _newest_matching_run(Path(settings.store), fingerprint)
        if newest is None:
            return
        run = newest
    artifacts = (_read_manifest(run) or {}).get("artifacts")
    if not isinstance(artifacts, dict):
        return
    for name, entry in artifacts.items():
        path = run / str(name)
        if Path(str(name)).name != name or not isinstance(entry, dict) or not path.is_file():
            continue  # the loader's artifact check names these
        actual = sha256_of_files([path])
        if actual != entry.get("sha256"):
            raise StartupError(
                f"Probe run '{run}' failed the sha256 check: {name} has sha256 {actual[:16]}…, "
                f"the manifest says {str(entry.get('sha256'))[:16]}… (the file was changed or "
                "corrupted). Fix or remove the run, or start with --allow-missing-probes."
            )
        if path.suffix == ".safetensors":
            try:
                check_safetensors(path)
            except StartupError as err:
                raise StartupError(f"Probe run '{run}' failed the contents check: {err}") from err
