"""toolbox.nn: shapes, gradients, and agreement with reference implementations."""

from __future__ import annotations

import ast
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

import toolbox.nn
from tests.conftest import REPO
from toolbox.nn import (
    MLP,
    ChannelLayerNorm,
    ConcatSinusoidalPositionalEncoding,
    ConvBlock1d,
    ConvBlock2d,
    LearnedPositionalEncoding,
    MaskedLoss,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    MultiSequential,
    Patchify1d,
    Patchify2d,
    Permute,
    PrintShape,
    Reshape,
    Residual,
    RMSELoss,
    RotaryEmbedding,
    SequenceLoss,
    SinusoidalPositionalEncoding,
    SqueezeExcitation1d,
    SqueezeExcitation2d,
    Transpose,
    Unpatchify1d,
    Unpatchify2d,
    patchify_1d,
    patchify_2d,
    sinusoidal_embedding,
    sinusoidal_table,
    unpatchify_1d,
    unpatchify_2d,
)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def assert_gradients_flow(module: nn.Module, *inputs: torch.Tensor) -> None:
    """Backward from a random projection of the outputs reaches every input and parameter."""
    inputs = tuple(x.requires_grad_() if x.is_floating_point() else x for x in inputs)
    outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    # A random projection, not a plain sum: a normalized output sums to a constant.
    sum((out * torch.randn_like(out)).sum() for out in outputs).backward()
    for index, x in enumerate(inputs):
        if x.is_floating_point():
            assert x.grad is not None and torch.isfinite(x.grad).all(), f"input {index}"
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


# Conv blocks


CONV_CASES = [
    *[
        (2, norm, order)
        for norm in ["none", "batch", "group", "instance", "layer"]
        for order in ["post", "pre"]
    ],
    # 1D differs from 2D only in the conv and in the batch and instance norms.
    *[(1, norm, order) for norm in ["batch", "instance"] for order in ["post", "pre"]],
]


@pytest.mark.parametrize(("dims", "norm", "order"), CONV_CASES)
def test_conv_block_shapes_and_gradients(dims, norm, order):
    block_class = ConvBlock1d if dims == 1 else ConvBlock2d
    block = block_class(8, 16, 3, norm=norm, order=order, activation="gelu")
    x = torch.randn(2, 8, *[6] * dims)
    assert block(x).shape == (2, 16, *[6] * dims)
    assert_gradients_flow(block, x)


def test_conv_block_order_and_bias():
    post = ConvBlock2d(4, 8, norm="batch")
    pre = ConvBlock2d(4, 8, norm="batch", order="pre")
    assert post.norm.num_features == 8 and post.conv.bias is None  # the norm cancels a bias
    assert pre.norm.num_features == 4 and pre.conv.bias is not None
    assert ConvBlock2d(4, 8, norm="none").conv.bias is not None
    assert ConvBlock2d(4, 8, bias=True).conv.bias is not None


def test_conv_block_matches_functional_conv():
    block = ConvBlock1d(3, 5, 5, stride=2, norm="none", activation="tanh")
    x = torch.randn(2, 3, 10)
    expected = torch.tanh(F.conv1d(x, block.conv.weight, block.conv.bias, stride=2, padding=2))
    torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 5, 5)

    block = ConvBlock2d(3, 4, norm="none", activation="none", order="pre", dilation=2)
    image = torch.randn(1, 3, 7, 7)
    expected = F.conv2d(image, block.conv.weight, block.conv.bias, padding=2, dilation=2)
    torch.testing.assert_close(block(image), expected)


def test_channel_layer_norm_normalizes_each_position_over_channels():
    x = torch.randn(2, 6, 3, 4)
    out = ChannelLayerNorm(6)(x)
    mean = x.mean(dim=1, keepdim=True)
    variance = x.var(dim=1, unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(variance + 1e-5))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "weight"}, "norm must be one of"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"order": "middle"}, "order must be one of"),
        ({"groups": 3}, "divisible by groups"),
        ({"norm": "group", "num_groups": 5}, "divisible by num_groups"),
        ({"stride": 0}, "stride must be positive"),
    ],
)
def test_conv_block_rejects_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        ConvBlock2d(4, 8, **options)


