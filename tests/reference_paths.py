"""An independent reference for path patching: one frozen run per path, no shortcuts.

Written from the README's three steps, with hooks of its own (and reference_sites' layout
table for q/k/v slices); nothing from patchcore. Every head and MLP at every layer is
frozen to the base run (the engine skips the no-op freezes below the first sender).

senders:   [("head", layer, head, pos or None) | ("mlp", layer, None, pos or None)]
receivers: "logits" | "all" | [("q"|"k"|"v", layer, head) | ("mlp_in", layer, None)]
"""
from __future__ import annotations

import contextlib

import torch

import reference_sites as rs


def _record_inputs(hf, ids):
    """Per layer: the attention output projection's input (T, W) and the MLP's output (T, D)."""
    return rs.capture(hf, ids, "head")[1], rs.capture(hf, ids, "mlp")[1]


def path_metric(hf, base_ids, source_ids, answer, wrong, senders, receivers, metric="logit_diff"):
    f = rs.facts(hf)
    dh = f["d_head"]
    base_heads, base_mlps = _record_inputs(hf, base_ids)
    src_heads, src_mlps = _record_inputs(hf, source_ids)
    freeze = receivers != "all"
    recorded = {}

    with contextlib.ExitStack() as stack:
        for layer in range(f["layers"]):
            mine = [s for s in senders if s[1] == layer]

            def heads_in(m, args, layer=layer, mine=mine):
                x = base_heads[layer].clone().unsqueeze(0) if freeze else args[0].clone()
                for comp, _, head, pos in mine:
                    if comp == "head":
                        p = slice(None) if pos is None else pos
                        x[0, p, head * dh:(head + 1) * dh] = src_heads[layer][p, head * dh:(head + 1) * dh]
                return (x,) + tuple(args[1:])
            stack.callback(rs._module(hf, "head", layer).register_forward_pre_hook(heads_in).remove)

            def mlp_out(m, args, out, layer=layer, mine=mine):
                x = base_mlps[layer].clone().unsqueeze(0) if freeze else rs._tensor(out).clone()
                for comp, _, _, pos in mine:
                    if comp == "mlp":
                        p = slice(None) if pos is None else pos
                        x[0, p] = src_mlps[layer][p]
                return rs._swap(out, x)
            stack.callback(rs._module(hf, "mlp", layer).register_forward_hook(mlp_out).remove)
        for kind, layer, head in ([] if isinstance(receivers, str) else receivers):
            if kind == "mlp_in":
                def keep_in(m, args, layer=layer):
                    recorded[("mlp_in", layer)] = args[0][0].detach().clone()
                stack.callback(rs._module(hf, "mlp", layer).register_forward_pre_hook(keep_in).remove)
            else:
                def keep_out(m, args, out, kind=kind, layer=layer):
                    recorded[(kind, layer)] = rs._tensor(out)[0].detach().clone()
                stack.callback(rs._module(hf, kind, layer).register_forward_hook(keep_out).remove)
        step2 = hf(input_ids=torch.tensor([base_ids]), use_cache=False).logits[0, -1].detach().double()
    if isinstance(receivers, str):
        return rs.metric(metric, step2, answer, wrong)

    with contextlib.ExitStack() as stack:
        for kind, layer, head in receivers:
            if kind == "mlp_in":
                def put_in(m, args, layer=layer):
                    return (recorded[("mlp_in", layer)].unsqueeze(0),) + tuple(args[1:])
                stack.callback(rs._module(hf, "mlp", layer).register_forward_pre_hook(put_in).remove)
            else:
                sl = rs.feature_slice(hf, kind, head)

                def put_out(m, args, out, kind=kind, layer=layer, sl=sl):
                    x = rs._tensor(out).clone()
                    x[0, :, sl] = recorded[(kind, layer)][:, sl]
                    return rs._swap(out, x)
                stack.callback(rs._module(hf, kind, layer).register_forward_hook(put_out).remove)
        step3 = hf(input_ids=torch.tensor([base_ids]), use_cache=False).logits[0, -1].detach().double()
    return rs.metric(metric, step3, answer, wrong)
