"""Which probe run the server loads at startup, and what happens when none fits.

1. `--probes DIR` (HEADSCOPE_PROBES): that run, verified.
2. Otherwise the newest run in `--store` whose model fingerprint equals the loaded model's.
3. None there: train the default run into the store (progress in the log) and load it
   (`--no-train-probes-if-missing`, or no corpus to train on: start without probes, saying how
   to train them).

A run that fails verification (manifest, sha256 of an artifact, model fingerprint, contents)
stops the server with a message naming the check, unless `--allow-missing-probes`: then the
server starts, `/readyz` reports probes unavailable and probe endpoints answer 503 with the
reason.
"""

from __future__ import annotations

import logging

from headscope.analysis.probes.store import ProbeRun, ProbeRunError, list_runs, load_probe_run
from headscope.errors import StartupError
from headscope.settings import Settings

log = logging.getLogger("headscope.probes")

HOW_TO_TRAIN = (
    "Train a run with: headscope probes train --model MODEL --corpus PATH --store STORE "
    "(or start the server with --train-probes-if-missing, the default)."
)


def attach_probes(runtime, settings: Settings) -> None:
    """Set runtime.probes (a verified ProbeRun or None) and runtime.probes_reason."""
    try:
        run, reason = _choose_run(runtime, settings)
    except StartupError as err:
        if not settings.allow_missing_probes:
            fix = (
                "Fix or remove the run, or start" if isinstance(err, ProbeRunError) else "Or start"
            )
            raise StartupError(
                f"{err} {fix} with --allow-missing-probes (HEADSCOPE_ALLOW_MISSING_PROBES=1) to "
                "serve without probes."
            ) from err
        # The full message (with file paths) goes to the log; HTTP bodies get no server paths.
        log.warning("Starting without probes: %s", err)
        check = f"the {err.check} check" if isinstance(err, ProbeRunError) else "loading"
        run, reason = None, f"Probes unavailable: the probe run failed {check}; see the server log."
    runtime.probes = run
    runtime.probes_reason = reason
    if run is None:
        log.warning("%s", reason)
    else:
        log.info(
            "Loaded probe run %s from %s (%s; %d tags)",
            run.run_id,
            run.directory,
            ", ".join(run.vectors),
            len(run.tags),
        )


def _choose_run(runtime, settings: Settings) -> tuple[ProbeRun | None, str | None]:
    fingerprint = runtime.weights_sha256
    if settings.probes is not None:
        return load_probe_run(settings.probes, expected_fingerprint=fingerprint), None
    runs = list_runs(settings.store)
    matching = [run for run in runs if run.fingerprint == fingerprint]
    if matching:
        newest = matching[0]
        log.info("Newest probe run for this model in %s: %s", settings.store, newest.run_id)
        return load_probe_run(newest.directory, expected_fingerprint=fingerprint), None
    if settings.train_probes_if_missing:
        from headscope.analysis.corpus_text import load_corpus

        try:
            corpus = load_corpus(settings.corpus)
        except StartupError as err:  # serve the model; say why there are no probes
            log.warning("No probe run for this model, and none trained at start: %s", err)
            return None, (
                f"No probe run for this model (weights sha256 {fingerprint[:12]}…), and none "
                "could be trained at start: no corpus to train on (offline, or the file is "
                f"missing). Pass --corpus PATH (HEADSCOPE_CORPUS). {HOW_TO_TRAIN}"
            )
        return _train_default_run(runtime, settings, corpus), None
    others = f" ({len(runs)} run(s) there are for other models)" if runs else ""
    log.info("No probe run for this model in '%s'", settings.store)
    reason = (
        f"No probe run for this model (weights sha256 {fingerprint[:12]}…) in the probe store "
        f"(HEADSCOPE_STORE){others}. " + HOW_TO_TRAIN
    )
    return None, reason


def _train_default_run(runtime, settings: Settings, corpus) -> ProbeRun:
    from headscope.analysis.probes.pipeline import TrainConfig, log_progress, train_probe_run

    config = TrainConfig(max_sequences=settings.probes_max_sequences)
    log.info(
        "No probe run for this model in '%s': training one (%s sequences per split, corpus %s)",
        settings.store,
        config.max_sequences,
        settings.corpus or "TinyStories validation split from the hub",
    )
    try:
        trained = train_probe_run(
            runtime, corpus, config, store=settings.store, progress=log_progress(log)
        )
    except (OSError, ValueError) as err:
        raise StartupError(f"Training probes at startup failed: {err}") from err
    return load_probe_run(trained.directory, expected_fingerprint=runtime.weights_sha256)
