"""The Gradio demo: a pool of pipeline workers (GPUs or CPU) behind a bounded FIFO queue (``app.py``, ``l2p demo``)."""