# MLP


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_mlp_shapes_and_gradients(norm):
    mlp = MLP(5, [16, 8], 3, activation="silu", dropout=0.1, norm=norm)
    assert mlp(torch.randn(4, 5)).shape == (4, 3)
    assert mlp(torch.randn(2, 7, 5)).shape == (2, 7, 3)  # any leading dimensions
    assert_gradients_flow(mlp, torch.randn(4, 5))


def test_mlp_matches_hand_written_layers():
    mlp = MLP(5, [6], 2, activation="tanh")
    first, last = mlp[0], mlp[2]
    x = torch.randn(3, 5)
    expected = F.linear(torch.tanh(F.linear(x, first.weight, first.bias)), last.weight, last.bias)
    torch.testing.assert_close(mlp(x), expected)
    assert len(MLP(5, [], 2)) == 1  # no hidden layer: one linear layer


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dropout": 1.0}, "dropout must be in"),
        ({"hidden_features": [4, 0]}, "hidden_features must be positive"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"norm": "group"}, "norm must be one of"),
    ],
)
def test_mlp_rejects_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        MLP(**{"in_features": 5, "hidden_features": [4], "out_features": 2, **options})


# Positional encodings


def test_sinusoidal_table_matches_the_paper():
    table = sinusoidal_table(3, 4)
    # dim 4: frequencies 1 / 10000**(0 / 4) = 1 and 1 / 10000**(2 / 4) = 1 / 100
    expected = [[math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)] for p in range(3)]
    torch.testing.assert_close(table, torch.tensor(expected))


def test_sinusoidal_embedding_encodes_any_positions_in_either_layout():
    positions = torch.tensor([[0.0, 2.5], [999.0, 7.0]])  # any shape, not only indices
    features = sinusoidal_embedding(positions, 6)
    assert features.shape == (2, 2, 6) and features.dtype == torch.float32
    angles = [999.0 / 10000 ** (2 * i / 6) for i in range(3)]
    expected = [f(angle) for angle in angles for f in (math.sin, math.cos)]  # interleaved
    torch.testing.assert_close(features[1, 0], torch.tensor(expected))
    # Sines first, then cosines (DDPM's timestep layout): the same features, reordered.
    halves = sinusoidal_embedding(positions, 6, interleave=False)
    assert torch.equal(halves, torch.cat([features[..., 0::2], features[..., 1::2]], dim=-1))
    # The table is the embedding of the indices; half-precision positions get float32 angles.
    assert torch.equal(sinusoidal_table(5, 6), sinusoidal_embedding(torch.arange(5), 6))
    low_precision = sinusoidal_embedding(torch.arange(5, dtype=torch.float16), 6)
    assert torch.equal(low_precision, sinusoidal_table(5, 6))
    with pytest.raises(ValueError, match="needs an even dim, got 5"):
        sinusoidal_embedding(positions, 5)


def test_sinusoidal_encoding_adds_the_table():
    x = torch.randn(2, 5, 6)
    out = SinusoidalPositionalEncoding(6)(x)
    torch.testing.assert_close(out - x, sinusoidal_table(5, 6).expand(2, 5, 6))
    assert_gradients_flow(SinusoidalPositionalEncoding(6), x)


def test_concat_sinusoidal_encoding_appends_the_table():
    x = torch.randn(2, 5, 3)
    out = ConcatSinusoidalPositionalEncoding(4)(x)
    assert out.shape == (2, 5, 7)
    torch.testing.assert_close(out[..., :3], x)
    torch.testing.assert_close(out[..., 3:], sinusoidal_table(5, 4).expand(2, 5, 4))
    assert_gradients_flow(ConcatSinusoidalPositionalEncoding(4), x)


def test_learned_encoding_adds_one_vector_per_position():
    encoding = LearnedPositionalEncoding(max_len=8, dim=4)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(encoding(x) - x, encoding.embedding.weight[:5].expand(2, 5, 4))
    assert_gradients_flow(encoding, x)
    with pytest.raises(ValueError, match="exceeds this encoding's max_len"):
        encoding(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match=r"\(batch, length, 4\)"):
        encoding(torch.randn(1, 3, 5))


