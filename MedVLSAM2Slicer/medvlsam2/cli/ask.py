"""``medvlsam2 ask IMAGE "question" [--about TEXT | --box i0,j0,k0,i1,j1,k1]``: stream an answer.

When the CT is unlike the model's training data (``domain.domain_warning``) the answer on stdout begins with that
notice, so an answer copied from the terminal or a pipe carries it."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import add_model_arguments, load_model_for, warn_if_unfamiliar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a question about a CT; the answer streams to stdout")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("question")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--about", metavar="TEXT", help="segment TEXT first and ask about it (e.g. 'liver')")
    where.add_argument("--box", help="ask about the voxel box i0,j0,k0,i1,j1,k1")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.volume import read_volume
    from ..api import SessionAPI
    from ..session import Session

    if not args.question.strip():
        raise InputError("the question is empty")
    from ..domain import domain_warning

    model, volume = load_model_for(args)[0], read_volume(args.image)
    warn_if_unfamiliar(model, volume)
    notice = domain_warning(model, volume)
    session: SessionAPI = Session(model, volume, cache_mb=args.cache_mb)
    context = None
    if args.about:
        text = session.segment_text(args.about)
        if not text.found:
            why = "; ".join(n.reason for n in text.not_found)
            raise InputError(f"the model found no {args.about} in this image ({why}), so there is nothing to ask about")
        found = text.found
        context = {"object": found[0].object_id}
    elif args.box:
        try:
            context = {"box": tuple(int(v) for v in args.box.split(","))}
        except ValueError:
            raise InputError(f"--box takes six integers i0,j0,k0,i1,j1,k1 (got {args.box!r})") from None
    if notice:
        print(f"[Unreliable: {notice}]", flush=True)
    for piece in session.ask(args.question, context=context):
        print(piece, end="", flush=True)
    print()
    return 0
