"""diffsynth-l2p: L2P pixel-space Z-Image for DiffSynth-Studio.

Importing the package is cheap and has no side effect on DiffSynth beyond an import alias for
``diffsynth.pipelines.z_image_L2P``; the L2P models are registered with DiffSynth when the pipeline module is
imported or a checkpoint is looked up (``registry.register_all``).
"""

from . import _import_alias

_import_alias.install()

__version__ = "0.1.0"
