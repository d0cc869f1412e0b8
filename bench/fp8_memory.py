"""Weight memory of the 6B L2P DiT (1K release config) stored in bf16 vs fp8 (``l2p generate --fp8``).

The 6B DiT and the Qwen3-4B text encoder are built on the `meta` device (no memory); their bytes are predicted
with DiffSynth's fp8 rule: its loader reads every tensor of the checkpoint in the float8 ``offload_dtype`` (Linear
weights, but also biases, RMSNorm weights, pad tokens and the detailer head's convolutions); only non-persistent
buffers keep their dtype. The rule is checked on the shipped tiny-world model, loaded both ways for real
(``load_pipeline(weight_dtype=torch.float8_e4m3fn)``): the measured tiny bytes must equal the prediction.
Activations, the CUDA context and the per-layer bf16 copy made while a layer computes are not counted.
Writes <out>/fp8_memory.json (atomically).
Run: .venv/bin/python bench/fp8_memory.py [--config 1k] [--out bench/results]
"""

import argparse
import contextlib
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from bench_io import write_results
from diffsynth.models.z_image_text_encoder import ZImageTextEncoder

from diffsynth_l2p.models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.models.text_encoder import Qwen3TextEncoder
from diffsynth_l2p.pipelines.loading import FP8_WEIGHT_DTYPE, load_pipeline
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.training.memory import GIB
from diffsynth_l2p.weight_memory import LINEAR_WEIGHT, stored_bytes

OUT = Path(__file__).resolve().parent / "results"


def compare(model: torch.nn.Module) -> Dict[str, Any]:
    """Predicted bf16 and fp8 bytes of a meta model, by tensor kind and in total."""
    bf16, fp8 = stored_bytes(model, torch.bfloat16), stored_bytes(model, FP8_WEIGHT_DTYPE)
    return dict(
        parameters=sum(p.numel() for p in model.parameters()),
        bf16_bytes=bf16,
        fp8_bytes=fp8,
        bf16_total=sum(bf16.values()),
        fp8_total=sum(fp8.values()),
        ratio=sum(fp8.values()) / sum(bf16.values()),
        linear_weight_ratio=fp8[LINEAR_WEIGHT] / bf16[LINEAR_WEIGHT],
    )


def not_fp8(model: torch.nn.Module) -> Dict[str, str]:
    """``{name: dtype}`` of the loaded model's parameters and buffers that are not stored in fp8."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {name: str(tensor.dtype) for name, tensor in tensors if tensor.dtype != FP8_WEIGHT_DTYPE}


def measure_tiny() -> Dict[str, Any]:
    """The tiny-world model loaded with bf16 and with fp8 storage: measured bytes, ratios, the prediction check."""
    with contextlib.redirect_stdout(sys.stderr):  # DiffSynth's loader reports on stdout
        bf16 = load_pipeline(torch_dtype=torch.bfloat16)
        fp8 = load_pipeline(torch_dtype=torch.bfloat16, weight_dtype=FP8_WEIGHT_DTYPE)
    dit_bf16, dit_fp8 = stored_bytes(bf16.dit), stored_bytes(fp8.dit)
    encoder_bf16, encoder_fp8 = stored_bytes(bf16.text_encoder), stored_bytes(fp8.text_encoder)
    meta_dit = meta_model(**L2P_CONFIGS["tiny"].kwargs)
    meta_encoder = meta_model(Qwen3TextEncoder, **TINY_TEXT_ENCODER_CONFIG)
    return dict(
        dit_bf16_total=sum(dit_bf16.values()),
        dit_fp8_total=sum(dit_fp8.values()),
        dit_ratio=sum(dit_fp8.values()) / sum(dit_bf16.values()),
        dit_linear_weight_ratio=dit_fp8[LINEAR_WEIGHT] / dit_bf16[LINEAR_WEIGHT],
        text_encoder_ratio=sum(encoder_fp8.values()) / sum(encoder_bf16.values()),
        prediction_matches=stored_bytes(meta_dit, FP8_WEIGHT_DTYPE) == dit_fp8
        and stored_bytes(meta_encoder, FP8_WEIGHT_DTYPE) == encoder_fp8,
        dit_not_fp8=not_fp8(fp8.dit),
        text_encoder_not_fp8=not_fp8(fp8.text_encoder),
    )


def format_table(name: str, row: Dict[str, Any]) -> List[str]:
    """One model's bytes by tensor kind, bf16 vs fp8, in MiB, and its totals in GiB."""
    lines = [f"{name}: {row['parameters']:,} parameters", f"  {'tensor kind':<40}{'bf16 MiB':>12}{'fp8 MiB':>12}"]
    for kind, size in row["bf16_bytes"].items():
        lines.append(f"  {kind:<40}{size / 2**20:>12.2f}{row['fp8_bytes'][kind] / 2**20:>12.2f}")
    lines.append(
        f"  total: bf16 {row['bf16_total'] / GIB:.2f} GiB, fp8 {row['fp8_total'] / GIB:.2f} GiB "
        f"(ratio {row['ratio']:.3f}; Linear weights {row['linear_weight_ratio']:.3f})"
    )
    return lines


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Compute, print the tables, write the JSON; return the JSON payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=[name for name in L2P_CONFIGS if name != "tiny"], default="1k",
                        help="the L2P DiT configuration (default %(default)s: the 6B 1K release)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder for fp8_memory.json")
    args = parser.parse_args(argv)
    dit = compare(meta_model(**L2P_CONFIGS[args.config].kwargs))
    text_encoder = compare(meta_model(ZImageTextEncoder))
    tiny = measure_tiny()
    payload = dict(
        config=args.config, storage_dtype=str(FP8_WEIGHT_DTYPE), diffsynth=version("diffsynth"),
        torch=torch.__version__,
        dit=dit, text_encoder=text_encoder, tiny_measured=tiny,
    )
    print("\n".join(format_table(f"L2P DiT ({args.config})", dit)))
    print("\n".join(format_table("Qwen3-4B text encoder", text_encoder)))
    both_bf16, both_fp8 = dit["bf16_total"] + text_encoder["bf16_total"], dit["fp8_total"] + text_encoder["fp8_total"]
    print(f"DiT + text encoder: bf16 {both_bf16 / GIB:.2f} GiB, fp8 {both_fp8 / GIB:.2f} GiB")
    kept = {**tiny["dit_not_fp8"], **tiny["text_encoder_not_fp8"]}
    print(f"Kept out of fp8 (measured on the tiny model): {kept or 'nothing'}")
    print(
        f"Tiny model measured: DiT fp8/bf16 {tiny['dit_ratio']:.3f} (Linear weights "
        f"{tiny['dit_linear_weight_ratio']:.3f}), text encoder {tiny['text_encoder_ratio']:.3f}; "
        f"the meta prediction {'matches' if tiny['prediction_matches'] else 'DOES NOT match'} the loaded bytes."
    )
    write_results(args.out / "fp8_memory.json", payload)
    return payload


if __name__ == "__main__":
    main()
