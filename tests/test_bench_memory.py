"""bench/memory.py: the analytic peak formulas against the bytes of the tensors a forward really allocates."""

import importlib.util
import sys
import weakref
from pathlib import Path

import torch
from diffsynth.models.flux_vae import FluxVAEDecoder
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from diffsynth_l2p.models.detailer_head import DetailerHead

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("bench_memory", BENCH / "memory.py")
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the op outputs alive at once (a storage counts once; outputs aliasing an input are views)."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.storages = 0, 0, set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.storages.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in inputs or key in self.storages:
                continue
            size = tensor.untyped_storage().nbytes()
            self.storages.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, key, size)
        return out


def allocated_peak(fn) -> int:
    with torch.no_grad(), LiveBytes() as tracker:
        fn()
    return tracker.peak


def test_head_formula_equals_the_allocated_peak():
    for channels, decoder in (((4, 8, 16, 32), None), ((3, 8, 16), (8, 8, 16))):
        head = DetailerHead(3, 3, 8, channels=channels, decoder_channels=decoder).eval()
        grid = 64 // head.stride
        image, features = torch.randn(1, 3, 64, 64), torch.randn(1, 8, grid, grid)
        peak = allocated_peak(lambda h=head, x=image, f=features: h(x, f))
        assert peak == 4 * memory.head_peak_elements(head, 64, 64)


def test_vae_formula_matches_the_allocated_peak_of_the_real_decoder():
    vae = FluxVAEDecoder(use_conv_attention=False).eval()
    latents = torch.randn(1, 16, 4, 4)
    measured = allocated_peak(lambda: vae(latents))
    predicted = 4 * memory.vae_peak_elements(vae, 32, 32)
    assert abs(measured - predicted) <= 0.01 * predicted  # GroupNorm's per-group statistics are not modelled


def test_real_size_prediction_and_the_latent_path_costs_more():
    peaks = memory.predict_real_size(1024)
    assert 12e9 < peaks["pixel"] < peaks["latent"]  # 6B weights in bf16 in both


def test_summary_scales_the_unmeasured_vae_point_by_the_measured_fit():
    measured = {kind: {size: {"peak": 1000 + size} for size in (64, 128)} for kind in ("pixel", "latent")}
    measured["vae"] = {64: {"peak": 2 * memory.predict_narrow("vae", 64)}}
    rows = memory.summarize([64, 128], measured)
    assert rows[0]["vae_measured"] and not rows[1]["vae_measured"]
    assert rows[1]["vae"] == round(2 * memory.predict_narrow("vae", 128))
    assert rows[1]["ratio"] == max(rows[1]["latent_dit"], rows[1]["vae"]) / rows[1]["pixel"]