@pytest.mark.parametrize(
    "make", [SinusoidalPositionalEncoding, ConcatSinusoidalPositionalEncoding, RotaryEmbedding]
)
def test_sinusoidal_encodings_reject_odd_dims(make):
    with pytest.raises(ValueError, match="must be even"):
        make(5)


def test_rotary_rotates_each_pair_by_its_angle():
    rotary = RotaryEmbedding(head_dim=2)
    x = torch.tensor([1.0, 0.0]).expand(1, 1, 4, 2)  # (B, heads, L, head_dim)
    expected = [[math.cos(p), math.sin(p)] for p in range(4)]  # angle = position for pair 0
    torch.testing.assert_close(rotary.rotate(x)[0, 0], torch.tensor(expected))


def test_rotary_scores_depend_only_on_relative_position():
    rotary = RotaryEmbedding(head_dim=8)
    # The same query and key vector at every position: scores vary only through positions.
    query = torch.randn(8).expand(1, 2, 6, 8)
    key = torch.randn(8).expand(1, 2, 6, 8)
    rotated_query, rotated_key = rotary(query, key)
    scores = rotated_query @ rotated_key.transpose(-1, -2)  # (1, 2, 6, 6)
    torch.testing.assert_close(scores[..., 1:, 1:], scores[..., :-1, :-1])
    torch.testing.assert_close(rotated_query.norm(dim=-1), query.norm(dim=-1))
    assert_gradients_flow(rotary, torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8))


# Patches


def test_patchify_1d_matches_a_hand_built_example():
    x = torch.tensor([[[0.0, 1, 2, 3], [10, 11, 12, 13]]])  # (B=1, C=2, L=4)
    expected = torch.tensor([[[0.0, 1, 10, 11], [2, 3, 12, 13]]])  # (C, patch_len) per patch
    torch.testing.assert_close(patchify_1d(x, 2), expected)
    torch.testing.assert_close(Patchify1d(2, channels_last=True)(x.transpose(1, 2)), expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_patchify_1d_round_trips(channels_last):
    x = torch.randn(2, 3, 12)
    if channels_last:
        x = x.transpose(1, 2)
    patches = Patchify1d(4, channels_last)(x)
    assert patches.shape == (2, 3, 12)
    torch.testing.assert_close(Unpatchify1d(4, channels_last)(patches), x)
    assert_gradients_flow(Patchify1d(4, channels_last), x)


def test_patchify_2d_matches_a_hand_built_example():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify_2d(image, 2)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    torch.testing.assert_close(patches, torch.tensor([expected], dtype=torch.float))
    two_channels = patchify_2d(torch.cat([image, image + 100], dim=1), 2)
    torch.testing.assert_close(two_channels[0, 0], torch.tensor([0.0, 1, 4, 5, 100, 101, 104, 105]))


def test_patchify_2d_round_trips_and_matches_a_strided_conv():
    images = torch.randn(2, 3, 4, 6)
    patches = Patchify2d((2, 3))(images)
    assert patches.shape == (2, 4, 18)
    torch.testing.assert_close(Unpatchify2d((2, 3), image_size=(4, 6))(patches), images)
    square = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(unpatchify_2d(patchify_2d(square, 3), 3), square)
    # Channel-major patches: a linear layer over them is a conv with stride = kernel size.
    conv = nn.Conv2d(3, 5, (2, 3), stride=(2, 3))
    by_linear = F.linear(patches, conv.weight.flatten(1), conv.bias)  # (B, patches, 5)
    torch.testing.assert_close(by_linear, conv(images).flatten(2).transpose(1, 2))
    assert_gradients_flow(Patchify2d((2, 3)), images)


def test_patches_reject_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="length 10 is not divisible by patch_len 4"):
        patchify_1d(torch.randn(1, 2, 10), 4)
    with pytest.raises(ValueError, match="not divisible by patch_len"):
        unpatchify_1d(torch.randn(1, 2, 7), 2)
    with pytest.raises(ValueError, match="5x4 is not divisible by patch size 2x2"):
        patchify_2d(torch.randn(1, 1, 5, 4), 2)
    with pytest.raises(ValueError, match="do not form a square grid"):
        unpatchify_2d(torch.randn(1, 6, 4), 2)
    with pytest.raises(ValueError, match="cannot fill a 4x4 image"):
        unpatchify_2d(torch.randn(1, 6, 4), 2, image_size=(4, 4))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        Unpatchify2d(4, image_size=(6, 8))
    with pytest.raises(ValueError, match="patch_len must be positive"):
        Patchify1d(0)


