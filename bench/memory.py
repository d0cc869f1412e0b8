"""Peak memory of the pixel path (L2P DiT step incl. the detailer head) vs the latent path (DiT step, VAE decode).

Measured on CPU in fp32, batch 1, under ``torch.no_grad()``: each configuration runs in a fresh subprocess and
reports its peak RSS (``ru_maxrss``) minus the RSS after imports. The detailer head is the real-size 1K head and
the VAE is DiffSynth's real-size ``FluxVAEDecoder`` (random weights); the backbone is NARROW (the tiny config's
width 128, 4 layers, for both DiTs) because the 6B backbone does not fit this CPU. The latent path's peak is the
larger of its DiT step and its VAE decode. VAE decodes above --vae-max-size are not run (about 10 TFLOP per 1K
decode, x4 per doubling); their peak is the analytic prediction scaled by the largest measured VAE point.

The analytic model counts the feature-map elements each forward holds at once (op by op, as the modules free
them); it is printed next to the measured peaks and extrapolated to real size in bf16 (6B backbone weights +
activations, the 1K head at 1K/2K and the 4K config's head at 4K), next to the paper's GPU bf16 4K peaks.
Writes <out> (JSON, atomically).
Run: .venv/bin/python bench/memory.py [--sizes 1024 2048] [--threads 2] [--vae-max-size 1024]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from bench_io import write_results
from diffsynth.models.flux_vae import FluxVAEDecoder, ResnetBlock, UpSampler
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.models.z_image_text_encoder import ZImageTextEncoder

from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.backbone import latent_velocity
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.detailer_head import DetailerHead
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.tiny import init_weights

OUT = Path(__file__).resolve().parent / "results" / "memory.json"
KINDS = ("pixel", "latent", "vae")
# The tiny config's backbone; without its head_* keys ZImageL2PDiT builds the real-size 1K head.
NARROW = {key: value for key, value in L2P_CONFIGS["tiny"].kwargs.items() if not key.startswith("head_")}
CAPTION_TOKENS = 32
VAE_DOWNSCALE, LATENT_CHANNELS = 8, 16
PAPER_4K_GB = {"pixel": 26.79, "latent": 43.78}  # the paper's GPU bf16 peaks at 4K (L2P; latent DiT + VAE decode)


def head_peak_elements(head: DetailerHead, height: int, width: int) -> int:
    """Most feature-map elements ``head.forward`` holds at once (batch 1, no grad; its inputs not counted).

    The DiT features are assumed to be on the bottleneck grid already (power-of-two patches: 1K, 4K, 8K, tiny).
    """
    stages = head.num_stages
    area = [height * width // 4**i for i in range(stages + 1)]
    widths = (head.get_submodule(f"enc{head.stage_names[0]}")[0].in_channels, *head.channels)
    feature_dim = head.bottleneck[0].in_channels - head.channels[-1]
    peaks, skips, incoming = [], 0, 0  # incoming: the pooled map entering the next stage (the image: not counted)
    for i in range(stages):  # encoder: input, conv out, SiLU out; then the pool next to the kept skip
        peaks.append(skips + incoming + 2 * widths[i + 1] * area[i])
        skips += widths[i + 1] * area[i]
        incoming = widths[i + 1] * area[i + 1]
        peaks.append(skips + incoming)
    bottleneck = head.bottleneck_channels * area[stages]
    peaks.append(skips + incoming + (widths[-1] + feature_dim) * area[stages] + 2 * bottleneck)
    incoming = bottleneck
    for i in reversed(range(stages)):  # decoder: up = input + upsampled + conv; dec = up out + concat + conv + SiLU
        up = head.decoder_channels[i]
        out = head.get_submodule(f"dec{head.stage_names[i]}")[0].out_channels
        peaks.append(skips + incoming + (incoming // area[i + 1] + up) * area[i])
        peaks.append(skips + (up + up + head.channels[i] + 2 * out) * area[i])
        incoming = out * area[i]
    peaks.append(skips + incoming + head.out_conv.out_channels * area[0])
    return max(peaks)


def vae_peak_elements(vae: FluxVAEDecoder, height: int, width: int) -> int:
    """Most feature-map elements ``FluxVAEDecoder.forward`` holds at once for an output of ``height`` x ``width``.

    Counted per ResNet block (input kept by the caller + norm/SiLU/conv/shortcut outputs) and per upsampler (input,
    upsampled, conv); the attention block sits at 1/8 resolution and is left out.
    """
    area = height * width // 4 ** sum(isinstance(block, UpSampler) for block in vae.blocks)
    peaks = []
    for block in vae.blocks:
        if isinstance(block, ResnetBlock):
            cin, cout = block.conv1.in_channels, block.conv1.out_channels
            tail = cin + 3 * cout if block.conv_shortcut is not None else cin + 2 * cout
            peaks.append(max(3 * cin, 2 * cin + cout, tail) * area)
        elif isinstance(block, UpSampler):
            channels = block.conv.in_channels
            peaks.append(channels * area + 2 * channels * 4 * area)
            area *= 4
    return max(peaks)


def backbone_activation_elements(dit: ZImageDiT, tokens: int) -> int:
    """Approximate activations of one main block at ``tokens`` tokens: 4 maps of width dim + 3 of the FFN width."""
    hidden = dit.layers[0].feed_forward.w1.out_features
    return tokens * (4 * dit.dim + 3 * hidden)


def parameter_bytes(model: torch.nn.Module, element_size: int) -> int:
    return sum(p.numel() for p in model.parameters()) * element_size


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def predict_narrow(kind: str, size: int) -> int:
    """Analytic fp32 bytes of one configuration as measured here: weights + the dominant activations."""
    with torch.device("meta"):
        model = build(kind)
    if kind == "pixel":
        tokens = (size // model.patch_size) ** 2
        elements = max(head_peak_elements(model.local_decoder, size, size), backbone_activation_elements(model, tokens))
    elif kind == "latent":
        elements = backbone_activation_elements(model, (size // VAE_DOWNSCALE // 2) ** 2)
    else:
        elements = vae_peak_elements(model, size, size)
    return parameter_bytes(model, 4) + 4 * elements


def predict_real_size(size: int, element_size: int = 2) -> Dict[str, int]:
    """Analytic bytes of the real-size 6B paths, by part: weights, backbone activations, head, VAE decode, totals."""
    config = L2P_CONFIGS["4k"] if size >= 4096 else L2P_CONFIGS["1k"]
    pixel, latent, vae = meta_model(**config.kwargs), meta_model(ZImageDiT), meta_model(FluxVAEDecoder)
    parts = dict(
        pixel_weights=parameter_bytes(pixel, element_size),
        pixel_backbone_activations=backbone_activation_elements(pixel, (size // pixel.patch_size) ** 2) * element_size,
        head=head_peak_elements(pixel.local_decoder, size, size) * element_size,
        latent_weights=parameter_bytes(latent, element_size) + parameter_bytes(vae, element_size),
        latent_backbone_activations=backbone_activation_elements(latent, (size // VAE_DOWNSCALE // 2) ** 2)
        * element_size,
        vae_decode=vae_peak_elements(vae, size, size) * element_size,
        text_encoder=parameter_bytes(meta_model(ZImageTextEncoder), element_size),
    )
    pixel_peak = parts["pixel_weights"] + max(parts["pixel_backbone_activations"], parts["head"])
    latent_peak = parts["latent_weights"] + max(parts["latent_backbone_activations"], parts["vae_decode"])
    return dict(parts, pixel=pixel_peak, latent=latent_peak)


def build(kind: str) -> torch.nn.Module:
    """The model one configuration runs (on the current default device)."""
    if kind == "pixel":
        return ZImageL2PDiT(**NARROW)
    if kind == "latent":
        return ZImageDiT(**NARROW)
    return FluxVAEDecoder(use_conv_attention=False)


def measure(kind: str, size: int, threads: int) -> Dict[str, Any]:
    """Run one configuration once in this process; peak RSS above the post-import baseline, in bytes."""
    torch.set_num_threads(threads)
    baseline = maxrss_bytes()
    model = build(kind).eval()
    init_weights(model, seed=0)
    generator = torch.Generator().manual_seed(0)
    timestep = torch.tensor([500.0])
    caption = [torch.randn(CAPTION_TOKENS, NARROW["cap_feat_dim"], generator=generator)]
    if kind == "pixel":
        forward, args = model, (torch.randn(1, 3, size, size, generator=generator), timestep, caption)
    else:
        latents = torch.randn(1, LATENT_CHANNELS, size // VAE_DOWNSCALE, size // VAE_DOWNSCALE, generator=generator)
        latent_step = (latent_velocity, (model, latents, timestep, caption))
        forward, args = latent_step if kind == "latent" else (model, (latents,))
    before = maxrss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        forward(*args)
    seconds = time.perf_counter() - start
    peak = maxrss_bytes()
    return dict(kind=kind, size=size, weights=parameter_bytes(model, 4), setup=before - baseline,
                peak=peak - baseline, seconds=seconds)


def measure_in_subprocess(kind: str, size: int, threads: int) -> Dict[str, Any]:
    """``measure`` in a fresh Python process (its own RSS high-water mark)."""
    command = [sys.executable, __file__, "--child", kind, "--sizes", str(size), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(sizes: List[int], measured: Dict[str, Dict[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Per size: pixel and latent peaks (measured, or VAE fitted from the model), predictions, ratio latent/pixel."""
    vae_points = sorted(measured["vae"])
    fit = measured["vae"][vae_points[-1]]["peak"] / predict_narrow("vae", vae_points[-1]) if vae_points else 1.0
    rows = []
    for size in sizes:
        predicted = {kind: predict_narrow(kind, size) for kind in KINDS}
        vae = measured["vae"].get(size, {}).get("peak")
        vae_measured = vae is not None
        if not vae_measured:
            vae = round(predicted["vae"] * fit)
        pixel, latent_dit = measured["pixel"][size]["peak"], measured["latent"][size]["peak"]
        latent = max(latent_dit, vae)
        rows.append(dict(size=size, pixel=pixel, latent_dit=latent_dit, vae=vae, vae_measured=vae_measured,
                         latent=latent, ratio=latent / pixel, predicted=predicted))
    return rows


