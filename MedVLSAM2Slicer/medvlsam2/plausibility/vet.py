"""The one place a text-prompted result is vetted before anyone sees it (``Session.segment_text`` calls it, so the
CLI, the server, the client and the panel all get the same answer): presence against the calibrated threshold, the
anatomical priors, and the out-of-domain notice. An implausible result is withheld as ``NotFound`` with its reason;
``force`` delivers it named "X (unverified)" with the reason in ``warnings``."""

from __future__ import annotations

from ..results import NotFound, TextResult
from .checks import doubt
from .presence import presence_doubt

UNVERIFIED = "(unverified)"
FORCED = "(forced)"  # modeling.prompting.FORCED: drawn although the model or its gate said the target is absent
FORCED_NOTE = "drawn on request although the model said it is not there"


def vet_text_result(session, out: TextResult, force: bool = False) -> TextResult:
    """``out`` with each implausible result withheld (or, with ``force``, renamed "X (unverified)" and warned)."""
    from ..domain import domain_warning

    if not out.found:
        return out
    notice = domain_warning(session.model, session.volume)
    body = session._body  # computed once per CT (Session caches it)
    # every object's mask read once (not once per result); a result withheld below leaves the others' context
    masks = {i: (n, session.mask(i)) for i, n in session.objects().items()}
    kept, missing = [], list(out.not_found)
    for r in out.found:
        others = {n: m for i, (n, m) in masks.items() if i != r.object_id and not _doubtful(n)}
        reason = (presence_doubt(session.model, r.name, r.scores)
                  or doubt(r.name, masks[r.object_id][1], session.volume, others, body))
        if reason and not force:
            session.remove(r.object_id)
            del masks[r.object_id]
            missing.append(NotFound(r.name, reason))
            continue
        if reason:
            if not _doubtful(r.name):
                r.name = f"{r.name} {UNVERIFIED}"  # the Session renames its object after this returns
            r.warnings.append(reason)
        elif r.name.endswith(FORCED):
            r.warnings.append(f"'{r.name}': {FORCED_NOTE}")
        if notice:
            r.warnings.append(notice)
        kept.append(r)
    return TextResult(kept, missing)


def withheld(miss: NotFound) -> bool:
    """Whether a ``NotFound`` is a result these checks withheld (its reason names it: "'X': why"), not a target the
    model said is absent."""
    return miss.reason.startswith(f"'{miss.target}': ")


def _doubtful(name: str) -> bool:
    return name.endswith((UNVERIFIED, FORCED))
