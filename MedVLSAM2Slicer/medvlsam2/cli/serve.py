"""``medvlsam2 serve [--model SPEC] --host 127.0.0.1 --port 0 --device auto``: the inference server.

The token comes from ``--token-file`` (read, or written with a fresh token when absent), the
``MEDVLSAM2_SERVER_TOKEN`` environment variable, or ``--token``; a fresh one is printed once to
stdout only when none is given. It is never logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

from ..config import PRECISIONS
from ..errors import InputError
from ..protocol import TOKEN_ENV
from .common import PRECISION_HELP

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the inference server (FastAPI) that the Slicer module talks to")
    p.add_argument("--model", default=None, help="any model spec (see `medvlsam2 segment --help`); default: the "
                                                 "project's demo weights")
    p.add_argument("--image-size", type=int, default=None, help="SAM2 input size in px (default: the model's native size)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one, printed at start)")
    p.add_argument("--token", help="bearer token (visible in process lists: prefer --token-file or $%s)" % TOKEN_ENV)
    p.add_argument("--token-file", help="file holding the token; created with a fresh token (mode 600) if missing")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--seed", type=int, help="torch seed before building a named config (reproducible random weights)")
    p.add_argument("--lease-s", type=float, default=600.0,
                   help="idle seconds (no real call; heartbeats do not count) before a session is closed")
    p.add_argument("--liveness-s", type=float, default=60.0,
                   help="seconds without a heartbeat or call (the client is gone) before a session is closed")
    p.add_argument("--max-sessions", type=int, default=16, help="open sessions; beyond: 503 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest accepted upload (compressed)")
    p.add_argument("--max-voxels", type=int, default=1024 ** 3)
    p.add_argument("--max-json-kb", type=float, default=1024.0, help="largest JSON request body")
    p.add_argument("--max-points", type=int, default=64, help="points in one add_points call")
    p.add_argument("--max-prompt-chars", type=int, default=2000, help="characters of a text prompt or question")
    p.add_argument("--max-queued-calls", type=int, default=256, help="model calls waiting at once; beyond: 429")
    p.add_argument("--call-timeout-s", type=float, default=600.0,
                   help="longest model call; a longer one is cancelled, changes nothing and answers 504")
    p.add_argument("--request-timeout-s", type=float, default=30.0,
                   help="seconds a request head may take to arrive and a request body may pause")
    p.add_argument("--ready-file", help="write {url} as JSON here once the server accepts connections")
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, whether it was generated here)."""
    if args.token_file:
        path = Path(args.token_file)
        if path.exists():
            token = path.read_text().strip()
            if not token:
                raise InputError(f"the token file is empty; delete it to get a fresh token")
            return token, False
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token, False
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], False
    if args.token:
        return args.token, False
    return secrets.token_urlsafe(32), True


def run(args: argparse.Namespace) -> int:
    import json
    import socket

    import uvicorn

    from ..factory import load_model
    from ..server.app import Limits, create_app
    from .common import demo_weights_folder, model_line
    from ..server.guards import uvicorn_config

    limit_flags = ("lease_s", "liveness_s", "max_sessions", "max_upload_mb", "max_voxels", "max_json_kb", "max_points",
                   "max_prompt_chars", "max_queued_calls", "call_timeout_s", "request_timeout_s")
    if any(getattr(args, f) <= 0 for f in limit_flags):
        raise InputError(", ".join("--" + f.replace("_", "-") for f in limit_flags) + " must be positive")
    token, generated = _token(args)
    if args.host not in LOOPBACK:
        print(f"WARNING: binding {args.host}: other machines can reach this server. Use a strong token and "
              "put TLS (a reverse proxy) in front of it; patient images travel over this connection", file=sys.stderr)
    from ..utils.device import resolve_device

    device = str(resolve_device(args.device))
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    spec = args.model or str(demo_weights_folder())
    model = load_model(spec, device, image_size=args.image_size, precision=args.precision)
    print(model_line(model, spec), file=sys.stderr, flush=True)
    info = {"model": Path(spec).name if Path(spec).exists() else spec,
            "config": getattr(getattr(model, "config", None), "name", None), "device": device,
            "capabilities": sorted(model.capabilities), "provenance": model.provenance,
            "description": model.description}
    limits = Limits(int(args.max_upload_mb * 2**20), args.max_voxels, args.call_timeout_s, int(args.max_json_kb * 1024),
                    args.max_points, args.max_prompt_chars, args.max_queued_calls, args.request_timeout_s)
    app = create_app(model, token, info, limits, args.lease_s, args.max_sessions, args.liveness_s)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    url = f"http://{shown}:{port}"
    server = uvicorn.Server(uvicorn_config(app, args.request_timeout_s))
    print(f"medvlsam2 server on {url} (model {info['model']}: {model.description}, {model.provenance} weights, "
          f"can do {', '.join(info['capabilities'])}; device {device})", flush=True)
    if generated:
        print(f"token: {token}", flush=True)  # shown once so a user can connect; never logged
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        tmp.replace(args.ready_file)
    logging.getLogger("medvlsam2.server").info("serving")
    server.run(sockets=[sock])
    return 0
