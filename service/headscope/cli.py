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
SUBCOMMAND_MODULES: list[str] = []


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
    "max_concurrency",
    "max_queue",
    "torch_threads",
    "probes",
    "store",
    "allow_missing_probes",
    "train_probes_if_missing",
    "corpus",
    "log_level",
]


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from headscope.app import create_app
    from headscope.runtime import load_runtime

    settings = settings_from_args(args, SERVE_SETTINGS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Load before binding the port, so a missing file fails fast with a clear message.
    runtime = load_runtime(settings)
    app = create_app(settings, runtime=runtime)
    uvicorn.run(app, host=settings.host, port=int(settings.port), log_level=settings.log_level)
    return 0


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]
]:
    parser = argparse.ArgumentParser(
        prog="headscope", description="Look inside the attention heads of tiny GPT-Neo models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="Start the HTTP service.")
    add_settings_arguments(serve_parser, SERVE_SETTINGS)
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


if __name__ == "__main__":
    sys.exit(main())
