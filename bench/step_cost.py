"""Per-step cost of the L2P pixel DiT vs the latent Z-Image DiT (+ one VAE decode), side by side in one run.

Both models share one backbone width and see the same token grid (patch 16 on pixels vs patch 2 on 8x-down
latents), so the difference is the pixel embedder + detailer head vs final layer, plus the VAE decode the latent
path needs once per image. The VAE decoder is DiffSynth's real-size FluxVAEDecoder with random weights.
Run: .venv/bin/python bench/step_cost.py [--sizes 256 512] [--repeats 3]
"""

import argparse
import os
import time
from typing import Callable

import torch
from diffsynth.models.flux_vae import FluxVAEDecoder
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.pipelines.z_image import model_fn_z_image_turbo

from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.backbone import run_time_embedder_in_weight_dtype

BACKBONE = dict(dim=256, n_layers=4, n_refiner_layers=1, n_heads=8, n_kv_heads=8, cap_feat_dim=64,
                axes_dims=(8, 12, 12), axes_lens=(1024, 128, 128))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
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

    print(f"fp32, {args.threads} torch threads, 1-minute load {os.getloadavg()[0]:.2f}")
    print(f"{'size':>6} {'L2P step':>10} {'latent step':>12} {'VAE decode':>11} {'step ratio':>11} {'head share':>11}")
    with torch.no_grad():
        for size in args.sizes:
            image = torch.randn(1, 3, size, size, dtype=dtype)
            latents = torch.randn(1, 16, size // 8, size // 8, dtype=dtype)
            features = pixel.forward_features(image, timestep, [cap])
            t_pixel = best_time(lambda x=image: pixel(x, timestep, [cap]), args.repeats)
            t_head = best_time(lambda x=image, f=features: pixel.local_decoder(x, f), args.repeats)
            t_latent = best_time(
                lambda z=latents: model_fn_z_image_turbo(latent, latents=z, timestep=timestep, prompt_embeds=cap),
                args.repeats,
            )
            t_vae = best_time(lambda z=latents: vae(z), 1)
            print(f"{size:>6} {t_pixel * 1e3:>8.1f}ms {t_latent * 1e3:>10.1f}ms {t_vae * 1e3:>9.1f}ms "
                  f"{t_pixel / t_latent:>10.2f}x {t_head / t_pixel:>10.1%}")


if __name__ == "__main__":
    main()
