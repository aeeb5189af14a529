"""Multi-head self- and cross-attention on ``F.scaled_dot_product_attention``.

Masks follow SDPA, not ``nn.MultiheadAttention``: ``key_mask`` is a (B, S) bool tensor that is
True where the key is a real token to attend to and False where it is padding, the inverse of
``nn.MultiheadAttention``'s ``key_padding_mask`` (pass ``~key_padding_mask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from toolbox.nn._checks import check_positive, check_probability
from toolbox.nn.positional import RotaryEmbedding


class _MultiHeadAttention(nn.Module):
    """Projections and the attention itself, shared by self- and cross-attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        key_value_dim: int,
        dropout: float,
        bias: bool,
        packed: bool = False,
    ) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("num_heads", num_heads)
        check_positive("context_dim", key_value_dim)
        check_probability("dropout", dropout)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.packed = packed
        if packed:  # nn.MultiheadAttention's parameters, created and initialised in its order
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * dim)) if bias else None
            self.out_proj = nn.Linear(dim, dim, bias)
            nn.init.xavier_uniform_(self.in_proj_weight)
            if bias:
                nn.init.zeros_(self.in_proj_bias)
                nn.init.zeros_(self.out_proj.bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias)
            self.k_proj = nn.Linear(key_value_dim, dim, bias)
            self.v_proj = nn.Linear(key_value_dim, dim, bias)
            self.out_proj = nn.Linear(dim, dim, bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, dim) -> (B, heads, L, head_dim)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _project(
        self, x: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from ``x``, keys and values from ``context``, each (B, heads, L, head_dim)."""
        if self.packed:  # self-attention only: context is x
            projected = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3 * dim)
            return tuple(self._split_heads(part) for part in projected.chunk(3, dim=-1))
        return (
            self._split_heads(self.q_proj(x)),
            self._split_heads(self.k_proj(context)),
            self._split_heads(self.v_proj(context)),
        )

    def _attend(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        key_mask: torch.Tensor | None,
        causal: bool,
        rotary: RotaryEmbedding | None,
    ) -> torch.Tensor:
        query, key, value = self._project(x, context)
        if rotary is not None:
            query, key = rotary(query, key)
        query_len, key_len = x.shape[1], context.shape[1]

        attn_mask = has_key = None
        if key_mask is not None:
            if key_mask.shape != (context.shape[0], key_len) or key_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_mask must be a bool tensor of shape (batch, key_length) = "
                    f"{(context.shape[0], key_len)}, True for real keys; got {key_mask.dtype} "
                    f"of shape {tuple(key_mask.shape)}"
                )
            attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, S): the same for heads, queries
            if causal:
                attn_mask = (
                    attn_mask
                    & torch.ones(query_len, key_len, dtype=torch.bool, device=x.device).tril()
                )
            # A query with no key to attend to gets a zero output: SDPA before torch 2.5 and
            # some backends give NaN there, which would poison the gradients.
            has_key = attn_mask.any(dim=-1, keepdim=True)
            attn_mask = attn_mask | ~has_key

        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )
        if has_key is not None:
            out = out * has_key
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, dim)

    def _check_input(self, x: torch.Tensor, dim: int, name: str) -> None:
        if x.ndim != 3 or x.shape[-1] != dim:
            raise ValueError(
                f"{type(self).__name__} expects {name} of shape (batch, length, {dim}), "
                f"got {tuple(x.shape)}"
            )


class MultiHeadSelfAttention(_MultiHeadAttention):
    """Multi-head self-attention over (B, L, dim) inputs.

    ``causal`` lets each position attend only to itself and earlier ones; ``rotary`` applies
    :class:`RotaryEmbedding` to queries and keys; ``dropout`` drops attention weights while
    training. See the module docstring for ``key_mask``.

    The projections are Linear layers ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``;
    ``packed=True`` holds the first three as nn.MultiheadAttention does instead, in one
    ``in_proj_weight`` (3 * dim, dim) and ``in_proj_bias`` (3 * dim), initialised as it
    initialises them (Xavier-uniform weight, zero biases): its state_dict then loads into
    this layer and back, and one matrix product projects all three.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        packed: bool = False,
    ) -> None:
        super().__init__(dim, num_heads, dim, dropout, bias, packed)
        if rotary and (dim // num_heads) % 2:
            raise ValueError(
                f"rotary=True needs an even head size, but dim / num_heads = {dim // num_heads}"
            )
        self.causal = causal
        self.rotary = RotaryEmbedding(dim // num_heads, rotary_base) if rotary else None

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, self.dim, "inputs")
        return self._attend(x, x, key_mask, self.causal, self.rotary)


class MultiHeadCrossAttention(_MultiHeadAttention):
    """Multi-head attention from (B, L, dim) queries to a (B, S, context_dim) context.

    ``context_dim=None`` means ``dim``. See the module docstring for ``key_mask`` (B, S).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        context_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        context_dim = dim if context_dim is None else context_dim
        super().__init__(dim, num_heads, context_dim, dropout, bias)
        self.context_dim = context_dim

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_input(x, self.dim, "queries")
        self._check_input(context, self.context_dim, "context")
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"queries and context must have the same batch size, got {x.shape[0]} "
                f"and {context.shape[0]}"
            )
        return self._attend(x, context, key_mask, False, None)
