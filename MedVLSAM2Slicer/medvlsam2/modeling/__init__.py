"""Model components: 3D vision encoder, projector, language model, [SEG] bridge, SAM2 segmenter."""
