"""Per-prompt sampled gradients of linear layers, captured during one backward pass.

For y = x W^T the gradient wrt W of any objective is sum_t outer(delta_t, x_t) over tokens t
(delta_t = dJ/dy_t). Trajectories never interact in a forward pass, so a prompt's gradient is
that sum over its own tokens even when the backward runs on the sum over prompts. Forward hooks
keep each chosen layer's input; a tensor hook on its output receives delta when the backward
reaches the layer, and the layer's [G, S_l] sampled per-prompt gradient is formed at once and
handed to a sink, so no full per-prompt gradient ever exists.

Body layers see the padded [N, L, *] batch and are regrouped with the body layout. lm_head is
not hooked: the engine runs it chunk by chunk on the grouped head layout [G, C, *] (so the
[G, T, vocab] logits never exist at once) and hands each chunk's (delta, input) to `add_head`,
which sums the chunks' sampled gradients. Padding slots of the body layout repeat a real
token, so their inputs are zeroed; padding slots of the head layout have exactly zero delta
because the objective masks them with torch.where.
"""

from __future__ import annotations

import torch

from cropi.errors import CropiError
from cropi.influence.layout import Layout
from cropi.influence.params import is_conv1d, lm_head_is_tied, output_embedding

CHUNK_ELEMS = 1 << 21  # per-prompt gradient chunk G x rows x in (8 MiB in float32); benchmarks/influence_engine.py


