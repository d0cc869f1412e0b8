"""On-disk layout of an L2P model set, and the default set that ships inside the package."""

from pathlib import Path

DIT_FILE = "l2p-dit.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
# The trained tiny-world student (docs/tiny-world.md); its teacher's own files are in the ``teacher/`` folder.
DEFAULT_MODEL_DIR = Path(__file__).parent / "tiny_world" / "assets"


def default_model_dir() -> Path:
    """The model set used when no model is given: the shipped tiny-world student (64x64 shapes)."""
    if not (DEFAULT_MODEL_DIR / DIT_FILE).is_file():
        raise FileNotFoundError(
            f"The default model is missing from {DEFAULT_MODEL_DIR}: reinstall diffsynth-l2p, or pass --model."
        )
    return DEFAULT_MODEL_DIR
