"""A ``Conv2d`` whose training gives the same weights whatever the number of CPU threads.

The stock CPU convolution (oneDNN) sums some of its gradients in an order that depends on how the threads split
the work: measured on a 2-core AVX2 host, the bias gradient of the autoencoder's 3-channel output layer differs
between 1 and 2 threads, and the weight gradient of some layer shapes between 1 and 3 or 4 threads, so two runs
of one recipe drift apart after a few hundred steps (docs/tiny-world.md, "Where the spread comes from: the
autoencoder").  Here the forward pass and the input gradient stay oneDNN's, the bias gradient is a plain sum and
the weight gradient is one matrix product per kernel offset (``grad_out^T @ shifted input``), computed on one thread,
so both sum in the same order for every thread count.  On a 2-core AMD EPYC host the matrix products already did
with several threads; on a 2-core Intel Xeon host they did not until they ran on one thread (the plain bias sum
did on both).
"""

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed matrix products on one thread: BLAS may split a long sum across threads (an Intel Xeon host
    did so here), and then its order depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def conv2d_weight_grad(
    image: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, stride: int, padding: int
) -> torch.Tensor:
    """``torch.nn.grad.conv2d_weight`` (square kernel, no groups or dilation) as one matrix product per offset."""
    channels = image.shape[1]
    out_channels, out_h, out_w = grad_out.shape[1:]
    padded = F.pad(image, (padding,) * 4).permute(0, 2, 3, 1)  # channels last: each offset is a strided view
    grad_rows = grad_out.permute(1, 0, 2, 3).reshape(out_channels, -1)  # [O, B * out_h * out_w]
    weight_grad = image.new_empty(out_channels, channels, kernel_size, kernel_size)
    with one_thread():
        for i in range(kernel_size):
            for j in range(kernel_size):
                rows = padded[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
                weight_grad[:, :, i, j] = grad_rows @ rows.reshape(-1, channels)
    return weight_grad


class _ReproducibleConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        image: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: int,
        padding: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(image, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(image, weight, bias, stride, padding)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], ...]:
        image, weight = ctx.saved_tensors
        needs_image, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        image_grad = weight_grad = bias_grad = None
        if needs_image:
            image_grad = torch.nn.grad.conv2d_input(image.shape, weight, grad_out, ctx.stride, ctx.padding)
        if needs_weight:
            weight_grad = conv2d_weight_grad(image, grad_out, weight.shape[-1], ctx.stride, ctx.padding)
        if needs_bias:
            bias_grad = grad_out.sum((0, 2, 3))
        return image_grad, weight_grad, bias_grad, None, None


class ReproducibleConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) with thread-count-independent gradients.

    Square kernels, one stride and padding for both axes, no groups, dilation or non-zero padding modes.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _ReproducibleConv2dFunction.apply(input, weight, bias, self.stride[0], self.padding[0])
