"""The engine stops between layers once its analysis' stop event is set."""

from __future__ import annotations

import threading

import pytest
import torch

from headscope.model.stopping import AnalysisStopped, stoppable


def test_a_set_stop_event_ends_the_forward_pass_between_layers(runtime, monkeypatch):
    engine = runtime.engine
    input_ids = torch.tensor([runtime.encode("Tom saw a big red ball.").ids])
    layers_run: list[int] = []
    stop = threading.Event()
    original = torch.nn.functional.layer_norm

    def counting_layer_norm(*args, **kwargs):
        layers_run.append(1)
        if len(layers_run) == 4:  # partway through the second block: stop before the third
            stop.set()
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", counting_layer_norm)
    with stoppable(stop), pytest.raises(AnalysisStopped, match="before L2"):
        engine.run(input_ids, backend="reference")
    assert len(layers_run) == 4  # two blocks' LayerNorms, then nothing more

    with stoppable(threading.Event()):  # an event never set changes nothing
        output = engine.run(input_ids, backend="reference")
    assert output.activity.shape[1] == runtime.geometry.n_layers