def sampled_outer_sum(delta: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """Per-group sum over tokens of outer(delta_t, x_t), flattened and cut to sorted indices idx.

    delta [G, T, out], x [G, T, in], idx [S] into out*in. -> [G, S] in delta's dtype
    One batched matmul per chunk of output rows; sorted idx means a row chunk owns a contiguous
    range of idx, cut out at once.
    """
    groups, _, out_f = delta.shape
    in_f = x.shape[2]
    delta_t = delta.transpose(1, 2)  # [G, out, T] view; bmm takes it as a transposed operand
    if idx.numel() == out_f * in_f:  # every coordinate: no cut needed
        return torch.bmm(delta_t, x).reshape(groups, -1)  # [G, out*in]
    rows = max(1, chunk_elems // max(1, groups * in_f))
    local = idx % (rows * in_f)  # [S] index inside its chunk
    bounds = torch.searchsorted(idx, torch.arange(0, out_f + rows, rows, device=idx.device).clamp(max=out_f) * in_f).tolist()
    parts = []
    for c, r0 in enumerate(range(0, out_f, rows)):
        lo, hi = bounds[c], bounds[c + 1]
        if lo < hi:
            block = torch.bmm(delta_t[:, r0:r0 + rows], x)  # [G, rows, in]
            parts.append(block.view(groups, -1).index_select(1, local[lo:hi]))  # [G, hi-lo]
    return torch.cat(parts, dim=1)  # [G, S]


def embedding_outer_sum(d_embed: torch.Tensor, ids: torch.Tensor, body: Layout, vocab: int, idx: torch.Tensor,
                        chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """Input-side gradient of an embedding matrix [V, H] per group at sorted idx: row `token` of
    group g gets sum of dE_t over g's tokens t with that id. d_embed [N, L, H], ids [N, L]. -> [G, S] float32"""
    groups, hidden = body.num_groups, d_embed.shape[-1]
    tok = body.idx[body.valid]  # [T] flat positions
    grp = torch.arange(groups, device=tok.device)[:, None].expand_as(body.idx)[body.valid]  # [T]
    tok_ids, d_tok = ids.reshape(-1)[tok], d_embed.reshape(-1, hidden)[tok].float()  # [T], [T, H]
    result = torch.zeros(groups, idx.numel(), dtype=torch.float32, device=d_embed.device)  # [G, S]
    rows = max(1, chunk_elems // max(1, groups * hidden))
    bounds = torch.searchsorted(idx, torch.arange(0, vocab + rows, rows, device=idx.device).clamp(max=vocab) * hidden).tolist()
    for c, r0 in enumerate(range(0, vocab, rows)):
        lo, hi = bounds[c], bounds[c + 1]
        r1 = min(r0 + rows, vocab)
        sel = (tok_ids >= r0) & (tok_ids < r1)
        if lo == hi or not bool(sel.any()):
            continue
        part = torch.zeros(groups * (r1 - r0), hidden, device=d_embed.device)  # [G*(r1-r0), H]
        part.index_add_(0, grp[sel] * (r1 - r0) + tok_ids[sel] - r0, d_tok[sel])
        result[:, lo:hi] = part.view(groups, -1).index_select(1, idx[lo:hi] - r0 * hidden)
    return result


class LayerGradCapture:
    """Within `with`: hooks on every layer named in coords; sink(name, g [G, S_l]) per layer.

    Call finish(d_embed, input_ids) after the backward: it adds the input-embedding term of a
    tied lm_head and reports zeros for layers the objective never reached.
    """

    def __init__(self, model, coords: dict, body: Layout, grad_dtype: torch.dtype, sink):
        self.modules = dict(model.named_modules())
        self.coords, self.body, self.dtype, self.sink = coords, body, grad_dtype, sink
        self.head = output_embedding(model)
        self.tied = next((n for n in coords if self.modules[n] is self.head), None) if lm_head_is_tied(model) else None
        self.body_flat, self.body_pad = body.idx.reshape(-1), ~body.valid[..., None]  # [G*T], [G, T, 1]
        self.inputs: dict[str, torch.Tensor] = {}
        self.shared: dict[int, list] = {}  # id(x) -> [layers still to come, gathered x]: q/k/v, gate/up share x
        self.held: dict[str, torch.Tensor] = {}
        self.reported: set[str] = set()
        self.handles = []

    def __enter__(self):
        self.head_name = next((n for n in self.coords if self.modules[n] is self.head), None)
        self.handles = [self.modules[n].register_forward_hook(lambda m, a, o, n=n: self._forward(m, a, o, n))
                        for n in self.coords if n != self.head_name]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.inputs.clear()
        self.shared.clear()

    def add_head(self, delta: torch.Tensor, x: torch.Tensor) -> None:
        """One chunk of head positions: delta [G, C, vocab] = dJ/dlogits, x [G, C, hidden] the
        head's input. Sums the chunk's sampled lm_head gradient into the layer's total."""
        if self.head_name is None:
            return
        g = sampled_outer_sum(delta.to(self.dtype), x.to(self.dtype), self.coords[self.head_name])  # [G, S]
        held = self.held.get(self.head_name)
        self.held[self.head_name] = g if held is None else held + g

    def _forward(self, module, args, output, name):
        if name in self.inputs:
            raise CropiError(f"layer {name} ran twice in one forward (gradient checkpointing or a shared "
                             "module): the batched engine needs one call per layer")
        if output.requires_grad:
            self.inputs[name] = args[0]
            if module is not self.head:
                self.shared.setdefault(id(args[0]), [0, None])[0] += 1
            output.register_hook(lambda g: self._backward(name, g))

    def _grouped_input(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, in] -> [G, T, in] in the gradient dtype, padding slots zeroed (so their outer
        products vanish); gathered once for all layers that share this input."""
        entry = self.shared[id(x)]
        if entry[1] is None:
            grouped = x.reshape(-1, x.shape[-1]).index_select(0, self.body_flat).view(*self.body.idx.shape, -1)
            entry[1] = grouped.masked_fill_(self.body_pad, 0).to(self.dtype)
        entry[0] -= 1
        out = entry[1]
        if entry[0] == 0:
            del self.shared[id(x)]
        return out  # [G, T, in]

    def _backward(self, name: str, grad: torch.Tensor) -> None:
        x = self._grouped_input(self.inputs.pop(name))  # body layer: [N, L, *] -> [G, T, *]
        grad = grad.reshape(-1, grad.shape[-1]).index_select(0, self.body_flat).view(*self.body.idx.shape, -1)
        if is_conv1d(self.modules[name]):  # W is [in, out]: its gradient is sum_t outer(x_t, delta_t)
            g = sampled_outer_sum(x.to(self.dtype), grad.to(self.dtype), self.coords[name])
        else:  # nn.Linear, W [out, in]: sum_t outer(delta_t, x_t)
            g = sampled_outer_sum(grad.to(self.dtype), x.to(self.dtype), self.coords[name])
        self.sink(name, g)  # [G, S_l]
        self.reported.add(name)

    def finish(self, d_embed: torch.Tensor | None, input_ids: torch.Tensor) -> None:
        if self.head_name is not None and self.head_name in self.held:
            g = self.held.pop(self.head_name)
            if self.head_name == self.tied:
                vocab = self.modules[self.tied].weight.shape[0]
                extra = embedding_outer_sum(d_embed, input_ids, self.body, vocab, self.coords[self.tied])  # [G, S]
                g = (g.float() + extra).to(self.dtype)
            self.sink(self.head_name, g)
            self.reported.add(self.head_name)
        for name, idx in self.coords.items():  # a layer the objective does not reach has gradient 0
            if name not in self.reported:
                self.sink(name, torch.zeros(self.body.num_groups, idx.numel(), dtype=self.dtype, device=idx.device))
