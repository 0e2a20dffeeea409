"""The shipped demo weights (Resources/DemoWeights) on a held-out phantom: what the README claims of them.

These guard the bundle itself: a retraining, or a change to the chat format or the inference path, that
breaks the answer format or left/right fails here. Held-out seed only (>= 100000).
"""

import numpy as np
import pytest

from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
from medvlsam2.evaluation.seg_metrics import dice
from medvlsam2.resources import resource_path


@pytest.fixture(scope="module")
def demo():
    from medvlsam2.checkpoint import load_bundle
    from medvlsam2.session import Session

    model = load_bundle(resource_path("DemoWeights", must_exist=True)).eval()
    case = generate_case(100001)
    return model, case, Session(model, case.volume)


def _reference(case, name: str) -> np.ndarray:
    return np.isin(case.labels, STRUCTURE_LABELS[name])


def test_the_answer_names_the_target_after_seg(demo):
    model, _, session = demo
    from medvlsam2.modeling.prompting import segment_question

    answer = "".join(model.stream_text(session.visual_tokens(), segment_question("left kidney"), max_new_tokens=12))
    assert answer.replace(" ", "") == "itis[SEG]leftkidney."


@pytest.mark.parametrize("side, other", [("left kidney", "right kidney"), ("right kidney", "left kidney")])
def test_text_prompts_tell_left_from_right_kidney(demo, side, other):
    _, case, session = demo
    (result,) = session.segment_text(side)
    mask = session.mask(result.object_id) > 0
    session.remove(result.object_id)
    assert dice(mask, _reference(case, side)) > 0.85
    assert dice(mask, _reference(case, other)) < 0.05