def print_report(rows: List[Dict[str, Any]], threads: int, real: Dict[int, Dict[str, int]]) -> None:
    mib = 2**20
    print(f"Measured peak RSS above imports, fp32 CPU, batch 1, {threads} thread(s); narrow backbone (dim "
          f"{NARROW['dim']}, {NARROW['n_layers']} layers), real-size 1K head and FluxVAEDecoder:")
    print(f"{'size':>6} {'pixel MiB':>10} {'latent DiT':>11} {'VAE decode':>11} {'latent MiB':>11} "
          f"{'latent/pixel':>13}")
    for row in rows:
        vae = f"{row['vae'] / mib:.0f}{'' if row['vae_measured'] else '*'}"
        print(f"{row['size']:>6} {row['pixel'] / mib:>10.0f} {row['latent_dit'] / mib:>11.0f} {vae:>11} "
              f"{row['latent'] / mib:>11.0f} {row['ratio']:>12.2f}x")
    if not all(row["vae_measured"] for row in rows):
        print("  * not run: analytic prediction scaled by the largest measured VAE point")
    print("Analytic model (weights + dominant feature maps), predicted / measured:")
    for row in rows:
        cells = [f"{kind} {row['predicted'][kind] / mib:.0f}/{row[key] / mib:.0f} MiB"
                 for kind, key in (("pixel", "pixel"), ("latent", "latent_dit"), ("vae", "vae"))]
        print(f"{row['size']:>6}  " + ", ".join(cells))
    print("Real size, bf16, analytic, GB (weights; activations of one main block; the 4K config's head at 4K):")
    for size, peaks in real.items():
        gb = {key: value / 1e9 for key, value in peaks.items()}
        print(f"{size:>6}  pixel {gb['pixel']:.2f} = weights {gb['pixel_weights']:.2f} + max(backbone "
              f"{gb['pixel_backbone_activations']:.2f}, head {gb['head']:.2f}); latent + VAE decode "
              f"{gb['latent']:.2f} = weights {gb['latent_weights']:.2f} + max(backbone "
              f"{gb['latent_backbone_activations']:.2f}, VAE {gb['vae_decode']:.2f}); "
              f"ratio {peaks['latent'] / peaks['pixel']:.2f}x")
    encoder = real[max(real)]["text_encoder"] / 1e9
    print(f"  text encoder not included (+{encoder:.2f} GB to both while resident); the paper's 4K peaks (GPU "
          f"bf16, not comparable 1:1): L2P {PAPER_4K_GB['pixel']} GB vs latent + VAE decode {PAPER_4K_GB['latent']} GB")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Measure every configuration in subprocesses, print the tables, write the JSON; return the payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="square image sizes in pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement (default 2)")
    parser.add_argument("--vae-max-size", type=int, default=1024,
                        help="largest size whose VAE decode is run (default %(default)s); larger ones are predicted")
    parser.add_argument("--out", type=Path, default=OUT, help="output JSON file (default bench/results/memory.json)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.sizes[0], args.threads)))
        return {}
    measured: Dict[str, Dict[int, Dict[str, Any]]] = {kind: {} for kind in KINDS}
    for size in args.sizes:
        for kind in KINDS:
            if kind != "vae" or size <= args.vae_max_size:
                measured[kind][size] = measure_in_subprocess(kind, size, args.threads)
    rows = summarize(args.sizes, measured)
    real = {size: predict_real_size(size) for size in sorted({*args.sizes, 4096})}
    print_report(rows, args.threads, real)
    payload = dict(threads=args.threads, narrow_backbone=NARROW, torch=torch.__version__, rows=rows,
                   measurements=[m for by_size in measured.values() for m in by_size.values()],
                   real_size_bf16=real, paper_4k_gb=PAPER_4K_GB)
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
