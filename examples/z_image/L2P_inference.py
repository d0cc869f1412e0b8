"""Text-to-image with the released L2P 1K checkpoint: the release's snippet, with the paths as arguments.

    python examples/z_image/L2P_inference.py \
        --dit models/L2P/model-1k-merge.safetensors \
        --text-encoder models/Tongyi-MAI/Z-Image-Turbo/text_encoder/*.safetensors \
        --tokenizer models/Tongyi-MAI/Z-Image-Turbo/tokenizer \
        --prompt "a red fox in the snow" --out l2p.png

Any L2P model set works, e.g. the tiny one from `l2p tiny-init DIR` (use --height 64 --width 64 --device cpu).
"""

import argparse

import torch
from diffsynth.pipelines.z_image_L2P import ModelConfig, ZImagePipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="the L2P DiT, e.g. model-1k-merge.safetensors")
    parser.add_argument("--text-encoder", nargs="+", required=True, help="the Z-Image text encoder shards")
    parser.add_argument("--tokenizer", required=True, help="the Z-Image tokenizer directory")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", default="l2p.png")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = ZImagePipeline.from_pretrained(
        torch_dtype=dtype,
        device=args.device,
        model_configs=[ModelConfig(path=[args.dit]), ModelConfig(path=args.text_encoder)],
        tokenizer_config=ModelConfig(path=args.tokenizer),
    )
    image = pipe(
        prompt=args.prompt,
        seed=42,
        rand_device=args.device,
        num_inference_steps=30,
        cfg_scale=2.0,
        height=args.height,
        width=args.width,
    )
    image.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
