"""Command line of the local IHC double: ``python -m ihc_attribution_dev.server --api-key KEY [options]``.

Runs in the foreground until SIGTERM or Ctrl-C, then finishes the requests in flight and exits 0.
API keys come from ``--api-key`` (repeatable) and from ``IHC_API_KEYS`` (comma separated); with
none, the server refuses to start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields

from ihc_attribution_dev.server import params as params_file
from ihc_attribution_dev.server.config import API_KEYS_ENV, PROFILES, FaultConfig, ServerConfig
from ihc_attribution_dev.server.model import PHASES, PhaseWeights

logger = logging.getLogger("ihc_attribution_dev.server")

# One option per FaultConfig field: (field, type, metavar, help).
FAULT_OPTIONS = (
    ("latency_ms", float, "MS", "least time every request takes to answer; the model's own work counts toward it"),
    ("error_rate", float, "P", "share of requests answered 500 or 503"),
    ("rate_limit_every", int, "N", "answer every Nth request 429 (0: never)"),
    ("retry_after", int, "S", "Retry-After seconds of a 429 (default: %(default)s)"),
    ("hang_rate", float, "P", "share of requests that sleep --hang-seconds before answering"),
    ("hang_seconds", float, "S", "length of a hang (default: %(default)s)"),
    ("partial_failure_rate", float, "P", "share of valid journeys failed on purpose, answered in a 206"),
    ("seed", int, "SEED", "seed of the fault decisions (default: %(default)s)"),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option of :class:`ServerConfig` and :class:`FaultConfig`)."""
    defaults, weights, faults = ServerConfig(api_keys=("-",)), PhaseWeights(), FaultConfig()
    p = argparse.ArgumentParser(
        prog="python -m ihc_attribution_dev.server",
        description="IHC-compatible local development double (not the real IHC attribution API).",
    )
    p.add_argument("--host", default=defaults.host, help="interface to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=defaults.port, help="port to listen on (default: %(default)s)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help=f"accepted x-api-key, repeatable; added to those in ${API_KEYS_ENV} (comma separated). "
                        "Without any key the server refuses to start")
    p.add_argument("--conv-type-id", action="append", default=None, metavar="ID",
                   help="known conv_type_id, repeatable (default: demo)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=defaults.profile,
                   help="account limits: standard = 100 journeys / 3000 sessions per request, "
                        "free = 100 / 200 (default: %(default)s)")
    p.add_argument("--max-journeys", type=int, default=None, metavar="N",
                   help="journeys per request (overrides the profile)")
    p.add_argument("--max-sessions", type=int, default=None, metavar="N",
                   help="sessions per request (overrides the profile)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="(default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--model-params", action="append", default=[], metavar="ID=PARAMS.json",
                   help="answer conv_type_id ID with the parameters of PARAMS.json (written by "
                        "scripts/calibrate_ihc_model.py --out), repeatable; ID must be served (--conv-type-id). "
                        "Types without a file use the built-in type A parameters and the weights below")
    for phase in PHASES:
        g.add_argument(f"--weight-{phase}", type=float, default=getattr(weights, phase), metavar="W",
                       help=f"phase weight of the {phase} of the built-in model (default: %(default)s)")

    g = p.add_argument_group("fault injection (all off by default)")
    for name, kind, metavar, text in FAULT_OPTIONS:
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(faults, name), metavar=metavar,
                       help=text)
    return p


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerConfig:
    """Build the :class:`ServerConfig`; raises ``ValueError`` with a readable message."""
    environ = os.environ if environ is None else environ
    env_keys = [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",")]
    # Keep the order, drop blanks and repeats.
    keys = tuple(dict.fromkeys(k for k in [*args.api_key, *env_keys] if k))
    models = {}
    for spec in args.model_params:
        conv_type, sep, path = spec.partition("=")
        if not (sep and conv_type and path):
            raise ValueError(f"--model-params takes ID=PARAMS.json, got {spec!r}")
        if conv_type in models:
            raise ValueError(f"--model-params given twice for conv_type_id {conv_type!r}")
        models[conv_type] = params_file.load(path)
    return ServerConfig(
        api_keys=keys,
        conv_type_ids=tuple(args.conv_type_id or ("demo",)),
        profile=args.profile,
        max_journeys=args.max_journeys,
        max_sessions=args.max_sessions,
        weights=PhaseWeights(args.weight_initializer, args.weight_holder, args.weight_closer),
        models=models,
        faults=FaultConfig(**{f.name: getattr(args, f.name) for f in fields(FaultConfig)}),
        host=args.host,
        port=args.port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    import uvicorn

    from ihc_attribution_dev.server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=args.log_level,
        # Hung requests (fault injection) must not hold up a shutdown for long.
        timeout_graceful_shutdown=3,
    ))

    def stop(signum: int, _frame: object) -> None:
        server.should_exit = True

    # uvicorn handles SIGTERM/SIGINT while it runs and re-raises the signal once it has shut down;
    # with this handler in place that re-raise is harmless and the process exits 0.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("IHC local development double on http://%s:%d (docs: /docs); SIGTERM or Ctrl-C stops it",
                config.host, config.port)
    server.run()
    if not server.started:
        return 1
    logger.info("IHC local double exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
