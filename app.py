"""L2P Z-Image Gradio demo: ``python app.py`` serves the tiny model on http://127.0.0.1:23231 (``--help`` for more)."""

import sys

from diffsynth_l2p.demo.server import main

if __name__ == "__main__":
    sys.exit(main())
