"""`headscope serve --engine ray --replicas N`: the same FastAPI app as a Ray Serve deployment.

Each replica builds the app with `create_app(settings)` when it starts (`serve.ingress` with a
late-bound app), so its lifespan loads the model, tagger and probes once per replica, exactly as
`headscope serve` does; Ray Serve's proxy listens on HEADSCOPE_HOST:HEADSCOPE_PORT and spreads
requests over the replicas. Each replica keeps its own admission (429 with Retry-After past
max_concurrency + max_queue), and Ray Serve stops sending a replica more than that many.
"""

from __future__ import annotations

import logging
from typing import Any

from headscope.settings import Settings

log = logging.getLogger("headscope")

APP_NAME = "headscope"


def _replica_class():
    from ray import serve

    @serve.ingress()
    class HeadscopeReplica:
        def __init__(self, settings: Settings) -> None:
            self.settings = settings

        def __serve_build_asgi_app__(self):
            from headscope.app import create_app

            return create_app(self.settings)

    return HeadscopeReplica


def application(settings: Settings, replicas: int) -> Any:
    """The Ray Serve application: `replicas` copies of the app."""
    from ray import serve

    deployment = serve.deployment(
        name="HeadscopeReplica",
        num_replicas=replicas,
        max_ongoing_requests=settings.max_concurrency + settings.max_queue,
    )(_replica_class())
    return deployment.bind(settings)


def start(settings: Settings, replicas: int, address: str | None = None) -> None:
    """Deploy on the Ray cluster at `address` (or a local one on 127.0.0.1); returns once every
    replica is up."""
    from ray import serve

    from headscope.jobs.run import connect_ray

    connect_ray(address, replicas)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, replicas), name=APP_NAME, route_prefix="/")


def serve_forever(settings: Settings, replicas: int, address: str | None) -> int:
    import time

    from ray import serve

    start(settings, replicas, address)
    log.info(
        "Serving on Ray Serve at http://%s:%s with %d replicas",
        settings.host,
        settings.port,
        replicas,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
