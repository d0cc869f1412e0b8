"""The demo's Gradio page and its ``/generate`` API, on Gradio's queue: validation, a worker, progress, results."""

import random
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from .request import MAX_SEED, GenerationRequest, Limits, validate_request
from .worker import GeneratedImage, WorkerPool

EXAMPLES = [
    "a red circle left of a yellow triangle",  # the shipped tiny-world student draws these two reliably
    "a red circle on the left",
    "a lighthouse on a cliff at dusk, oil painting",  # for real-size weights
]


@dataclass(frozen=True)
class UISettings:
    limits: Limits
    default_size: int
    model_label: str
    default_steps: int = 30  # the server passes the loaded model's defaults (``L2PConfig``)
    default_cfg: float = 2.0
    default_seed: int = 42
    max_queue: int = 16  # requests that may wait for a worker; Gradio refuses more as "queue is full"
    family_title: str = "Z-Image"  # the loaded DiT's source family (``families/``)


def image_record(image: GeneratedImage) -> dict:
    """What the results panel and the API show for one image: the parameters that reproduce it, and where it ran."""
    return {**image.parameters, "worker": image.worker, "seconds": round(image.seconds, 3)}


def caption(request: GenerationRequest) -> str:
    return f"seed {request.seed} · {request.steps} steps · CFG {request.cfg_scale:g} · {request.width}x{request.height}"


def make_generate_fn(pool: WorkerPool, limits: Limits) -> Callable:
    """The ``/generate`` handler: validate, sample on an idle worker with a live progress bar, return the results."""

    def generate(
        prompt: str,
        negative_prompt: str,
        steps: int,
        cfg_scale: float,
        width: int,
        height: int,
        seed: int,
        randomize_seed: bool,
        num_images: int,
        progress=gr.Progress(),  # noqa: B008 -- Gradio injects the tracker through this default
    ):
        if randomize_seed:
            seed = random.randint(0, MAX_SEED)
        try:
            request = validate_request(
                limits, prompt, negative_prompt, steps, cfg_scale, width, height, seed, num_images
            )
        except ValueError as error:
            raise gr.Error(f"Invalid request: {error}", print_exception=False) from None

        def sampling_bar(timesteps):
            return progress.tqdm(timesteps, desc="Sampling", unit="steps")

        with pool.take() as worker:
            try:
                images = worker.generate(request, progress_bar_cmd=sampling_bar)
            except Exception as error:  # the device's or the pipeline's: this request fails, the server serves on
                raise gr.Error(f"Generation failed on worker {worker.name}: {error}") from error
        gallery = [(str(image.path), caption(image.request)) for image in images]
        files = [str(image.path) for image in images]
        return gallery, [image_record(image) for image in images], files, request.seed

    return generate


def build_ui(pool: WorkerPool, settings: UISettings) -> gr.Blocks:
    """The page: controls on the left, results on the right; Gradio's bounded queue runs one request per worker."""
    limits = settings.limits
    with gr.Blocks(title=f"L2P {settings.family_title}", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(f"# L2P: pixel-space {settings.family_title}\nModel: `{settings.model_label}`")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder=EXAMPLES[0], elem_id="prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
                with gr.Row():
                    width = gr.Slider(
                        limits.min_size, limits.max_size, settings.default_size, step=limits.size_step, label="Width"
                    )
                    height = gr.Slider(
                        limits.min_size, limits.max_size, settings.default_size, step=limits.size_step, label="Height"
                    )
                steps = gr.Slider(limits.min_steps, limits.max_steps, settings.default_steps, step=1, label="Steps")
                cfg_scale = gr.Slider(limits.min_cfg, limits.max_cfg, settings.default_cfg, step=0.1, label="CFG scale")
                with gr.Row():
                    seed = gr.Number(settings.default_seed, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                    randomize_seed = gr.Checkbox(False, label="Random seed")
                num_images = gr.Slider(1, limits.max_images, 1, step=1, label="Number of images")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples([[example] for example in EXAMPLES], inputs=[prompt])
            with gr.Column():
                gallery = gr.Gallery(label="Results", format="png", columns=2, elem_id="gallery")
                parameters = gr.JSON(label="Parameters", open=True)
                files = gr.File(label="PNG files (parameters in their metadata)", file_count="multiple")
        generate_button.click(
            make_generate_fn(pool, limits),
            inputs=[prompt, negative_prompt, steps, cfg_scale, width, height, seed, randomize_seed, num_images],
            outputs=[gallery, parameters, files, seed],
            api_name="generate",
            preprocess=False,  # raw values reach `validate_request`, whose errors name the field and its range
            concurrency_limit=len(pool.workers),  # so a request that leaves the queue always finds an idle worker
        )
    return demo.queue(max_size=settings.max_queue)
