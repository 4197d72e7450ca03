"""Encoder-only protein transformer with masked-LM and supervised heads.

Pre-LayerNorm blocks, rotary positions (no learned position table, so any length runs) and
`F.scaled_dot_product_attention` with a key-padding mask. Optionally (`conv_kernel`) each block
also mixes neighbouring residues with a depthwise convolution, as ProteinBERT's local track and
Conformer do: attention alone learns local structure slowly. The input is residue ids only: no label
ever enters the network, which is the point of going encoder-only (DBMTL's decoder saw its labels
through teacher forcing). A `<cls>` token is prepended inside the model for the per-protein heads;
callers pass and receive residue positions only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.vocab import BOS_ID, PAD_ID, VOCAB_SIZE

N_SS3, N_SS8, N_LOCATIONS = 3, 8, 10


@dataclass
class ModelConfig:
    dim: int = 256  # width of the residual stream
    layers: int = 4  # number of transformer blocks
    heads: int = 4  # attention heads (dim must be divisible by heads)
    ffn_mult: float = 4.0  # feed-forward hidden width as a multiple of dim
    dropout: float = 0.1  # dropout on attention output, feed-forward output and heads
    rope_base: float = 10000.0  # rotary frequency base
    go_terms: int = 0  # size of the optional GO multi-label head (0 = no head)
    head_hidden: int = 0  # hidden width of per-protein heads (0 = linear heads)
    conv_kernel: int = 0  # width of a depthwise convolution over residues in every block (odd; 0 = none)
    compile: bool = False  # training on GPUs: torch.compile each block (fuses the elementwise work; one graph shared by all blocks)


def rotary_tables(length: int, head_dim: int, base: float, device, dtype=torch.float32):
    """cos/sin of shape [length, head_dim/2]; computed per call so any length works. Angles in
    float64: in float32 a position in the thousands loses ~1e-4 rad."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of x [B, H, L, Dh]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.ffn_mult * cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout
        self.conv = None
        if cfg.conv_kernel > 0:  # norm -> depthwise conv -> GELU -> pointwise, added to the stream
            self.norm_conv = nn.LayerNorm(cfg.dim)
            self.conv = nn.Conv1d(cfg.dim, cfg.dim, cfg.conv_kernel, padding=cfg.conv_kernel // 2, groups=cfg.dim)
            self.conv_out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, cos, sin, attn_mask, keep):
        """keep [B, N, 1]: 1 at real positions, 0 at padding (which the convolution must not see)."""
        if self.conv is not None:
            h = self.conv((self.norm_conv(x) * keep).transpose(1, 2)).transpose(1, 2)
            x = x + self.drop(self.conv_out(F.gelu(h)))
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


def _protein_head(dim_in: int, hidden: int, out: int, dropout: float) -> nn.Module:
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim_in, out))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, out))


class MultitaskEncoder(nn.Module):
    """tokens [B, L] residue ids padded with PAD_ID, lengths [B] -> dict of logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.dim % cfg.heads or (cfg.dim // cfg.heads) % 2:
            raise ValueError(f"model.dim={cfg.dim} must split into {cfg.heads} heads of even width")
        if cfg.conv_kernel < 0 or (cfg.conv_kernel and cfg.conv_kernel % 2 == 0):
            raise ValueError(f"model.conv_kernel={cfg.conv_kernel} must be 0 or odd")
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim, padding_idx=PAD_ID)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.mlm = nn.Linear(cfg.dim, VOCAB_SIZE)
        self.ss3 = nn.Linear(cfg.dim, N_SS3)
        self.ss8 = nn.Linear(cfg.dim, N_SS8)
        self.disorder = nn.Linear(cfg.dim, 1)
        # per-protein heads read [cls ; mean over residues]
        pooled = 2 * cfg.dim
        self.location = _protein_head(pooled, cfg.head_hidden, N_LOCATIONS, cfg.dropout)
        self.membrane = _protein_head(pooled, cfg.head_hidden, 1, cfg.dropout)
        self.go = _protein_head(pooled, cfg.head_hidden, cfg.go_terms, cfg.dropout) if cfg.go_terms > 0 else None
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False):
        """Hidden states [B, 1+L, dim] (position 0 is <cls>), optionally every layer's output."""
        b, n = tokens.shape
        cls = torch.full((b, 1), BOS_ID, dtype=tokens.dtype, device=tokens.device)
        x = self.embed(torch.cat([cls, tokens], dim=1))
        valid = torch.arange(n + 1, device=tokens.device)[None, :] <= lengths.to(tokens.device)[:, None]
        # No padding -> no mask, which lets SDPA pick the flash kernel on GPU.
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]
        cos, sin = rotary_tables(n + 1, self.cfg.dim // self.cfg.heads, self.cfg.rope_base, x.device, x.dtype)
        keep = valid.unsqueeze(-1).to(x.dtype)
        layers = [x] if return_layers else None
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, keep)
            if return_layers:
                layers.append(x)
        x = self.norm(x)
        return (x, valid, layers) if return_layers else (x, valid)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        h, valid = self.encode(tokens, lengths)
        res = h[:, 1:]
        res_valid = valid[:, 1:].unsqueeze(-1).to(res.dtype)
        mean = (res * res_valid).sum(1) / res_valid.sum(1).clamp(min=1.0)
        pooled = torch.cat([h[:, 0], mean], dim=-1)
        out = {
            "mlm": self.mlm(res),
            "ss3": self.ss3(res),
            "ss8": self.ss8(res),
            "disorder": self.disorder(res).squeeze(-1),
            "location": self.location(pooled),
            "membrane": self.membrane(pooled).squeeze(-1),
        }
        if self.go is not None:
            out["go"] = self.go(pooled)
        return out

    def compile_blocks(self) -> None:
        """torch.compile every block in place (parameter names unchanged), lazily at the first call.
        The blocks share one compiled graph. It fuses the norms, rotary embedding, GELU and residual
        adds around the matmuls, which otherwise take as much GPU time as the matmuls at the base
        size (docs/benchmarks.md, multitask GPU section)."""
        for block in self.blocks:
            block.compile()

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6*N for the matmuls plus the attention term 12*layers*dim*seq_len
    (QK^T and AV, forward + backward), as in the PaLM appendix."""
    return 6.0 * n_params + 12.0 * cfg.layers * cfg.dim * seq_len

