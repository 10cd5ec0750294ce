"""The `headscope` command: `serve`, and the subcommands other modules register."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from headscope.errors import StartupError
from headscope.settings import Settings

log = logging.getLogger("headscope")

# Subcommand modules, imported lazily so `headscope serve` loads nothing it does not need.
SUBCOMMAND_MODULES: list[str] = [
    "headscope.cli.corpus",
    "headscope.cli.figures",
    "headscope.cli.probes",
    "headscope.cli.reproduce",
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """One flag per Settings field, same name as the HEADSCOPE_* variable, default from the env."""
    for name in names:
        field = Settings.model_fields[name]
        help_text = f"{field.description} [env HEADSCOPE_{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(_flag(name), dest=name, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    overrides = {
        name: getattr(args, name) for name in names if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


SERVE_SETTINGS = [
    "model",
    "tokenizer",
    "host",
    "port",
    "max_tokens",
    "max_body_bytes",
    "max_response_bytes",
    "max_unsent_response_bytes",
    "write_timeout",
    "max_connections",
    "request_head_timeout",
    "request_body_timeout",
    "max_concurrency",
    "max_queue",
    "torch_threads",
    "attention_kernel",
    "kernel_cache",
    "tagger_process",
    "analysis_cache_mb",
    "heap_trim_interval",
    "probes",
    "store",
    "allow_missing_probes",
    "train_probes_if_missing",
    "probes_max_sequences",
    "corpus",
    "corpus_max_sequences",
    "corpus_max_tokens",
    "corpus_cache_size",
    "jobs_dir",
    "max_headers",
    "max_header_bytes",
    "keep_alive_timeout",
    "drain_timeout",
    "log_level",
]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# uvicorn's exit status when the server could not start (e.g. the port is taken).
STARTUP_FAILURE = 3


def uvicorn_config(app, settings: Settings):  # -> uvicorn.Config
    """The server's protocol limits, from the settings (also used by the tests)."""
    from headscope.api.server import uvicorn_config as config

    return config(app, settings)


def serve(args: argparse.Namespace) -> int:
    from headscope.preflight import check_artifacts

    settings = settings_from_args(args, SERVE_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Truncated or tampered files stop the server in a second, before the slow imports below.
    check_artifacts(settings)

    if args.engine == "ray":
        from headscope.cli.serve_ray import serve_forever

        return serve_forever(settings, args.replicas, args.address)
    if args.replicas != 1:
        raise StartupError("--replicas needs --engine ray")

    from headscope.analysis.service import load_runtime
    from headscope.api.server import run
    from headscope.app import create_app

    # Load before binding the port, so a missing file fails fast with a clear message.
    runtime = load_runtime(settings)
    app = create_app(settings, runtime=runtime)
    if settings.api_key is None and settings.host not in LOOPBACK_HOSTS:
        log.warning(
            "Listening on %s with no API key: anyone who can reach port %s can use the API. "
            "Set HEADSCOPE_API_KEY, or bind 127.0.0.1.",
            settings.host,
            settings.port,
        )
    return 0 if run(app, settings) else STARTUP_FAILURE


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]
]:
    parser = argparse.ArgumentParser(
        prog="headscope", description="Look inside the attention heads of tiny GPT-Neo models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="Start the HTTP service.")
    add_settings_arguments(serve_parser, SERVE_SETTINGS)
    serve_parser.add_argument(
        "--engine",
        choices=("uvicorn", "ray"),
        default="uvicorn",
        help="uvicorn: one process (default); ray: replicas of the app on Ray Serve "
        "(pip install 'headscope[ray]').",
    )
    serve_parser.add_argument(
        "--replicas", type=int, default=1, help="Replicas of the app (with --engine ray)."
    )
    serve_parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: a local Ray on 127.0.0.1)."
    )
    serve_parser.set_defaults(handler=serve)
    for module_name in SUBCOMMAND_MODULES:
        module = __import__(module_name, fromlist=["register"])
        module.register(commands)
    return parser, {}


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StartupError as err:
        print(f"headscope: error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False)
        )
        print(f"headscope: error: invalid setting: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
