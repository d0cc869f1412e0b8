"""The entry points: ``python app.py`` and ``l2p demo`` options, configuration errors, and a real default start."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffsynth_l2p.cli import build_parser as build_cli_parser
from diffsynth_l2p.cli import main as cli_main
from diffsynth_l2p.demo.server import build_parser, main, parse_auth
from diffsynth_l2p.generate import read_png_parameters
from tests.demo_helpers import TIMEOUT, loopback_only, model_args, pixels, submit_generate

gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _loopback():
    with loopback_only():
        yield


def offline_env(**extra: str) -> dict:
    """The environment of an ``app.py`` subprocess: no downloads, no Hub."""
    return {**os.environ, "DIFFSYNTH_SKIP_DOWNLOAD": "True", "HF_HUB_OFFLINE": "1", **extra}


def test_defaults_bind_loopback_on_23231_without_share_or_auth():
    for args in (build_parser().parse_args([]), build_cli_parser().parse_args(["demo"])):
        assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 23231, False, None)
        assert (args.model, args.devices, args.workers_per_device, args.dtype) == (None, "auto", 1, "auto")
        assert (args.max_size, args.min_size, args.max_queue) == (None, None, 16)  # defaults follow the model


def test_auth_parsing():
    assert parse_auth(None) is None
    assert parse_auth("ann:se:cret") == ("ann", "se:cret")
    for bad in ("ann", "ann:", ":pw"):
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            parse_auth(bad)


def test_configuration_errors_exit_2_before_loading(capsys):
    for argv, message in (
        (["--devices", "gpu7"], "'gpu7' is not a device"),
        (["--min-size", "512", "--max-size", "256"], "--min-size 512 must be positive and at most --max-size 256"),
        (["--auth", "nopassword"], "--auth must be USER:PASSWORD"),
        (["--max-queue", "0"], "--max-queue must be >= 1, got 0"),
        (["--model", "/nonexistent/model"], "Model paths not found: /nonexistent/model"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "-1", "65536", "99999999"])
def test_a_port_out_of_range_is_one_line_and_exit_2_from_both_entry_points(tiny_model_set, capsys, port):
    with pytest.raises(SystemExit) as exit_info:
        main([*model_args(tiny_model_set), "--devices", "cpu", "--port", port])
    assert exit_info.value.code == 2
    message = f"--port {port} is out of range: use a port between 1 and 65535."
    assert capsys.readouterr().err == f"app.py: error: {message}\n"
    assert cli_main(["demo", *model_args(tiny_model_set), "--devices", "cpu", "--port", port]) == 2
    assert capsys.readouterr().err == f"l2p demo: error: {message}\n"


def test_a_port_in_use_is_one_line_and_exit_2_without_a_traceback(tiny_model_set):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        argv = [sys.executable, "app.py", *model_args(tiny_model_set), "--devices", "cpu", "--port", str(port)]
        done = subprocess.run(argv, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert done.stderr == f"app.py: error: port {port} on 127.0.0.1 is already in use: choose another --port.\n"


def test_app_py_without_arguments_serves_the_tiny_model_on_127_0_0_1_23231(tmp_path):
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 23231)) == 0:
            pytest.skip("port 23231 is already in use on this machine")
    env = offline_env()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "serving on http://127.0.0.1:23231/" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        result = submit_generate(gradio_client.Client("http://127.0.0.1:23231/", verbose=False), seed=5).result(TIMEOUT)
        assert pixels(result).shape == (64, 64, 3)
        assert "tiny-world student (default)" in read_png_parameters(result[2][0])["model"]
    finally:
        process.terminate()
        exit_code = process.wait(timeout=60)
    assert exit_code == 0 and "demo stopped" in log.read_text(), log.read_text()
