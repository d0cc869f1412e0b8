"""The tiny L2P model set: a CPU-sized L2P DiT, Qwen3 text encoder and word-level tokenizer on disk.

``build_tiny_l2p`` writes the three parts in the real on-disk formats, so DiffSynth's loader and
``ZImageL2PPipeline.from_pretrained`` load them exactly like the released files.  Its weights are **random**
(seeded): the set exercises every code path in tests, and the tiny-world teacher and student start from it
(``docs/tiny-world.md``).  The default model is the trained student (:mod:`.model_set`).
"""

import json
import os
from pathlib import Path
from typing import Dict, List, Union

import torch

from .atomic import atomic_directory
from .families import Family, import_class
from .model_set import DIT_FILE, TEXT_ENCODER_DIR, TOKENIZER_DIR
from .models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from .models.text_encoder import Qwen3TextEncoder
from .models.z_image_l2p_dit import ZImageL2PDiT
from .safetensors_io import save_module

PAD_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Lower-case words of the shapes world (docs/tiny-world.md) plus the chat roles; anything else becomes <unk>.
WORDS = """
a an the of and with on in at to is are there image picture photo background
user assistant system
one two three four five six seven eight nine ten single pair few many no
red green blue yellow purple orange black white gray grey pink brown cyan magenta
circle circles square squares triangle triangles rectangle rectangles star stars dot dots shape shapes
small large big tiny medium huge
left right top bottom center middle above below under over beside near next between corner side
""".split()
PUNCTUATION = list(".,;:!?'\"()-")
DIGITS = list("0123456789")
VOCABULARY: List[str] = SPECIAL_TOKENS + WORDS + PUNCTUATION + DIGITS
NEWLINE_TOKEN = "\n"  # in the vocabulary only with ``build_tokenizer(newline_token=True)``

# Qwen3's chat layout; with enable_thinking=False Qwen3 appends an empty think block, so does this.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

def build_tokenizer(*, newline_token: bool = False):
    """Word-level ``PreTrainedTokenizerFast`` over ``VOCABULARY`` with Qwen3's special tokens and chat template.

    ``newline_token`` keeps each line break as a token ``"\\n"`` (appended to the vocabulary) instead of dropping
    it with the other white space, so a prompt template is as many tokens as with Qwen's own tokenizer when its
    words are single tokens (the tiny Qwen-Image set: DiffSynth drops its template's first 34 tokens).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = VOCABULARY + [NEWLINE_TOKEN] if newline_token else VOCABULARY
    vocab = {token: index for index, token in enumerate(vocabulary)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    if newline_token:
        splits = [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(NEWLINE_TOKEN, behavior="isolated"),
        ]
    else:
        splits = [pre_tokenizers.WhitespaceSplit()]
    backend.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.Punctuation(behavior="isolated")])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, directory: Path) -> None:
    """``save_pretrained``, naming the class ``PreTrainedTokenizerFast``, which transformers 4 and 5 both resolve."""
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _init_(tensor: torch.Tensor, generator: torch.Generator, std: float) -> None:
    tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded init of every parameter, by name, independent of construction order and torch defaults.

    Matrices and convs ~ N(0, 1/fan_in) keep activations O(1) through the residual stack; norms are 1,
    biases 0, pad tokens ~ N(0, 0.02) (the DiT creates them with ``torch.empty``).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if name.endswith("pad_token"):
            _init_(param, generator, 0.02)
        elif param.dim() >= 2:
            _init_(param, generator, param[0].numel() ** -0.5)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)


def write_model_set(
    out_dir: Union[str, os.PathLike], dit: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer, seed: int = 0
) -> Dict[str, Union[str, List[str]]]:
    """Seed-initialise ``dit`` (``seed``) and ``text_encoder`` (``seed + 1``) and write them with ``tokenizer``.

    ``out_dir`` is created atomically (it must not exist or be empty). Layout: ``l2p-dit.safetensors``,
    ``text_encoder/model.safetensors``, ``tokenizer/``. Returns ``{"dit": file, "text_encoder": [file], "tokenizer":
    dir}``.
    """
    with atomic_directory(out_dir, "the tiny model set") as staging:
        init_weights(dit, seed)
        save_module(dit, staging / DIT_FILE)

        init_weights(text_encoder, seed + 1)
        (staging / TEXT_ENCODER_DIR).mkdir()
        save_module(text_encoder, staging / TEXT_ENCODER_DIR / "model.safetensors")

        save_tokenizer(tokenizer, staging / TOKENIZER_DIR)
    return tiny_model_files(out_dir)


def build_tiny_l2p(out_dir: Union[str, os.PathLike], seed: int = 0) -> Dict[str, Union[str, List[str]]]:
    """Write a random tiny L2P model set into ``out_dir`` (as :func:`write_model_set` lays it out)."""
    dit = ZImageL2PDiT(**L2P_CONFIGS["tiny"].kwargs)
    return write_model_set(out_dir, dit, Qwen3TextEncoder(**TINY_TEXT_ENCODER_CONFIG), build_tokenizer(), seed)


def tiny_model_files(model_dir: Union[str, os.PathLike]) -> Dict[str, Union[str, List[str]]]:
    """The file dict of a model set laid out by ``build_tiny_l2p``."""
    model_dir = Path(model_dir)
    return {
        "dit": str(model_dir / DIT_FILE),
        "text_encoder": [str(model_dir / TEXT_ENCODER_DIR / "model.safetensors")],
        "tokenizer": str(model_dir / TOKENIZER_DIR),
    }


def write_tiny_latent(family: Family, path: Union[str, os.PathLike], seed: int = 0) -> None:
    """A random tiny latent DiT of ``family`` in its stock layout (what ``l2p convert`` turns into the tiny L2P DiT)."""
    model = import_class(family.latent_class)(**family.latent_kwargs["tiny"])
    init_weights(model, seed)
    save_module(model, Path(path))
