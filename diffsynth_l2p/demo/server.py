"""Command-line options of the demo, and the server that owns the workers and the Gradio app."""

import argparse
import errno
import logging
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 23231

logger = logging.getLogger(__name__)


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options shared by ``python app.py`` and ``l2p demo``."""
    parser.add_argument(
        "--model",
        nargs="+",
        metavar="PATH",
        help="a model directory, or the L2P DiT file, text-encoder shards and tokenizer directory "
        "(default: the shipped tiny-world student)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="auto (every GPU, least used first, else cpu), cpu, cuda, or a list such as cuda:0,cuda:1",
    )
    parser.add_argument("--workers-per-device", type=int, default=1, help="pipelines per device (default 1)")
    parser.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait for a worker (>= 1); more are refused as busy"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="largest width/height allowed, a multiple of the model's size step (default 1024 rounded down to it)",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="smallest width/height allowed, a multiple of the model's size step (default 256, or the model's "
        "native size when smaller, rounded up to it)",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind; 0.0.0.0 exposes the demo to the network")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_demo_arguments(
        argparse.ArgumentParser(prog="app.py", description="L2P Z-Image Gradio demo on a pool of GPU or CPU workers.")
    )


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> ``(user, password)``; the password may contain ``:``."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must be USER:PASSWORD with both parts non-empty.")
    return user, password


def check_port(host: str, port: int) -> None:
    """Fail with one line, before any model loads, when ``host:port`` cannot be served on."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range: use a port between 1 and 65535.")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it: ignore TIME_WAIT
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is already in use: choose another --port.") from None
            raise ValueError(f"cannot serve on --host {host} --port {port}: {error.strerror or error}.") from None


class DemoServer:
    """Loads one pipeline per worker device, then serves the UI until `close`."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from ..pipelines.loading import resolve_model_files
        from ..pipelines.pixel_pipeline import family_and_config
        from ..validation import resolve_dtype
        from .devices import resolve_devices, worker_devices, worker_names
        from .request import size_limits
        from .ui import UISettings, build_ui
        from .worker import PipelineWorker, WorkerPool

        self.args = args
        self.auth = parse_auth(args.auth)
        if args.max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}.")
        model = args.model[0] if args.model and len(args.model) == 1 else args.model
        files = resolve_model_files(model)
        # No server paths in the page.
        model_label = Path(files["dit"]).name if args.model else "tiny-world student (default)"
        # The DiT's family picks the pipeline each worker loads (``load_pipeline``) and the page's title.
        family, config = family_and_config(files["dit"])
        native = min(config.default_height, config.default_width)
        size_limits(1, native, args.min_size, args.max_size)  # fail before loading anything
        devices = worker_devices(resolve_devices(args.devices), args.workers_per_device)
        check_port(args.host, args.port)
        self.output_dir = Path(tempfile.mkdtemp(prefix="l2p-demo-"))
        try:
            names = worker_names(devices)

            def load(index: int) -> PipelineWorker:
                device = devices[index]
                dtype = resolve_dtype(args.dtype, device)
                return PipelineWorker.load(names[index], files, model_label, device, dtype, self.output_dir)

            workers = [load(0)]
            # The model's size step is known once a pipeline is loaded: check the sizes before loading the others.
            limits = size_limits(workers[0].pipe.height_division_factor, native, args.min_size, args.max_size)
            workers += [load(index) for index in range(1, len(devices))]
            self.pool = WorkerPool(workers)
            self.settings = UISettings(
                limits, limits.clamp_size(native), model_label, default_steps=config.default_steps,
                default_cfg=config.default_cfg_scale, default_seed=config.default_seed,
                max_queue=args.max_queue, family_title=family.title,
            )
            self.blocks = build_ui(self.pool, self.settings)
        except BaseException:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            raise
        self.url: str | None = None
        logger.info("%d workers on %s; torch %s", len(workers), ", ".join(dict.fromkeys(devices)), torch.__version__)

    def start(self) -> str:
        """Bind and serve in the background; returns the local URL."""
        if self.args.host not in ("127.0.0.1", "localhost"):
            logger.warning("serving on %s: the demo is reachable from the network", self.args.host)
        _, self.url, _ = self.blocks.launch(
            server_name=self.args.host,
            server_port=self.args.port,
            share=self.args.share,
            auth=self.auth,
            allowed_paths=[str(self.output_dir)],
            prevent_thread_lock=True,
            show_error=True,
            ssr_mode=False,
            mcp_server=False,
            quiet=True,
        )
        logger.info("serving on %s", self.url)
        return self.url

    def close(self) -> None:
        """Stop the web server and delete the output files."""
        self.blocks.close(verbose=False)
        shutil.rmtree(self.output_dir, ignore_errors=True)
        logger.info("demo stopped")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl+C or SIGTERM, then shut down cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = DemoServer(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py``: like ``l2p demo``, configuration errors end with their message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
