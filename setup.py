from setuptools import find_packages, setup

setup(
    name="diffsynth-l2p",
    version="0.1.0",
    description="L2P (latent-to-pixel) Z-Image for DiffSynth-Studio: pixel-space DiT, pipeline, training, demo.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `diffsynth.pipelines` ships only the one-line `z_image_L2P.py` re-export, so that
    # `from diffsynth.pipelines.z_image_L2P import ZImagePipeline` works with stock DiffSynth.
    packages=find_packages(include=["diffsynth_l2p", "diffsynth_l2p.*"]) + ["diffsynth.pipelines"],
    package_data={"diffsynth_l2p.tiny_world": ["assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "diffsynth>=2.1.12,<2.2",
        "torch>=2.4",
        "torchvision",
        "safetensors",
        "transformers",
        "modelscope",
        "gradio>=6,<7",
        "accelerate",
        "peft",
        "tqdm",
        "pillow",
        "numpy",
    ],
    extras_require={
        "test": ["pytest", "ruff", "gradio_client", "playwright", "matplotlib"],  # matplotlib: bench/flops.png
        "deepspeed": ["deepspeed"],  # train_run.sh / train_run_low_VRAM.sh (ZeRO-2, CPU optimizer offload)
    },
    entry_points={"console_scripts": ["l2p = diffsynth_l2p.cli:main"]},
)
