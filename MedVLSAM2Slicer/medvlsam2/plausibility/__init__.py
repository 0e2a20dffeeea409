"""Never confidently wrong: what the product checks about a result before delivering it (anatomical priors by
terminology code, calibrated presence, prompt/result agreement). See docs/honesty.md."""

from .agreement import box_warning, click_warnings
from .checks import body_mask, doubt
from .presence import presence_doubt
from .priors import Prior, prior_for, priors

__all__ = ["Prior", "body_mask", "box_warning", "click_warnings", "doubt", "presence_doubt", "prior_for", "priors"]
