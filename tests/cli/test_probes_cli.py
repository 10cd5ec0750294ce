"""`headscope probes train/show/plot` through the real CLI, and `headscope serve` with a probe
run: loaded when intact, refused (naming the check) when tampered."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from matplotlib.image import imread

from headscope.analysis.probes import list_runs
from headscope.analysis.probes.store import MANIFEST, WEIGHTS
from headscope.cli import main
from tests.helpers import CORPUS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_train_command_writes_a_verified_run(standin_dir, tmp_path, capsys):
    store = tmp_path / "store"
    arguments = ["probes", "train", "--model", str(standin_dir), "--corpus", str(CORPUS)]
    arguments += ["--store", str(store), "--max-sequences", "8", "--vectors", "key,value"]
    arguments += ["--torch-threads", "1"]
    arguments += ["--seed", "3", "--no-control", "--test-size", "0.3"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    [run] = list_runs(store)
    manifest = json.loads((run.directory / MANIFEST).read_text())
    assert manifest["vectors"] == ["key", "value"]
    assert manifest["split"]["seed"] == 3 and manifest["split"]["test_size"] == 0.3
    assert len(manifest["split"]["train_sequences"]) == 8
    assert manifest["metrics"]["control_task"] is None
    assert "| key |" in output and str(run.directory) in output

    assert main(["probes", "show", str(run.directory)]) == 0
    assert manifest["run_id"] in capsys.readouterr().out

    # An existing, non-empty --out is never overwritten.
    again = arguments + ["--out", str(run.directory)]
    assert main(again) == 2
    assert "not empty" in capsys.readouterr().err


def test_plot_writes_png_heatmaps(probe_run_dir, tmp_path, capsys):
    figure = tmp_path / "vbd.png"
    command = ["probes", "plot", str(probe_run_dir), "--tag", "VBD", "--vector", "key"]
    assert main([*command, "--out", str(figure)]) == 0
    assert figure.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(figure)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert np.ptp(image[..., :3]) > 0.5  # not blank

    folder = tmp_path / "all"
    all_tags = ["probes", "plot", str(probe_run_dir), "--all-tags", "--vector", "value"]
    assert main([*all_tags, "--out", str(folder)]) == 0
    [written] = folder.iterdir()
    assert written.name.endswith("-value-f1-all-tags.png")
    assert written.read_bytes()[:8] == PNG_SIGNATURE

    capsys.readouterr()
    assert main([*command[:3], "--tag", "NOPE", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown tag" in capsys.readouterr().err


def test_server_lifespan_loads_the_run_from_settings(probe_run_dir, standin_dir):
    from fastapi.testclient import TestClient

    from headscope.app import create_app
    from headscope.settings import Settings

    settings = Settings(model=str(standin_dir), probes=probe_run_dir)
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/probes").json()
        assert body["run_id"] == json.loads((probe_run_dir / MANIFEST).read_text())["run_id"]
        assert client.get("/readyz").json()["probes"] == "loaded"


def test_serve_refuses_a_tampered_run_naming_the_check(
    probe_run_dir, standin_dir, tmp_path, capsys
):
    tampered = tmp_path / "tampered"
    shutil.copytree(probe_run_dir, tampered)
    data = bytearray((tampered / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / WEIGHTS).write_bytes(bytes(data))
    # Refused while loading, before the port is bound.
    assert main(["serve", "--model", str(standin_dir), "--probes", str(tampered)]) == 2
    error = capsys.readouterr().err
    assert "failed the sha256 check" in error and WEIGHTS in error
    assert "--allow-missing-probes" in error


@pytest.mark.parametrize("bad", [["--max-sequences", "-3"], ["--vectors", "keys"]])
def test_train_refuses_bad_options(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["probes", "train", *bad])
    assert exited.value.code == 2


def test_show_lists_top_heads_per_tag_with_enough_support(probe_run_dir, capsys):
    from headscope.analysis.probes.store import load_probe_run

    assert main(["probes", "show", str(probe_run_dir), "--top", "3"]) == 0
    output = capsys.readouterr().out
    run = load_probe_run(probe_run_dir, expected_fingerprint=None)
    support = run.manifest["metrics"]["support"]
    ranked = [tag for tag in run.tags if support[tag] >= 20]
    thin = [tag for tag in run.tags if support[tag] < 20]
    assert ranked and "top 3 heads per tag" in output
    grid, _ = run.scores("key", ranked[0], "f1")
    best = int(np.argmax(grid))
    key_section = output.split("  key\n")[1]
    line = next(row for row in key_section.splitlines() if row.strip().startswith(ranked[0] + " "))
    assert f"L{best // 16}H{best % 16} {grid.max():.2f}" in line.split("): ", 1)[1].split(",")[0]
    assert len(line.split("): ", 1)[1].split(",")) == 3
    if thin:
        assert "not ranked" in output and thin[0] in output.split("not ranked")[1]


def test_plot_refuses_to_overwrite_without_force(probe_run_dir, tmp_path, capsys):
    figure = tmp_path / "macro.png"
    figure.write_bytes(b"keep")
    command = ["probes", "plot", str(probe_run_dir), "--out", str(figure)]
    assert main(command) == 2
    assert "--force" in capsys.readouterr().err and figure.read_bytes() == b"keep"
    assert main([*command, "--force"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {figure}"
    assert figure.read_bytes()[:8] == PNG_SIGNATURE
