"""The convolutional network family (`--arch conv`): shapes of any image size, leading latent
dimensions, the conditional encoder's broadcasting over classes, gradients, and every latent kind
training a step on it."""

from __future__ import annotations

import pytest
import torch

from model.config.train import ModelConfig, TrainConfig
from model.core.labels import UNLABELLED
from model.core.schedules import Progress
from model.kinds.registry import KINDS, build_model, build_objective
from model.nets import conv
from model.nets.registry import get_network

SMALL = ModelConfig(conv_channels=(4, 8), hidden=(6,))
SHAPES = [(1, 28, 28), (3, 40, 32), (1, 7, 5), (3, 9, 13), (1, 3, 5), (3, 1, 1)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registered_as_conv():
    network = get_network("conv")
    assert (network.encoder, network.decoder, network.conditional_encoder) == (
        conv.encoder, conv.decoder, conv.conditional_encoder)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("config", [SMALL, ModelConfig(conv_channels=(4, 8, 8), res_blocks=1)])
def test_encoder_and_decoder_shapes(shape, config):
    """Any image size (smaller than 2^stages, odd, non-square) encodes to (B, F) and decodes to exactly (P, H, W)."""
    x = torch.rand(2, *shape)
    assert conv.encoder(config, shape, 5)(x).shape == (2, 5)
    for p in (shape[0], 2 * shape[0], 9 * shape[0]):  # Bernoulli, logistic, logistic mixture of 3
        out = conv.decoder(config, 3, (p, *shape[1:]))(torch.randn(2, 3))
        assert out.shape == (2, p, *shape[1:])
        assert torch.isfinite(out).all()


def test_encoder_treats_images_independently():
    """No batch statistics: an image's code does not depend on the rest of its batch."""
    encoder = conv.encoder(SMALL, (3, 9, 13), 4)
    x = torch.rand(5, 3, 9, 13)
    torch.testing.assert_close(encoder(x)[2:3], encoder(x[2:3]))


def test_encoder_says_what_it_expected():
    encoder = conv.encoder(SMALL, (1, 28, 28), 4)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\).*\(2, 1, 28, 27\)"):
        encoder(torch.rand(2, 1, 28, 27))
    with pytest.raises(TypeError, match="float images.*uint8"):
        encoder(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_decoder_leading_dimensions():
    """(K, B, D) decodes to (K, B, P, H, W), each latent as it would on its own; a lone latent (D,) too."""
    decoder = conv.decoder(SMALL, 3, (2, 7, 5))
    z = torch.randn(4, 2, 3)
    out = decoder(z)
    assert out.shape == (4, 2, 2, 7, 5)
    torch.testing.assert_close(out[1], decoder(z[1]))
    torch.testing.assert_close(out[3, 1], decoder(z[3, 1]))


def test_conditional_encoder_broadcasts_over_classes():
    """Conditions (num_classes, B, C) give (num_classes, B, out), each class as if encoded alone."""
    classes, batch = 3, 4
    encoder = conv.conditional_encoder(SMALL, (1, 7, 5), classes, 6)
    x = torch.rand(batch, 1, 7, 5)
    c = torch.eye(classes).unsqueeze(1).expand(classes, batch, classes)
    out = encoder(x, c)
    assert out.shape == (classes, batch, 6)
    for k in range(classes):
        torch.testing.assert_close(out[k], encoder(x, c[k]))
    assert not torch.allclose(out[0], out[1])  # the condition matters


@pytest.mark.parametrize("res_blocks", [0, 2])
def test_gradients_reach_every_parameter(res_blocks):
    config = ModelConfig(conv_channels=(4, 8), res_blocks=res_blocks, hidden=(6,), activation="elu")
    shape, classes = (3, 9, 13), 2
    x = torch.rand(3, *shape)
    networks = [(conv.encoder(config, shape, 4), lambda m: m(x)),
                (conv.decoder(config, 4, (6, 9, 13)), lambda m: m(torch.randn(2, 3, 4))),
                (conv.conditional_encoder(config, shape, classes, 4),
                 lambda m: m(x, torch.eye(classes).unsqueeze(1).expand(classes, 3, classes)))]
    for network, run in networks:
        run(network).square().sum().backward()
        for name, parameter in network.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_state_dict_keys_do_not_depend_on_the_image_size():
    """Keys name the parts (stages, their residual blocks, the linear head), whatever the image size."""
    config = ModelConfig(conv_channels=(4, 8), res_blocks=1)
    small, large = conv.encoder(config, (1, 7, 5), 4), conv.encoder(config, (1, 28, 28), 4)
    assert list(small.state_dict()) == list(large.state_dict())
    assert {key.split(".")[0] for key in small.state_dict()} == {"stages", "head"}
    assert "stages.1.blocks.0.conv2.weight" in small.state_dict()
    fresh = conv.encoder(config, (1, 7, 5), 4)
    fresh.load_state_dict(small.state_dict())
    x = torch.rand(2, 1, 7, 5)
    torch.testing.assert_close(fresh(x), small(x))


@pytest.mark.parametrize("as_uint8", [False, True], ids=["float", "uint8"])
@pytest.mark.parametrize("likelihood", [{}, {"likelihood": "logistic"}, {"likelihood": "logistic", "mixtures": 3}])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_trains_a_step_with_conv(kind, likelihood, as_uint8):
    """Built through the public config path, each kind's loss is finite and its gradients finite,
    for 8-bit images given as floats in [0, 1] or as uint8 (which the models scale on the way in)."""
    config = TrainConfig.of(kind=kind, arch="conv", input_shape=(3, 20, 12), class_labels=(0, 1),
                            conv_channels=(8, 16), latent_features=4, categorical_variables=2, categories=3,
                            **likelihood)
    model, objective = build_model(config), build_objective(config)
    assert isinstance(model.encoder, (conv.ConvEncoder, conv.ConditionalConvEncoder))
    assert isinstance(model.decoder, conv.ConvDecoder)
    levels = torch.randint(0, 256, (4, 3, 20, 12), dtype=torch.uint8)
    x = levels if as_uint8 else levels.float() / 255
    y = torch.tensor([0, UNLABELLED, 1, UNLABELLED])  # m2 enumerates both classes for the unlabelled ones
    loss, diagnostics = objective(model, x, y, Progress(epoch=0, step=0))
    assert loss.shape == () and torch.isfinite(loss)
    assert all(torch.isfinite(value).all() for value in diagnostics.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for p in model.decoder.parameters()))
