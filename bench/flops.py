"""FLOPs of ONE denoising step at real (6B) size: L2P pixel DiT vs latent Z-Image DiT, plus one Flux VAE decode.

Everything is built and run on the `meta` device (no memory, no arithmetic) under PyTorch's
FlopCounterMode, so only matmuls, convolutions and attention are counted (2 FLOPs per multiply-add).
One step = one DiT forward, batch 1, no CFG, a caption of --caption-tokens tokens.
- L2P: ZImageL2PDiT with the named configs (1K patch 16, 4K patch 64, 8K patch 128, 10K patch 160).  2K has
  no released config: the 1K backbone with patch 32 and one extra full-resolution head stage (width 32),
  since the head needs log2(patch) stages (hypothetical, unlike the others).
- Latent: DiffSynth's stock ZImageDiT (default 6B config), patch 2 on 16-channel latents of H/8 x W/8.
- VAE decode: DiffSynth's FluxVAEDecoder (Z-Image's use_conv_attention=False), once per image.
The time floor is FLOPs / --peak-tflops (default 989: H100 SXM dense bf16), i.e. 100% utilisation.
Writes <out>/flops.json (atomically) and <out>/flops.png when matplotlib is importable.
Run: .venv/bin/python bench/flops.py [--sizes 1k 4k] [--peak-tflops 989] [--caption-tokens 128]
"""

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from diffsynth.models.flux_vae import FluxVAEDecoder
from diffsynth.models.z_image_dit import ZImageDiT
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from diffsynth_l2p.atomic import atomic_open, atomic_path
from diffsynth_l2p.models.backbone import latent_velocity
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import meta_model

SIZES = {"1k": 1024, "2k": 2048, "4k": 4096, "8k": 8192, "10k": 10240}
HYPOTHETICAL_2K = dict(L2P_CONFIGS["1k"].kwargs, all_patch_size=(32,), head_channels=(32, 64, 128, 256, 512),
                       head_stage_names=("0", "1", "2", "3", "4"))
PAPER_4K_SECONDS = {"l2p": 1.19, "latent": 51.14}  # the L2P paper's measured time per step at 4K
HEAD = "local_decoder"
DTYPE = torch.bfloat16
OUT = Path(__file__).resolve().parent / "results"


@dataclass
class Count:
    """FLOPs of one call: total, per module (FlopCounterMode's dotted names) and what was not counted."""

    total: int
    by_module: Dict[str, int]
    uncounted: Dict[str, int] = field(default_factory=dict)  # non-view op -> output elements it produced

    def under(self, suffix: str) -> int:
        """FLOPs inside the (single) module whose name ends with ``suffix``."""
        return sum(flops for name, flops in self.by_module.items() if name.endswith("." + suffix))


class _UncountedOps(TorchDispatchMode):
    """Output elements of every non-view op that FlopCounterMode has no formula for (norms, softmax, SiLU, ...)."""

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry
        self.elements: Counter = Counter()

    def __torch_dispatch__(self, func: torch._ops.OpOverload, types: tuple, args: tuple = (),
                           kwargs: Optional[dict] = None) -> Any:
        """Run the op (the FlopCounterMode outside counts it) and record it if it has no FLOP formula."""
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in self.registry and not func.is_view:
            leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.elements[str(func.overloadpacket)] += sum(t.numel() for t in leaves)
        return out


def count_flops(fn: Callable[[], object]) -> Count:
    """FLOPs of ``fn()`` under FlopCounterMode (no grad), per module, plus the non-view ops it did not count."""
    counter = FlopCounterMode(display=False, depth=None)
    uncounted = _UncountedOps(counter.flop_registry)
    with torch.no_grad(), counter, uncounted:
        fn()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name != "Global"}
    return Count(counter.get_total_flops(), by_module, dict(uncounted.elements))


def l2p_kwargs(size: str) -> Dict[str, Any]:
    """``ZImageL2PDiT`` kwargs for a size: the named config, or the hypothetical 2K one."""
    return dict(HYPOTHETICAL_2K) if size == "2k" else dict(L2P_CONFIGS[size].kwargs)


def meta_tensor(*shape: int) -> torch.Tensor:
    """An uninitialised bf16 tensor on the meta device (shape only)."""
    return torch.empty(*shape, dtype=DTYPE, device="meta")


