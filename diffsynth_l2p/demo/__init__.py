"""The Gradio demo (``app.py``, ``l2p demo``): pipeline workers on GPUs or the CPU behind Gradio's bounded queue."""
