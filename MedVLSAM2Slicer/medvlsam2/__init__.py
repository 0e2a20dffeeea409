"""MedVL-SAM2 engine: 3D CT vision-language model + SAM2 volumetric segmenter.

This package must stay light at import time: the torch-free parts (``protocol``, ``client``,
``utils.cancel``, ``errors``) are imported by the Slicer module, which may have no torch.
"""

__version__ = "0.1.0"
API_VERSION = 3  # 2: streams carry {"alive": true} pings; 3: routes from api.OPERATIONS (bound, ends, force)
