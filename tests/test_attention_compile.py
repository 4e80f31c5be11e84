"""mixir.attention inside ``torch.compile(fullgraph=True)`` on the CPU (Triton interpreter): the
compiled module must match eager in the forward and in the backward.

Status (torch 2.13): the public calls do NOT trace as one graph. Dynamo stops at two points in
mixir's Python, before the custom ops ``mixir::attention_fwd`` / ``attention_bwd`` are reached:

1. ``causal_attention`` / ``document_attention`` call the ``functools.lru_cache``-wrapped mask
   factories (``causal_mask()``, ``document_mask()``); Dynamo ignores the cache and re-runs the
   ``@mask`` declaration, whose ``inspect.signature(fn)`` fails under tracing
   (``getattr(fn, '__globals__')`` -> ObservedAttributeError -> ``Unsupported: Observed
   exception``);
2. with the mask declared outside, ``attention`` -> ``kernels.get_program`` calls
   ``hashlib.sha256`` (a C builtin Dynamo cannot trace: ``Unsupported: Attempted to call
   function marked as skipped``) - and would go on to generate and import the kernel module.

The two public-call tests are therefore ``xfail(strict=True)`` on ``torch._dynamo.exc.Unsupported``:
when mixir is fixed they XPASS and fail, so the marker must be removed. The third test shows that
everything else (block-mask building, the custom ops and their autograd) is compile-clean once
those two points are taken out of the trace (the mask factories return pre-declared masks,
``get_program`` is ``torch.compiler.assume_constant_result``).
"""
import pytest
import torch

import mixir.attention as mxa
from mixir.attention import kernels, library

B, T, H, D = 1, 64, 2, 16

_REASON = ("graph break in mixir's Python before the custom ops: the lru_cache'd mask factory "
           "re-runs the @mask declaration under Dynamo (inspect.signature -> getattr(fn, "
           "'__globals__') -> ObservedAttributeError), and kernels.get_program calls "
           "hashlib.sha256, which Dynamo cannot trace")


class Causal(torch.nn.Module):
    def forward(self, q, k, v):
        return mxa.causal_attention(q, k, v) * 2.0 + 1.0


class Document(torch.nn.Module):
    def forward(self, q, k, v, doc):
        return mxa.document_attention(q, k, v, doc).sin()


def _inputs():
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(B, T, H, D, generator=g) for _ in range(4))
    doc = torch.tensor([0] * 20 + [1] * 30 + [2] * (T - 50), dtype=torch.int32)[None]
    return q, k, v, do, doc


def _check(module, extra=()):
    q, k, v, do, _ = _inputs()
    torch._dynamo.reset()
    runs = []
    for fn in (module, torch.compile(module, fullgraph=True)):
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        o = fn(qs, ks, vs, *extra)
        runs.append((o.detach(), *torch.autograd.grad(o, (qs, ks, vs), do)))
    for name, a, b in zip(("o", "dq", "dk", "dv"), *runs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.xfail(strict=True, raises=torch._dynamo.exc.Unsupported, reason=_REASON)
def test_causal_attention_compiles_fullgraph():
    _check(Causal())


@pytest.mark.xfail(strict=True, raises=torch._dynamo.exc.Unsupported, reason=_REASON)
def test_document_attention_compiles_fullgraph():
    _check(Document(), (_inputs()[4],))


def test_custom_ops_compile_once_python_blockers_are_bypassed(monkeypatch):
    """Pins the diagnosis above: with the two blockers taken out of the trace, both modules
    compile as one graph and match eager (forward and backward)."""
    causal, document = library.causal_mask(), library.document_mask(True)
    monkeypatch.setattr(library, "causal_mask", lambda: causal)
    monkeypatch.setattr(library, "document_mask", lambda causal=True: document)
    monkeypatch.setattr(kernels, "get_program",
                        torch.compiler.assume_constant_result(kernels.get_program))
    _check(Causal())
    _check(Document(), (_inputs()[4],))
    torch._dynamo.reset()