# Attention


def copy_into_torch_attention(ours: nn.Module, dim: int, heads: int, kdim: int | None = None):
    """An nn.MultiheadAttention with the weights of ``ours``."""
    reference = nn.MultiheadAttention(dim, heads, batch_first=True, kdim=kdim, vdim=kdim)
    projections = [ours.q_proj, ours.k_proj, ours.v_proj]
    with torch.no_grad():
        if reference.in_proj_weight is not None:
            reference.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        else:
            reference.q_proj_weight.copy_(ours.q_proj.weight)
            reference.k_proj_weight.copy_(ours.k_proj.weight)
            reference.v_proj_weight.copy_(ours.v_proj.weight)
        reference.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    return reference.eval()


def right_padding_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    """(B, max_len), True at the first ``length`` positions of each row: the real tokens."""
    return torch.arange(max_len) < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_self_attention_matches_torch_multihead_attention(masked, causal):
    attention = MultiHeadSelfAttention(16, 4, causal=causal).eval()
    reference = copy_into_torch_attention(attention, 16, 4)
    x = torch.randn(3, 6, 16)
    key_mask = right_padding_mask([6, 4, 1], 6) if masked else None
    causal_mask = torch.ones(6, 6, dtype=torch.bool).triu(1) if causal else None  # True = blocked
    expected, _ = reference(
        x,
        x,
        x,
        key_padding_mask=None if key_mask is None else ~key_mask,
        attn_mask=causal_mask,
        need_weights=False,
    )
    torch.testing.assert_close(attention(x, key_mask), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_torch_multihead_attention():
    attention = MultiHeadCrossAttention(16, 2, context_dim=10).eval()
    reference = copy_into_torch_attention(attention, 16, 2, kdim=10)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 10)
    key_mask = right_padding_mask([5, 2], 5)
    expected, _ = reference(x, context, context, key_padding_mask=~key_mask, need_weights=False)
    torch.testing.assert_close(attention(x, context, key_mask), expected, atol=1e-5, rtol=1e-5)


