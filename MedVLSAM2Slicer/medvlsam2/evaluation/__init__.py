"""Evaluation against the field's metrics: Dice/NSD (``seg_metrics``), the interactive box + clicks
protocol (``interactive``), report metrics (``text_metrics``), VQA scores (``vqa``) and the runner that
evaluates a model on a list of ``CTCase`` (``runner``). Modules import their heavy dependencies lazily."""
