"""`headscope serve --engine ray --replicas N`: the same FastAPI app as a Ray Serve deployment.

Each replica builds the app with `app_factory(settings)` (default `create_app`) when it starts
(`serve.ingress` with a late-bound app), so its lifespan loads the model, tagger and probes once
per replica, exactly as `headscope serve` does; Ray Serve's proxy listens on
HEADSCOPE_HOST:HEADSCOPE_PORT and spreads requests over the replicas.

Overload is answered by the replicas, not by Ray. Ray Serve's `max_ongoing_requests` is how many
requests its router sends one replica before it holds the rest in the proxy's queue
(`max_queued_requests`, unbounded by default: an unbounded wait), and a request refused by that
queue gets Ray's own text with 503 (or 429 through `BackpressureConfig`), not headscope's
envelope. So `max_ongoing_requests` is set to `max_connections`, what one `headscope serve` holds
at once, well above the analyses a replica admits (`max_concurrency + max_queue`): the router
still picks the less busy of two replicas, and a request past a replica's admission reaches
that replica's own pool, which answers 429 with Retry-After and the error envelope, the same
bytes as one `headscope serve`. The proxy queue is bounded all the same
(`max_queued_requests=max_connections`, answered 429 with Retry-After) so that nothing can wait
in it without end; it fills only when every replica already holds `max_connections` requests.

A replica that dies (killed, out of memory) with requests in flight: Ray Serve answers those
requests 500 with its own plain text (its router re-routes only requests no replica has
accepted yet; it has no setting to resend accepted ones), routes new ones to the replicas left,
and its controller starts a new replica. The retry therefore lives in the Python client: it
sends again a 500 without headscope's error envelope (the app's own 500s carry it, so that one
came from something in front that lost the server), as it does a dropped connection, so no
request is lost to the death of one replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from headscope.settings import Settings

log = logging.getLogger("headscope")

APP_NAME = "headscope"
DEPLOYMENT_NAME = "HeadscopeReplica"


def _replica_class():
    from ray import serve

    @serve.ingress()
    class HeadscopeReplica:
        def __init__(self, settings: Settings, app_factory: Callable[[Settings], Any]) -> None:
            self.settings = settings
            self.app_factory = app_factory

        def __serve_build_asgi_app__(self):
            return self.app_factory(self.settings)

    return HeadscopeReplica


def application(
    settings: Settings, replicas: int, app_factory: Callable[[Settings], Any] | None = None
) -> Any:
    """The Ray Serve application: `replicas` copies of the app `app_factory` builds (tests pass
    a factory that wraps the analysis; by default `create_app`)."""
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from headscope.analysis.pool import RETRY_AFTER_SECONDS

    if app_factory is None:
        from headscope.app import create_app

        app_factory = create_app
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=replicas,
        max_ongoing_requests=settings.max_connections,
        max_queued_requests=settings.max_connections,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=RETRY_AFTER_SECONDS),
    )(_replica_class())
    return deployment.bind(settings, app_factory)


def start(
    settings: Settings,
    replicas: int,
    address: str | None = None,
    app_factory: Callable[[Settings], Any] | None = None,
) -> None:
    """Deploy on the Ray cluster at `address` (or a local one on 127.0.0.1); returns once every
    replica is up."""
    from ray import serve

    from headscope.jobs.run import connect_ray

    connect_ray(address, replicas)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, replicas, app_factory), name=APP_NAME, route_prefix="/")


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