def measure_size(size: str, latent: torch.nn.Module, vae: torch.nn.Module, caption_tokens: int,
                 peak: float) -> Dict[str, Any]:
    """One row: L2P step, latent step and VAE decode FLOPs at output size ``size``."""
    side = SIZES[size]
    kwargs = l2p_kwargs(size)
    l2p = meta_model(**kwargs).to(DTYPE).eval()
    pixels, latents = meta_tensor(1, 3, side, side), meta_tensor(1, 16, side // 8, side // 8)
    timestep = torch.full((1,), 500.0, device="meta")  # scheduler sigma * 1000
    caption = [meta_tensor(caption_tokens, l2p.cap_embedder[-1].in_features)]
    step = count_flops(lambda: l2p(pixels, timestep, caption))
    features = meta_tensor(1, l2p.dim, side // l2p.patch_size, side // l2p.patch_size)
    head_alone = count_flops(lambda: l2p.local_decoder(pixels, features))
    lat = count_flops(lambda: latent_velocity(latent, latents, timestep, caption))
    dec = count_flops(lambda: vae(latents))
    head = step.under(HEAD)
    return dict(
        size=size,
        side=side,
        l2p=dict(config=size + (" (hypothetical)" if size == "2k" else ""), patch=l2p.patch_size,
                 image_tokens=(side // l2p.patch_size) ** 2, flops=step.total, head_flops=head,
                 head_alone_flops=head_alone.total, head_share=head / step.total, floor_s=step.total / peak,
                 uncounted_elements=step.uncounted),
        latent=dict(patch=2, image_tokens=(side // 16) ** 2, flops=lat.total, floor_s=lat.total / peak,
                    uncounted_elements=lat.uncounted),
        vae_decode=dict(flops=dec.total, floor_s=dec.total / peak, uncounted_elements=dec.uncounted),
        latent_over_l2p=lat.total / step.total,
    )


def format_table(rows: List[Dict[str, Any]]) -> str:
    """The printed table (TFLOP = 1e12 FLOPs; floors in seconds at the assumed peak)."""
    lines = [f"{'size':>5} {'L2P patch':>9} {'tokens':>7} {'L2P TFLOP':>10} {'head':>6} {'latent tok':>10} "
             f"{'latent TFLOP':>12} {'lat/L2P':>8} {'VAE TFLOP':>10} {'L2P floor':>10} {'lat floor':>10} "
             f"{'VAE floor':>10}"]
    for r in rows:
        p, q, v = r["l2p"], r["latent"], r["vae_decode"]
        lines.append(f"{r['size'].upper():>5} {p['patch']:>9} {p['image_tokens']:>7} {p['flops'] / 1e12:>10.1f} "
                     f"{p['head_share']:>6.1%} {q['image_tokens']:>10} {q['flops'] / 1e12:>12.1f} "
                     f"{r['latent_over_l2p']:>7.1f}x {v['flops'] / 1e12:>10.1f} {p['floor_s']:>9.3f}s "
                     f"{q['floor_s']:>9.3f}s {v['floor_s']:>9.3f}s")
    return "\n".join(lines)


def uncounted_summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Which ops went uncounted, and their output elements relative to the counted FLOPs (largest row)."""
    ops: Counter = Counter()
    share = {}
    for part in ("l2p", "latent", "vae_decode"):
        biggest = max(rows, key=lambda r: r[part]["flops"])[part]
        ops.update(biggest["uncounted_elements"])
        share[part] = sum(biggest["uncounted_elements"].values()) / biggest["flops"]
    return dict(ops=sorted(ops), elements_per_counted_flop=share)


def plot(rows: List[Dict[str, Any]], path: Path) -> bool:
    """Grouped log-scale bars of the three costs per size; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["size"].upper() for r in rows]
    for i, (part, label) in enumerate([("l2p", "L2P step"), ("latent", "latent step"), ("vae_decode", "VAE decode")]):
        ax.bar([x + 0.27 * (i - 1) for x in range(len(rows))], [r[part]["flops"] / 1e12 for r in rows], 0.27,
               label=label)
    ax.set(xticks=range(len(rows)), xticklabels=names, yscale="log", ylabel="TFLOP (meta-device count)",
           title="FLOPs per denoising step (batch 1, no CFG) and per VAE decode")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Count, print the table, write the JSON (and PNG); return the JSON payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="assumed accelerator peak in TFLOP/s for "
                        "the time floor (default %(default)g: H100 SXM dense bf16)")
    parser.add_argument("--caption-tokens", type=int, default=128, help="caption length (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder for flops.json and flops.png")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    latent = meta_model(ZImageDiT).to(DTYPE).eval()
    vae = meta_model(FluxVAEDecoder, use_conv_attention=False).to(DTYPE).eval()
    peak = args.peak_tflops * 1e12
    rows = [measure_size(size, latent, vae, args.caption_tokens, peak) for size in args.sizes]
    runtime = time.perf_counter() - start
    uncounted = uncounted_summary(rows)
    payload = dict(
        step="one DiT forward, batch 1, no CFG", caption_tokens=args.caption_tokens, dtype=str(DTYPE),
        peak_tflops=args.peak_tflops, torch=torch.__version__, counter="torch.utils.flop_counter.FlopCounterMode",
        uncounted=uncounted, paper_4k_seconds_per_step=PAPER_4K_SECONDS, runtime_s=runtime, sizes=rows,
    )
    print(format_table(rows))
    for row in rows:
        if row["size"] == "4k":
            paper = PAPER_4K_SECONDS["latent"] / PAPER_4K_SECONDS["l2p"]
            print(f"4K latent/L2P: {row['latent_over_l2p']:.1f}x in FLOPs (this count) vs {paper:.0f}x in time "
                  f"(paper: {PAPER_4K_SECONDS['latent']} s / {PAPER_4K_SECONDS['l2p']} s per step)")
    print(f"Caption {args.caption_tokens} tokens; floors = FLOPs / {args.peak_tflops:g} TFLOP/s (100% utilisation).")
    share = ", ".join(f"{k} {v:.2%}" for k, v in uncounted["elements_per_counted_flop"].items())
    print(f"Not counted (no FlopCounterMode formula; elementwise/norm/softmax/copy): {' '.join(uncounted['ops'])}; "
          f"their output elements per counted FLOP at the largest size: {share}.")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out / "flops.json") as handle:
        json.dump(payload, handle, indent=1)
    plotted = plot(rows, args.out / "flops.png")
    print(f"Wrote {args.out / 'flops.json'}" + (f" and {args.out / 'flops.png'}" if plotted else
                                                  " (no flops.png: matplotlib is not installed)")
          + f"; runtime {runtime:.1f} s.")
    return payload


if __name__ == "__main__":
    main()
