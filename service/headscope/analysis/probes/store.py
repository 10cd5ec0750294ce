"""The probe store: one run per folder, weights in safetensors (a format that cannot run code
when read), a manifest.json that records how the run was made and every metric, and the sha256
of each artifact. `load_probe_run` verifies a run before anything uses it; `ProbeRun` serves it.

    models_store/<run_id>/
        manifest.json        run id, created, model fingerprint, tokenizer + tagger identity,
                             corpus sha256, split, tags, vectors, libraries, metrics, artifacts,
                             and manifest_sha256 over all of that
        probes.safetensors   "<vector>.coef" [layer, head, tag, d_head] and
                             "<vector>.intercept" [layer, head, tag], float32
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headscope.errors import InvalidRequest, StartupError, UnknownHead
from headscope.model.probe_fit import softmax_probabilities

log = logging.getLogger("headscope.probes")

MANIFEST = "manifest.json"
WEIGHTS = "probes.safetensors"
FORMAT = "headscope-probes/1"
# Only formats whose readers never execute code: no pickle, no joblib, no torch.load.
SAFE_SUFFIXES = (".safetensors",)
METRICS = ("f1", "precision", "recall", "selectivity")
OVERALL_TAGS = ("accuracy", "macro", "weighted")


class ProbeRunError(StartupError):
    """A probe run failed one of the checks; `check` names which."""

    def __init__(self, directory: Path | str, check: str, message: str) -> None:
        super().__init__(f"Probe run '{directory}' failed the {check} check: {message}")
        self.directory = str(directory)
        self.check = check


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ProbeRunError(directory, "manifest", f"{MANIFEST} is missing") from err
    except (OSError, ValueError) as err:
        raise ProbeRunError(
            directory, "manifest", f"{MANIFEST} is not readable JSON: {err}"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ProbeRunError(directory, "manifest", f"format is {found!r}, expected {FORMAT!r}")
    missing = [
        key
        for key in ("run_id", "created", "model", "vectors", "tags", "artifacts", "metrics")
        if key not in manifest
    ]
    if missing:
        raise ProbeRunError(directory, "manifest", f"missing keys: {', '.join(missing)}")
    malformed = [
        key
        for key, kind in (("model", dict), ("artifacts", dict), ("metrics", dict), ("tags", list))
        if not isinstance(manifest[key], kind)
    ]
    if malformed:
        raise ProbeRunError(directory, "manifest", f"malformed keys: {', '.join(malformed)}")
    return manifest


# An innermost JSON list of numbers or booleans, as json.dumps(indent=1) spreads it over lines.
_FLAT_LIST = re.compile(
    r"\[\s+((?:[-+0-9.eE]+|true|false|null)(?:,\s+(?:[-+0-9.eE]+|true|false|null))*)\s+\]"
)


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The hash over the manifest's own content (every key but the hash itself, canonical JSON):
    metrics and tags edited by hand or corrupted on disk no longer match it. Like the artifact
    hashes it catches change, not a forger who recomputes it."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _manifest_text(manifest: dict[str, Any]) -> str:
    """Indented JSON with each row of numbers on one line: readable, and a third the size."""
    text = json.dumps(manifest, indent=1)
    return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text) + "\n"


def save_run(directory: Path, manifest: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write a run atomically: into a hidden sibling folder first, renamed when complete, so a
    crash never leaves a half-written run that the server could pick."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"'{directory}' exists and is not empty; choose another --out")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.parent / f".{directory.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file(
        {name: np.ascontiguousarray(array) for name, array in tensors.items()},
        str(partial / WEIGHTS),
        metadata={"format": FORMAT, "run_id": manifest["run_id"]},
    )
    artifact = partial / WEIGHTS
    manifest = {
        **manifest,
        "artifacts": {WEIGHTS: {"sha256": sha256_file(artifact), "bytes": artifact.stat().st_size}},
    }
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    (partial / MANIFEST).write_text(_manifest_text(manifest))
    if directory.exists():
        directory.rmdir()
    os.replace(partial, directory)
    return directory


def _check_artifacts(directory: Path, manifest: dict[str, Any]) -> None:
    artifacts = manifest["artifacts"]
    if not isinstance(artifacts, dict) or WEIGHTS not in artifacts:
        raise ProbeRunError(directory, "artifact", f"the manifest lists no {WEIGHTS}")
    for name, entry in artifacts.items():
        if Path(name).name != name or not name.endswith(SAFE_SUFFIXES):
            raise ProbeRunError(
                directory, "artifact", f"'{name}' is not a plain {'/'.join(SAFE_SUFFIXES)} file"
            )
        path = directory / name
        if not path.is_file():
            raise ProbeRunError(directory, "artifact", f"{name} is missing")
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            raise ProbeRunError(
                directory,
                "sha256",
                f"{name} has sha256 {actual[:16]}…, the manifest says "
                f"{str(entry.get('sha256'))[:16]}… (the file was changed or corrupted)",
            )


def load_probe_run(directory: Path | str, *, expected_fingerprint: str | None) -> ProbeRun:
    """Verify and load a run: manifest, artifact hashes, model fingerprint (when given), tensors.
    Raises ProbeRunError naming the check that failed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise ProbeRunError(directory, "folder", "no such folder")
    manifest = read_manifest(directory)
    recorded = manifest.get("manifest_sha256")
    if recorded != manifest_sha256(manifest):
        problem = "records no manifest_sha256" if recorded is None else "does not match its hash"
        raise ProbeRunError(
            directory,
            "manifest sha256",
            f"{MANIFEST} {problem} (its metrics or tags were changed; train the run again)",
        )
    _check_artifacts(directory, manifest)
    fingerprint = manifest["model"].get("weights_sha256")
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise ProbeRunError(
            directory,
            "model fingerprint",
            f"the run was trained on weights sha256 {str(fingerprint)[:12]}… "
            f"({manifest['model'].get('id')}), the loaded model's is {expected_fingerprint[:12]}…",
        )
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ProbeRunError(directory, "contents", f"{WEIGHTS} is not readable: {err}") from err
    try:
        return ProbeRun(directory, manifest, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ProbeRunError(directory, "manifest", f"missing or malformed field {err}") from err


@dataclass(frozen=True)
class StoredRun:
    directory: Path
    run_id: str
    created: str
    fingerprint: str | None


def list_runs(store: Path | str) -> list[StoredRun]:
    """Runs in the store, newest first; folders whose manifest cannot be read are skipped."""
    store = Path(store)
    if not store.is_dir():
        return []
    runs = []
    for child in store.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            manifest = read_manifest(child)
        except ProbeRunError as err:
            if (child / MANIFEST).exists():
                log.warning("Skipping %s", err)
            continue
        runs.append(
            StoredRun(
                child,
                str(manifest["run_id"]),
                str(manifest["created"]),
                manifest["model"].get("weights_sha256"),
            )
        )
    return sorted(runs, key=lambda run: (run.created, run.run_id), reverse=True)


class ProbeRun:
    """A verified probe run: F1 grids and per-token predictions for every (layer, head, vector)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], tensors: dict[str, np.ndarray]):
        self.directory = Path(directory)
        self.manifest = manifest
        self.run_id: str = manifest["run_id"]
        self.vectors: list[str] = list(manifest["vectors"])
        self.tags: list[str] = list(manifest["tags"])
        model = manifest["model"]
        self.n_layers, self.n_heads, self.d_head = (
            int(model["n_layers"]),
            int(model["n_heads"]),
            int(model["d_head"]),
        )
        shapes = {
            "coef": (self.n_layers, self.n_heads, len(self.tags), self.d_head),
            "intercept": (self.n_layers, self.n_heads, len(self.tags)),
        }
        self._coef: dict[str, np.ndarray] = {}
        self._intercept: dict[str, np.ndarray] = {}
        for vector in self.vectors:
            for part, shape in shapes.items():
                array = tensors.get(f"{vector}.{part}")
                if array is None or array.shape != shape:
                    found = None if array is None else array.shape
                    raise ProbeRunError(
                        directory,
                        "contents",
                        f"{vector}.{part} has shape {found}, expected {shape}",
                    )
            self._coef[vector] = tensors[f"{vector}.coef"]
            self._intercept[vector] = tensors[f"{vector}.intercept"]
        self._metrics = manifest["metrics"]
        self._support = {tag: int(n) for tag, n in self._metrics["support"].items()}

    @property
    def model_fingerprint(self) -> str:
        return self.manifest["model"]["weights_sha256"]

    def check_vector(self, vector: str) -> None:
        """Raise InvalidRequest unless the run has probes for `vector`."""
        if vector not in self.vectors:
            raise InvalidRequest(
                f"unknown vector '{vector}'; this run has {', '.join(self.vectors)}",
                detail={"vector": vector, "allowed": self.vectors},
            )

    def scores(self, vector: str, tag: str, metric: str) -> tuple[np.ndarray, int | None]:
        """[layer, head] grid of `metric` for `tag`, and the tag's test support (None for the
        overall figures). `tag` may be accuracy, macro or weighted; for accuracy every metric but
        selectivity is the accuracy (micro averages). Selectivity = score − control-task score:
        accuracy for `accuracy` (Hewitt & Liang), F1 otherwise."""
        self.check_vector(vector)
        if metric not in METRICS:
            raise InvalidRequest(
                f"unknown metric '{metric}'; use one of {', '.join(METRICS)}",
                detail={"metric": metric, "allowed": list(METRICS)},
            )
        if tag not in self.tags and tag not in OVERALL_TAGS:
            raise InvalidRequest(
                f"unknown tag '{tag}'; this run has {', '.join(self.tags)} "
                f"(or {', '.join(OVERALL_TAGS)})",
                detail={"tag": tag, "allowed": [*OVERALL_TAGS, *self.tags]},
            )
        grids = self._metrics["vectors"][vector]
        control = grids.get("control")
        if metric == "selectivity" and control is None:
            raise InvalidRequest(
                "this run was trained without the control task, so it has no selectivity",
                detail={"metric": metric},
            )
        if tag == "accuracy":
            grid = grids["selectivity"] if metric == "selectivity" else grids["accuracy"]
            return np.asarray(grid, dtype=np.float64), None
        if tag in ("macro", "weighted"):
            if metric == "selectivity":
                grid = np.asarray(grids[tag]["f1"]) - np.asarray(control[f"{tag}_f1"])
            else:
                grid = grids[tag][metric]
            return np.asarray(grid, dtype=np.float64), None
        if metric == "selectivity":
            grid = np.asarray(grids["per_tag"][tag]["f1"]) - np.asarray(control["per_tag_f1"][tag])
        else:
            grid = grids["per_tag"][tag][metric]
        return np.asarray(grid, dtype=np.float64), self._support.get(tag, 0)

    def predict_proba(self, features: np.ndarray, vector: str, layer: int, head: int) -> np.ndarray:
        """features [token, d_head] -> probabilities [token, tag], tags in the order of `tags`."""
        self.check_vector(vector)
        if not 0 <= layer < self.n_layers:
            raise UnknownHead(
                f"layer {layer} does not exist; layers are 0..{self.n_layers - 1}",
                detail={"layer": layer},
            )
        if not 0 <= head < self.n_heads:
            raise UnknownHead(
                f"head {head} does not exist; heads are 0..{self.n_heads - 1}",
                detail={"head": head},
            )
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.d_head:
            raise InvalidRequest(
                f"features must have shape [tokens, {self.d_head}], got {list(features.shape)}"
            )
        return softmax_probabilities(
            features, self._coef[vector][layer, head], self._intercept[vector][layer, head]
        )
