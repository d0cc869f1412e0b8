"""The autoencoder's convolution: the stock layer's numbers, and weights that do not depend on the thread count."""

import pytest
import torch

from diffsynth_l2p.tiny_world.autoencoder import TinyVAEDecoder, TinyVAEEncoder
from diffsynth_l2p.tiny_world.reproducible_conv import ReproducibleConv2d, conv2d_weight_grad
from diffsynth_l2p.tiny_world.shapes import sample_codec_images
from diffsynth_l2p.tiny_world.teacher import images_to_tensor, train_autoencoder


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (4, 2, 1), (1, 1, 0)])
def test_gradients_match_the_stock_convolution(kernel_size, stride, padding):
    torch.manual_seed(0)
    stock = torch.nn.Conv2d(5, 7, kernel_size, stride=stride, padding=padding)
    ours = ReproducibleConv2d(5, 7, kernel_size, stride=stride, padding=padding)
    ours.load_state_dict(stock.state_dict())
    image = torch.randn(3, 5, 12, 12)
    grads = []
    for layer in (stock, ours):
        x = image.clone().requires_grad_(True)
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weight_gradient_is_the_same_bits_with_one_and_two_threads(threads):
    torch.manual_seed(0)
    image, grad_out = torch.randn(32, 16, 32, 32), torch.randn(32, 32, 16, 16)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(conv2d_weight_grad(image, grad_out, kernel_size=4, stride=2, padding=1))
    assert torch.equal(*results)
    reference = torch.nn.grad.conv2d_weight(image, (32, 16, 4, 4), grad_out, stride=2, padding=1)
    assert (results[0] - reference).norm() < 1e-5 * reference.norm()  # sums of 8,192 products in another order


def test_autoencoder_training_gives_the_same_weights_with_one_and_two_threads(threads):
    images = images_to_tensor(list(sample_codec_images(64, seed=1)))
    weights = []
    for count in (1, 2):
        threads(count)
        encoder, decoder, _ = train_autoencoder(images, steps=25, batch_size=16)
        weights.append([tensor.clone() for half in (encoder, decoder) for tensor in half.state_dict().values()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_autoencoder_keeps_the_conv2d_state_dict_keys():
    for half in (TinyVAEEncoder(), TinyVAEDecoder()):
        convs = [module for module in half.modules() if isinstance(module, torch.nn.Conv2d)]
        assert convs and all(isinstance(module, ReproducibleConv2d) for module in convs)
        assert {key.rsplit(".", 1)[-1] for key in half.state_dict()} == {"weight", "bias", "latent_mean", "latent_std"}
