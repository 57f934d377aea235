"""Serve the web app and REST API (needs the [web] extra: FastAPI, uvicorn).

Opens the upload page at http://HOST:PORT/ and the API at /api/v1/predictions (OpenAPI at /docs).
The model is loaded once at start-up: --model DIR, else DEEPHEALTH_MODEL_DIR, else the bundled model.
The default host 127.0.0.1 is reachable from this computer only; use --host 0.0.0.0 to serve the
network (put it behind HTTPS: X-rays are personal health data). Uploads are kept in memory and
never written to disk.

Behind a reverse proxy that publishes the app under a sub-path and strips it before forwarding,
give that path with --root-path (or DEEPHEALTH_ROOT_PATH), so that /docs, /redoc and the OpenAPI
"servers" point under it. nginx:

  location /deephealth/ {
      proxy_pass http://127.0.0.1:8000/;              # the trailing slash makes nginx strip /deephealth
      proxy_set_header Host $http_host;               # the client's host *and port*: redirects stay on the proxy
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;  # replace, never append to, a client-sent X-Forwarded-For
      client_max_body_size 33m;                       # upload limit (32 MiB) + 1m for the multipart framing
  }

Keep client_max_body_size 1m above the server's upload limit (--max-upload-mb); set
X-Forwarded-For to $remote_addr so a client cannot name itself in the audit trail (README: "Behind a
reverse proxy").

  deephealth serve --root-path /deephealth
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host --port --workers --model --max-upload-mb --root-path --log-level`` to the sub-parser."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each loads the model (default 1)")
    parser.add_argument("--model", metavar="DIR", help="model folder (model.onnx + metadata.json)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=None, help="largest accepted upload in MB (default 32)"
    )
    parser.add_argument(
        "--root-path",
        metavar="PREFIX",
        default=None,
        help="URL path a reverse proxy publishes the app under, and strips before forwarding, e.g. "
        "/deephealth (default: DEEPHEALTH_ROOT_PATH, else none)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _log_config(level: str) -> dict:
    """uvicorn's logging config plus a handler for the ``deephealth`` loggers (also in worker processes)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "deephealth": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted.

    Args:
        args: the parsed options (:func:`add_arguments`).

    Returns:
        0 after a clean shutdown; 1 if the model cannot be loaded; 2 for bad arguments (e.g. a
        ``--root-path`` without a leading ``/``), bad ``DEEPHEALTH_*`` settings (the variable is
        named) or a missing ``[web]`` extra. Errors are one line on stderr.
    """
    if args.workers < 1:
        print("deephealth serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"deephealth serve: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if args.max_upload_mb is not None and not args.max_upload_mb > 0:
        print("deephealth serve: --max-upload-mb must be > 0", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from deephealth.web.app import create_app  # FastAPI, pydantic-settings, python-multipart
        from deephealth.web.settings import Settings, normalize_root_path
    except ImportError as exc:
        print(
            f"deephealth serve: the web extra is not installed ({exc.name} missing): "
            "pip install 'deephealth[web]'",
            file=sys.stderr,
        )
        return 2

    from pydantic import ValidationError

    from deephealth.artifact import ModelArtifactError
    from deephealth.inference import Predictor

    if args.root_path is not None:
        try:
            root_path = normalize_root_path(args.root_path)
        except ValueError as exc:
            print(f"deephealth serve: --root-path: {exc}", file=sys.stderr)
            return 2

    # Worker processes (--workers > 1) read their settings from the environment.
    if args.model:
        os.environ["DEEPHEALTH_MODEL_DIR"] = str(os.path.abspath(args.model))
    if args.max_upload_mb is not None:
        os.environ["DEEPHEALTH_MAX_UPLOAD_MB"] = str(args.max_upload_mb)
    if args.root_path is not None:
        os.environ["DEEPHEALTH_ROOT_PATH"] = root_path
    os.environ["DEEPHEALTH_LOG_LEVEL"] = args.log_level.upper()
    try:
        settings = Settings()
    except ValidationError as exc:  # a bad DEEPHEALTH_* variable: name it, without its value's type noise
        problems = "; ".join(
            f"DEEPHEALTH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        print(f"deephealth serve: bad setting {problems}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic-settings' SettingsError: a variable it cannot parse at all
        print(f"deephealth serve: bad DEEPHEALTH_* setting: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        # Load the model here, so a missing or corrupted model is one clear line, not a traceback.
        predictor = Predictor(settings.resolved_model_dir())
    except ModelArtifactError as exc:
        print(f"deephealth serve: cannot load the model: {exc}", file=sys.stderr)
        return 1
    art = predictor.artifact

    host = f"[{args.host}]" if ":" in args.host else args.host
    prefix = settings.root_path
    where = f" for a reverse proxy that publishes it under {prefix}/" if prefix else ""
    print(
        f"Serving Deep Health ({art.name} {art.version}) at http://{host}:{args.port}/{where} "
        f"- API docs at {prefix}/docs - Ctrl+C to stop",
        file=sys.stderr,
    )
    common = dict(
        host=args.host,
        port=args.port,
        root_path=prefix,  # uvicorn prefixes each request's path with it, as the ASGI spec wants
        access_log=False,  # the app logs each request itself, without query values or content
        log_config=_log_config(args.log_level),
        server_header=False,
    )
    if args.workers == 1:
        uvicorn.run(create_app(settings, predictor=predictor), **common)
    else:
        del predictor  # each worker process loads its own copy
        uvicorn.run("deephealth.web.app:create_app", factory=True, workers=args.workers, **common)
    return 0
