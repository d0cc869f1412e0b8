"""The demo's Gradio page and its ``/generate`` API: validation, dispatch to a worker, progress and results."""

import random
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from .dispatcher import Dispatcher, NoWorkerError, PoolStatus, QueueFullError
from .request import MAX_SEED, GenerationRequest, Limits, validate_request
from .worker import GeneratedImage, PipelineWorker

EXAMPLES = [
    "a red circle left of a blue square",
    "two yellow triangles above a large green square",
    "a small purple star in the center of a white background",
]


@dataclass(frozen=True)
class UISettings:
    limits: Limits
    default_size: int
    model_label: str
    default_steps: int = 30
    default_cfg: float = 2.0
    default_seed: int = 42


def status_text(status: PoolStatus) -> str:
    """One line: which workers are busy, which were retired, and how full the queue is."""
    states = [f"`{w.name}` {'retired' if w.retired else 'busy' if w.busy else 'idle'}" for w in status.workers]
    return (
        f"Workers {status.busy}/{status.active} busy: {' · '.join(states)} — queue {status.queued}/{status.max_queue}"
    )


def image_record(image: GeneratedImage) -> dict:
    """What the results panel and the API show for one image: the parameters that reproduce it, and where it ran."""
    return {**image.parameters, "worker": image.worker, "seconds": round(image.seconds, 3)}


def caption(request: GenerationRequest) -> str:
    return f"seed {request.seed} · {request.steps} steps · CFG {request.cfg_scale:g} · {request.width}x{request.height}"


def make_generate_fn(dispatcher: Dispatcher[PipelineWorker], limits: Limits) -> Callable:
    """The ``/generate`` handler: validate, wait for a worker, sample with a live progress bar, return the results."""

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

        progress(0, desc="Waiting for a free worker")
        try:
            images = dispatcher.run(lambda worker: worker.generate(request, progress_bar_cmd=sampling_bar))
        except (QueueFullError, NoWorkerError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            raise gr.Error(f"Generation failed: {error}") from error
        gallery = [(str(image.path), caption(image.request)) for image in images]
        files = [str(image.path) for image in images]
        return gallery, [image_record(image) for image in images], files, request.seed, status_text(dispatcher.status())

    return generate


def build_ui(dispatcher: Dispatcher[PipelineWorker], settings: UISettings) -> gr.Blocks:
    """The page: controls on the left, results (gallery, parameters, PNG downloads) and worker status on the right."""
    limits = settings.limits
    with gr.Blocks(title="L2P Z-Image", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(f"# L2P: pixel-space Z-Image\nModel: `{settings.model_label}`")
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
                status = gr.Markdown(status_text(dispatcher.status()), elem_id="status")
        generate_button.click(
            make_generate_fn(dispatcher, limits),
            inputs=[prompt, negative_prompt, steps, cfg_scale, width, height, seed, randomize_seed, num_images],
            outputs=[gallery, parameters, files, seed, status],
            api_name="generate",
            preprocess=False,  # raw values reach `validate_request`, whose errors name the field and its range
            concurrency_limit=None,  # the dispatcher queues and bounds requests
        )
        gr.Timer(1.0).tick(
            lambda: status_text(dispatcher.status()), outputs=status, queue=False, api_visibility="private"
        )
    return demo
