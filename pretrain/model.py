"""SeqVec / PEvoLM-style bidirectional LSTM language model.

input: token embedding (+ one-hot of the residue, as PEvoLM) -> optional LeakyReLU projection
layer 1: LSTM with projection (nn.LSTM(proj_size=...), so cuDNN runs it on GPUs)
layer 2: LSTM with projection + residual connection from layer 1
heads:   one next-residue softmax head shared by both directions; a PSSM head (log-softmax over
         the 20 standard residues) predicting the next position's PSSM column.

The backward language model reads each sequence reversed *within its own length*, so padding
stays at the end in both directions and a left-to-right LSTM never lets a real position see
padding or anything after it. With `shared_directions` (PEvoLM's single path) both directions
run through the same weights in one batched call ([forward; reversed] stacked on the batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

N_STANDARD = 20


@dataclass
class BiLSTMConfig:
    vocab_size: int = 30  # token ids of data_prep.vocab (pad = 0)
    embed_dim: int = 64  # learned token embedding size
    one_hot: bool = True  # concatenate a one-hot of the token to the embedding (PEvoLM)
    input_proj: int = 128  # size of a LeakyReLU projection of the input (0 = none)
    hidden: int = 512  # LSTM cell size
    proj: int = 128  # LSTM projection (output) size
    dropout: float = 0.1  # dropout on the input, between layers and before the heads
    shared_directions: bool = False  # one set of weights for both directions (PEvoLM) vs separate (SeqVec)
    pssm_head: bool = True  # predict the next position's PSSM column


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a [B, L, ...] tensor within its length; padding stays in place.

    The index map is its own inverse, so this also un-reverses."""
    B, L = x.shape[:2]
    t = torch.arange(L, device=x.device).unsqueeze(0).expand(B, L)
    n = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(t < n, n - 1 - t, t)
    return x.gather(1, idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x))


class Path(nn.Module):
    """Two LSTMP layers with a residual connection from layer 1 to layer 2."""

    def __init__(self, d_in: int, cfg: BiLSTMConfig):
        super().__init__()
        self.lstm1 = nn.LSTM(d_in, cfg.hidden, proj_size=cfg.proj, batch_first=True)
        self.lstm2 = nn.LSTM(cfg.proj, cfg.hidden, proj_size=cfg.proj, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, state=None):
        s1, s2 = state if state is not None else (None, None)
        h1, s1 = self.lstm1(x, s1)
        h2, s2 = self.lstm2(self.drop(h1), s2)
        return h1, h2 + h1, (s1, s2)


class BiLSTMLM(nn.Module):
    def __init__(self, cfg: BiLSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        d_in = cfg.embed_dim + (cfg.vocab_size if cfg.one_hot else 0)
        self.input_proj = nn.Linear(d_in, cfg.input_proj) if cfg.input_proj else None
        self.d_input = cfg.input_proj or d_in
        self.drop = nn.Dropout(cfg.dropout)
        self.fwd = Path(self.d_input, cfg)
        self.bwd = self.fwd if cfg.shared_directions else Path(self.d_input, cfg)
        self.lm_head = nn.Linear(cfg.proj, cfg.vocab_size)
        self.pssm_head = nn.Linear(cfg.proj, N_STANDARD) if cfg.pssm_head else None

    def inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Context-free input representation [B, L, d_input] (embedding layer of the embedder)."""
        x = self.embed(tokens)
        if self.cfg.one_hot:
            x = torch.cat([x, F.one_hot(tokens, self.cfg.vocab_size).to(x.dtype)], dim=-1)
        if self.input_proj is not None:
            x = F.leaky_relu(self.input_proj(x))
        return x

    def directional(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """Top-layer states in direction layout: [2B, L, proj], rows B.. are the reversed sequences."""
        x = self.drop(self.inputs(tokens))
        rev = reverse_within(x, lengths)
        if self.cfg.shared_directions:
            _, h, _ = self.fwd(torch.cat([x, rev], dim=0))
        else:
            h = torch.cat([self.fwd(x)[1], self.bwd(rev)[1]], dim=0)
        return self.drop(h)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """(next-token logits [2B, L, V], PSSM log-probs [2B, L, 20] or None), direction layout:
        row b < B at position t predicts token t+1 of sequence b; row B+b at t predicts position
        t+1 of the reversed sequence b, i.e. original position len-2-t."""
        h = self.directional(tokens, lengths)
        logits = self.lm_head(h)
        pssm = F.log_softmax(self.pssm_head(h).float(), dim=-1) if self.pssm_head is not None else None
        return logits, pssm

    @torch.no_grad()
    def layer_states(self, tokens: torch.Tensor, lengths: torch.Tensor, chunk: int = 0) -> list[torch.Tensor]:
        """[input, LSTM 1, LSTM 2] in original order, each direction concatenated ([B, L, 2*dim]).

        `chunk` > 0 runs the LSTMs over time chunks carrying their state, which is exact (the
        recurrence is the only thing crossing positions) and bounds memory for very long proteins."""
        x = self.inputs(tokens)
        rev = reverse_within(x, lengths)
        f1, f2 = self._run(self.fwd, x, chunk)
        b1, b2 = self._run(self.bwd, rev, chunk)
        b1, b2 = reverse_within(b1, lengths), reverse_within(b2, lengths)
        return [torch.cat([x, x], dim=-1), torch.cat([f1, b1], dim=-1), torch.cat([f2, b2], dim=-1)]

    @staticmethod
    def _run(path: Path, x: torch.Tensor, chunk: int):
        if not chunk or x.shape[1] <= chunk:
            h1, h2, _ = path(x)
            return h1, h2
        outs1, outs2, state = [], [], None
        for start in range(0, x.shape[1], chunk):
            h1, h2, state = path(x[:, start:start + chunk], state)
            outs1.append(h1)
            outs2.append(h2)
        return torch.cat(outs1, dim=1), torch.cat(outs2, dim=1)
