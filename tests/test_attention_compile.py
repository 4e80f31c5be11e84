"""mixir.attention inside ``torch.compile(fullgraph=True)`` on the CPU (Triton interpreter): the
compiled module must trace as one graph (``fullgraph=True`` raises on a graph break) and match
eager in the forward and in the backward.

What made this work (see docs/attention.md, "torch.compile"): the library's mask factories are
constant-folded by Dynamo (``common.call.assume_constant``) instead of re-running the ``@mask``
declaration under tracing; masks get their content key at declaration, and the call only formats
a program key string (``kernels.program_key``); the kernels are generated, imported and launched
inside the custom ops ``mixir::attention_fwd`` / ``attention_bwd``, which Dynamo does not trace.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import mixir.attention as mxa

B, T, H, D = 1, 64, 2, 16


class Causal(torch.nn.Module):
    def forward(self, q, k, v):
        return mxa.causal_attention(q, k, v) * 2.0 + 1.0


class Document(torch.nn.Module):
    def forward(self, q, k, v, doc):
        return mxa.document_attention(q, k, v, doc).sin()


class SlidingWithScoreMod(torch.nn.Module):
    """A library factory with arguments, a user score_mod with data, and return_lse."""

    @staticmethod
    @mxa.score_mod
    def alibi(score, b, h, q, kv, slopes):
        return score + slopes[h] * (kv - q)

    def forward(self, q, k, v, slopes):
        o, lse = mxa.attention(q, k, v, mask=mxa.sliding_window_mask(24), score_mod=self.alibi,
                               data={"slopes": slopes}, return_lse=True)
        return o * lse.transpose(1, 2)[..., None].exp()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, T, H, D, generator=g) for _ in range(4))
    return q, k, v, do


def _doc(cut):
    return torch.tensor([0] * cut + [1] * 10 + [2] * (T - cut - 10), dtype=torch.int32)[None]


def _run(fn, extra):
    q, k, v, do = _inputs()
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    o = fn(qs, ks, vs, *extra)
    return (o.detach(), *torch.autograd.grad(o, (qs, ks, vs), do))


def _check(module, extras, backend="inductor"):
    """Compile ``module`` once (fullgraph) and compare every call in ``extras`` with eager.
    Returns the number of frames Dynamo compiled."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    for extra in extras:
        eager, comp = _run(module, extra), _run(compiled, extra)
        for name, a, b in zip(("o", "dq", "dk", "dv"), eager, comp):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    torch._dynamo.reset()
    return counter.frame_count


@pytest.mark.slow       # the document and factory tests below trace the same program with more in it
def test_causal_attention_compiles_fullgraph():
    assert _check(Causal(), [()], backend="aot_eager") == 1


@pytest.mark.slow   # 13 s of inductor; the aot_eager tests above keep torch.compile in the fast lane
def test_document_attention_compiles_fullgraph_and_new_data_reuses_the_graph():
    """New document ids (same shape) rebuild the block-mask metadata inside the same graph: no
    recompilation, and the results still match eager."""
    assert _check(Document(), [(_doc(20),), (_doc(37),)], backend="aot_eager") == 1


@pytest.mark.slow       # a score_mod under compile; the fast lane traces the document mask (data)
def test_factory_with_arguments_score_mod_and_lse_compile_fullgraph():
    slopes = torch.tensor([0.5, 0.25])
    assert _check(SlidingWithScoreMod(), [(slopes,)], backend="aot_eager") == 1
