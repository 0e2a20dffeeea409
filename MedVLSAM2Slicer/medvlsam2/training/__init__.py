"""Two-stage training (stage 1: align vision to language; stage 2: joint language + segmentation).

Entry point: ``medvlsam2 train CONFIG`` (see ``loop.train``). Needs torch, sam2 and accelerate.
"""
