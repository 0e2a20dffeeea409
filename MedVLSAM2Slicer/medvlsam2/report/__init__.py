"""Draft reports grounded in the segmentation: measurements computed by code, findings read from the
generated text, contradictions between the two flagged, one Markdown writer."""
