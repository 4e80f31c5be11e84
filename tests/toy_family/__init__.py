"""A toy family, registered only by the tests: running maxima ``S = max(S, x)``.

It shows what adding a family takes (docs/architecture.md, "How to add a family"): a package with
the family's role-named modules and nothing edited outside it —

- ``analysis.py``: recognise the algebra from the traced IR (never the name) and build a plan;
- ``runtime.py``: the compiled callable (here plain torch: ``torch.cummax``, no Triton);
- ``family.py``: the ``Family`` subclass and its instance ``FAMILY``;
- ``library.py``: its built-in mixer (``running_max``) as a ``LibraryEntry``.

An in-tree family ends its ``family.py`` with ``FAMILY = register(MyFamily())`` and is found by
discovery (every ``mixir/lowering/<pkg>/family.py``). The toy lives under ``tests/``, so the test
fixture makes the one ``register(FAMILY)`` call itself, and ``unregister`` removes it again: no
other test sees it.

No existing family accepts a running maximum (the update is nonlinear in the state, it has no
matrix state and no recurrent matmul, and it is not LTI), so once registered, ``classify`` routes
it here.
"""
