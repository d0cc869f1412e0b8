"""Imports point one way: the package and `l2p --help` are light, and importing the package registers nothing."""

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["tiny-world", "reproduce", "--help"]])
def test_help_imports_neither_torch_nor_diffsynth(argv):
    code = (
        "import contextlib, io, sys\n"
        "from diffsynth_l2p.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules, 'diffsynth' in sys.modules)"
    )
    assert _run(code) == "False False"


def test_importing_the_package_leaves_diffsynths_registry_alone():
    code = (
        "from diffsynth.configs import MODEL_CONFIGS\n"
        "before = [dict(entry) for entry in MODEL_CONFIGS]\n"
        "import diffsynth_l2p\n"
        "print(before == MODEL_CONFIGS)"
    )
    assert _run(code) == "True"


def test_models_do_not_import_the_rest_of_the_package():
    code = (
        "import sys\n"
        "import diffsynth_l2p.models.z_image_l2p_dit, diffsynth_l2p.models.text_encoder\n"
        "ours = [m for m in sys.modules if m.startswith('diffsynth_l2p.') and m != 'diffsynth_l2p._import_alias']\n"
        "print(all(m.startswith('diffsynth_l2p.models') for m in ours))"
    )
    assert _run(code) == "True"
