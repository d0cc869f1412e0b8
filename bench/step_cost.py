"""Per-step cost of the L2P pixel DiT vs the latent Z-Image DiT (+ one VAE decode), side by side in one run.

Both models share one backbone width and see the same token grid (patch 16 on pixels vs patch 2 on 8x-down
latents), so the difference is the pixel embedder + detailer head vs final layer, plus the VAE decode the latent
path needs once per image. The VAE decoder is DiffSynth's real-size FluxVAEDecoder with random weights; a decode
costs about 10 TFLOP at 1024² (x4 per doubling), so it is timed only up to --vae-max-size. Above --warmup-max-size a
call takes tens of seconds, so it is timed once, without a warm-up call.
Writes <out> (JSON, atomically).
Run: .venv/bin/python bench/step_cost.py [--sizes 1024 2048] [--repeats 2] [--warmup-max-size 1024] [--vae-max-size 512]
"""

import argparse
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from bench_io import write_results
from diffsynth.models.flux_vae import FluxVAEDecoder
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.pipelines.z_image import model_fn_z_image_turbo

from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.backbone import run_time_embedder_in_weight_dtype

OUT = Path(__file__).resolve().parent / "results" / "step_cost.json"
BACKBONE = dict(dim=256, n_layers=4, n_refiner_layers=1, n_heads=8, n_kv_heads=8, cap_feat_dim=64,
                axes_dims=(8, 12, 12), axes_lens=(1024, 128, 128))


def best_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up; the best is kept")
    parser.add_argument("--warmup-max-size", type=int, default=1024, help="larger sizes: one timed call, no warm-up")
    parser.add_argument("--vae-max-size", type=int, default=512, help="time the VAE decode only up to this size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dtype = torch.float32  # CPUs without bf16 units emulate bf16 matmuls, several times slower
    pixel = ZImageL2PDiT(**BACKBONE, head_channels=(64, 128, 256, 512)).to(dtype).eval()
    latent = run_time_embedder_in_weight_dtype(ZImageDiT(**BACKBONE).to(dtype).eval())
    for model in (pixel, latent):
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
    vae = FluxVAEDecoder(use_conv_attention=False).to(dtype).eval()
    cap = torch.randn(32, BACKBONE["cap_feat_dim"], dtype=dtype)
    timestep = torch.tensor([500.0], dtype=dtype)

    load = os.getloadavg()[0]
    print(f"fp32, {args.threads} torch threads, 1-minute load {load:.2f}")
    print(f"{'size':>6} {'L2P step':>10} {'latent step':>12} {'VAE decode':>11} {'step ratio':>11} {'head share':>11}")
    rows = []
    with torch.no_grad():
        for size in args.sizes:
            image = torch.randn(1, 3, size, size, dtype=dtype)
            latents = torch.randn(1, 16, size // 8, size // 8, dtype=dtype)
            features = pixel.forward_features(image, timestep, [cap])
            small = size <= args.warmup_max_size
            repeats = args.repeats if small else 1
            t_pixel = best_time(lambda x=image: pixel(x, timestep, [cap]), repeats, small)
            t_head = best_time(lambda x=image, f=features: pixel.local_decoder(x, f), repeats, small)
            t_latent = best_time(
                lambda z=latents: model_fn_z_image_turbo(latent, latents=z, timestep=timestep, prompt_embeds=cap),
                repeats,
                small,
            )
            t_vae: Optional[float] = best_time(lambda z=latents: vae(z), 1) if size <= args.vae_max_size else None
            vae_text = f"{t_vae * 1e3:>9.1f}ms" if t_vae is not None else f"{'not run':>11}"
            print(f"{size:>6} {t_pixel * 1e3:>8.1f}ms {t_latent * 1e3:>10.1f}ms {vae_text} "
                  f"{t_pixel / t_latent:>10.2f}x {t_head / t_pixel:>10.1%}")
            rows.append({"size": size, "l2p_step_s": t_pixel, "latent_step_s": t_latent, "head_s": t_head,
                         "vae_decode_s": t_vae, "step_ratio": t_pixel / t_latent, "head_share": t_head / t_pixel})
    write_results(args.out, {"dtype": "float32", "threads": args.threads, "load_1min_start": load,
                             "load_1min_end": os.getloadavg()[0], "backbone": BACKBONE, "rows": rows})


if __name__ == "__main__":
    main()