def test_packed_self_attention_holds_torch_multihead_attention_parameters():
    torch.manual_seed(3)
    reference = nn.MultiheadAttention(16, 4, batch_first=True)
    torch.manual_seed(3)
    attention = MultiHeadSelfAttention(16, 4, packed=True)
    # The same keys and shapes, made and initialised in the same order: equal seeded values.
    ours, theirs = attention.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert list(ours) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key

    # Its state_dict, trained away from the initial values, gives torch's outputs.
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter))
    attention.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6, 16)
    key_mask = right_padding_mask([6, 4, 1], 6)
    expected, _ = reference.eval()(x, x, x, key_padding_mask=~key_mask, need_weights=False)
    torch.testing.assert_close(attention(x, key_mask), expected, atol=1e-5, rtol=1e-5)

    # Packed or not, the same weights compute the same attention.
    plain = MultiHeadSelfAttention(16, 4, causal=True, rotary=True)
    packed = MultiHeadSelfAttention(16, 4, causal=True, rotary=True, packed=True)
    with torch.no_grad():
        projections = [plain.q_proj, plain.k_proj, plain.v_proj]
        packed.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        packed.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        packed.out_proj.load_state_dict(plain.out_proj.state_dict())
    torch.testing.assert_close(packed(x, key_mask), plain(x, key_mask))
    unbiased = MultiHeadSelfAttention(8, 2, bias=False, packed=True)
    assert list(unbiased.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    assert unbiased(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_masked_keys_do_not_influence_outputs():
    key_mask = right_padding_mask([5, 3], 5)
    changed_at_padding = torch.where(key_mask[..., None], 0.0, torch.randn(2, 5, 1) * 100)

    cross = MultiHeadCrossAttention(8, 2)
    x, context = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(
        cross(x, context, key_mask), cross(x, context + changed_at_padding, key_mask)
    )

    # In self-attention the padded positions are queries too: compare the real ones.
    self_attention = MultiHeadSelfAttention(8, 2, rotary=True)
    x = torch.randn(2, 5, 8)
    before = self_attention(x, key_mask)[key_mask]
    after = self_attention(x + changed_at_padding, key_mask)[key_mask]
    torch.testing.assert_close(before, after)


def test_causal_attention_ignores_later_positions():
    attention = MultiHeadSelfAttention(8, 2, causal=True, rotary=True)
    x = torch.randn(1, 6, 8)
    later_changed = torch.cat([x[:, :3], torch.randn(1, 3, 8)], dim=1)
    torch.testing.assert_close(attention(x)[:, :3], attention(later_changed)[:, :3])


def test_attention_query_without_keys_gets_zero_attention():
    attention = MultiHeadSelfAttention(8, 2, causal=True)
    x = torch.randn(2, 4, 8)
    key_mask = torch.tensor([[True] * 4, [False] * 4])  # the second sequence is all padding
    out = attention(x, key_mask)
    torch.testing.assert_close(out[1], attention.out_proj.bias.expand(4, 8))
    assert_gradients_flow(attention, x, key_mask)


def test_rotary_attention_applies_the_rotation():
    plain = MultiHeadSelfAttention(8, 2)
    rotary = MultiHeadSelfAttention(8, 2, rotary=True)
    rotary.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 8)
    assert not torch.allclose(plain(x), rotary(x))
    torch.testing.assert_close(plain(x[:, :1]), rotary(x[:, :1]))  # position 0: no rotation


@pytest.mark.parametrize(
    "attention",
    [
        MultiHeadSelfAttention(8, 2, dropout=0.1),
        MultiHeadSelfAttention(8, 2, causal=True, rotary=True),
        MultiHeadSelfAttention(8, 2, dropout=0.1, rotary=True, packed=True),
        MultiHeadCrossAttention(8, 2, context_dim=6),
    ],
    ids=["self", "causal-rotary", "packed-rotary", "cross"],
)
def test_attention_shapes_and_gradients(attention):
    x = torch.randn(2, 5, 8)
    if isinstance(attention, MultiHeadCrossAttention):
        inputs = (x, torch.randn(2, 3, 6), right_padding_mask([3, 2], 3))
    else:
        inputs = (x, right_padding_mask([5, 2], 5))
    assert attention(*inputs).shape == (2, 5, 8)
    assert_gradients_flow(attention, *inputs)


def test_attention_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by num_heads \(4\)"):
        MultiHeadSelfAttention(10, 4)
    with pytest.raises(ValueError, match="rotary=True needs an even head size"):
        MultiHeadSelfAttention(6, 2, rotary=True)
    with pytest.raises(ValueError, match="dropout must be in"):
        MultiHeadCrossAttention(8, 2, dropout=1.5)
    attention = MultiHeadSelfAttention(8, 2)
    with pytest.raises(ValueError, match="key_mask must be a bool tensor"):
        attention(torch.randn(2, 5, 8), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"\(batch, length, 8\)"):
        attention(torch.randn(2, 5, 6))


# Squeeze-and-excitation


@pytest.mark.parametrize("dims", [1, 2])
def test_squeeze_excitation_matches_hand_written_reference(dims):
    block_class = SqueezeExcitation1d if dims == 1 else SqueezeExcitation2d
    block = block_class(8, reduction=4)
    x = torch.randn(2, 8, *[5] * dims)
    pooled = x.flatten(2).mean(dim=2)  # (B, C)
    hidden = torch.relu(pooled @ block.reduce.weight.T + block.reduce.bias)  # (B, 2)
    gates = torch.sigmoid(hidden @ block.expand.weight.T + block.expand.bias)  # (B, C)
    expected = x * gates.reshape(2, 8, *[1] * dims)
    torch.testing.assert_close(block(x), expected)
    assert block.reduce.out_features == 2
    assert_gradients_flow(block, x)


def test_squeeze_excitation_rejects_bad_inputs():
    with pytest.raises(ValueError, match="reduction must be positive"):
        SqueezeExcitation2d(8, reduction=0)
    with pytest.raises(ValueError, match=r"expects \(batch, 8, height, width\)"):
        SqueezeExcitation2d(8)(torch.randn(2, 8, 5))


# Shape layers and containers


def test_shape_layers_in_sequential():
    model = nn.Sequential(Transpose(1, 2), Permute(0, 2, 1), Reshape(2, -1))
    x = torch.randn(3, 4, 6)
    out = model(x)
    assert out.shape == (3, 2, 12)
    torch.testing.assert_close(out, x.reshape(3, 2, 12))
    assert_gradients_flow(model, x)
    with pytest.raises(ValueError, match="permutation"):
        Permute(0, 2)
    with pytest.raises(ValueError, match="at most one -1"):
        Reshape(-1, -1)


def test_print_shape_prints_and_passes_inputs_through(capsys):
    x = torch.randn(2, 3)
    assert PrintShape("encoder")(x) is x
    assert capsys.readouterr().out == "encoder: (2, 3)\n"
    y = torch.randn(4)
    outputs = PrintShape()(x, y)
    assert outputs[0] is x and outputs[1] is y
    assert capsys.readouterr().out == "(2, 3), (4,)\n"


class SumAndDifference(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


class Product(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def test_multi_sequential_chains_several_inputs_and_outputs(capsys):
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    chain = MultiSequential(SumAndDifference(), PrintShape("pair"), SumAndDifference())
    first, second = chain(a, b)
    torch.testing.assert_close(first, 2 * a)  # (a + b) + (a - b)
    torch.testing.assert_close(second, 2 * b)
    assert capsys.readouterr().out == "pair: (2, 3), (2, 3)\n"

    # A single output is passed on as one argument.
    chain = MultiSequential(SumAndDifference(), Product(), nn.Linear(3, 1))
    assert chain(a, b).shape == (2, 1)
    assert_gradients_flow(chain, a, b)


def test_residual_adds_the_shortcut():
    body = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    torch.testing.assert_close(Residual(body)(x), body(x) + x)
    projection = nn.Linear(4, 6)
    widened = Residual(nn.Linear(4, 6), shortcut=projection)
    torch.testing.assert_close(widened(x), widened.module(x) + projection(x))
    assert_gradients_flow(widened, x)


# Losses


@pytest.mark.parametrize(
    ("name", "reference"), [("mse", F.mse_loss), ("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)]
)
def test_masked_loss_averages_over_kept_elements(name, reference):
    prediction, target = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    mask = torch.rand(3, 4, 1) > 0.5  # broadcasts over the last dimension
    expanded = mask.expand(3, 4, 2)
    expected = reference(prediction[expanded], target[expanded])
    torch.testing.assert_close(MaskedLoss(name)(prediction, target, mask), expected)
    assert_gradients_flow(MaskedLoss(name), prediction, target, mask)


def test_masked_loss_ignores_nan_where_masked_and_is_zero_with_no_element():
    prediction = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    target = torch.where(mask, torch.randn(2, 3), torch.nan)  # missing targets as NaN
    loss = MaskedLoss("l1")(prediction, target, mask)
    loss.backward()
    torch.testing.assert_close(loss, F.l1_loss(prediction[mask], target[mask]))
    assert torch.isfinite(prediction.grad).all() and (prediction.grad[~mask] == 0).all()

    prediction.grad = None
    empty = MaskedLoss()(prediction, target, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert (prediction.grad == 0).all()


def test_masked_loss_rejects_bad_masks_and_names():
    with pytest.raises(ValueError, match="loss must be one of"):
        MaskedLoss("hinge")
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        MaskedLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"does not broadcast.*mask\[\.\.\., None\]"):
        MaskedLoss()(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=bool))


def test_sequence_loss_equals_the_loss_over_unpadded_steps():
    prediction, target = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    lengths = torch.tensor([5, 2, 0])
    target[1, 2:] = torch.nan  # padding may hold anything
    expected = F.mse_loss(
        torch.cat([prediction[b, :n] for b, n in enumerate(lengths)]),
        torch.cat([target[b, :n] for b, n in enumerate(lengths)]),
    )
    torch.testing.assert_close(SequenceLoss("mse")(prediction, target, lengths), expected)
    assert_gradients_flow(SequenceLoss(), prediction, target, lengths)
    assert (prediction.grad[1, 2:] == 0).all() and (prediction.grad[2] == 0).all()


def test_sequence_loss_cross_entropy_over_unpadded_steps():
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[0, 2, 1, 99], [1, 99, 99, 99]])  # 99: padding, not a class
    lengths = torch.tensor([3, 1])
    expected = F.cross_entropy(
        torch.cat([logits[0, :3], logits[1, :1]]), torch.tensor([0, 2, 1, 1])
    )
    torch.testing.assert_close(SequenceLoss("cross_entropy")(logits, labels, lengths), expected)
    empty = SequenceLoss("cross_entropy")(logits, labels, torch.tensor([0, 0]))
    assert empty.item() == 0.0


def test_sequence_loss_rejects_bad_lengths():
    loss = SequenceLoss()
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        loss(x, x, torch.tensor([4, 5]))
    with pytest.raises(ValueError, match=r"integer tensor of shape \(2,\)"):
        loss(x, x, torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match=r"start with \(batch, time\)"):
        loss(x, torch.randn(2, 3, 3), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="per-step loss must return"):
        SequenceLoss(lambda input, target: (input - target).abs())(x, x, torch.tensor([4, 2]))


def test_rmse_loss_matches_the_formula():
    prediction, target = torch.randn(4, 3), torch.randn(4, 3)
    loss = RMSELoss(eps=1e-8)(prediction, target)
    torch.testing.assert_close(loss, torch.sqrt(((prediction - target) ** 2).mean() + 1e-8))
    mse = sum(
        (p - t) ** 2
        for p, t in zip(prediction.flatten().tolist(), target.flatten().tolist(), strict=True)
    )
    assert loss.item() == pytest.approx(math.sqrt(mse / 12), abs=1e-6)
    assert_gradients_flow(RMSELoss(), prediction, target)


def test_rmse_loss_has_a_finite_gradient_at_zero_error():
    prediction = torch.randn(4, requires_grad=True)
    loss = RMSELoss()(prediction, prediction.detach().clone())
    loss.backward()
    assert loss.item() == pytest.approx(1e-4)  # sqrt(eps)
    assert (prediction.grad == 0).all()
    with pytest.raises(ValueError, match="eps must be non-negative"):
        RMSELoss(eps=-1.0)


# What the blocks are for

USERS_LIST = "Kept for the models users write"


def names_used_in(path) -> set[str]:
    """Names that the code of ``path`` imports, reads or reads as attributes (not its text)."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names)
    return used


def test_every_block_is_used_or_kept_for_users_with_a_reason():
    """Each export of toolbox.nn is used by the toolbox or its examples (a model, or another
    block), or the package docstring lists it, with its reason, as kept for user models."""
    sources = [*(REPO / "toolbox").rglob("*.py"), *(REPO / "examples").glob("*.py")]
    init = REPO / "toolbox" / "nn" / "__init__.py"
    used = set().union(*(names_used_in(path) for path in sources if path != init))
    listed = toolbox.nn.__doc__.split(USERS_LIST, 1)[1]
    kept = {
        name.strip()
        for line in listed.splitlines()
        if line.startswith("- ")
        for name in line[2:].split(":", 1)[0].split(",")
    }
    exported = set(toolbox.nn.__all__)
    assert kept <= exported, f"listed but not exported by toolbox.nn: {sorted(kept - exported)}"
    unused = exported - used
    assert not unused - kept, (
        f"{sorted(unused - kept)}: used by nothing in the toolbox or examples; use them, list "
        f"them under '{USERS_LIST}' in toolbox/nn/__init__.py with a reason, or delete them"
    )
    assert not kept - unused, (
        f"{sorted(kept - unused)}: used now; take them off the '{USERS_LIST}' list"
    )
