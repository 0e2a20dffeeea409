"""Inference server: FastAPI app (``app``), the single model worker (``worker``) and a torch-free
``launcher`` that starts ``medvlsam2 serve`` as a child process. Importing this package imports nothing heavy."""
