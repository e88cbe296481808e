"""All of nocp's benchmark code: ``nocp bench`` and the benchmarks it can run one by one.

- the suite (``nocp bench``; :mod:`proxy.bench.cli`): baseline vs nocp on seed scenarios and
  real agent traces. Every request of every scenario is sent twice through real HTTP on
  loopback: straight to a fake provider (the baseline) and through ``nocp serve`` to a second
  one. Both fakes bill the way a provider does (prompt, cached and completion tokens, with
  OpenAI-style prefix caching), so the difference is what nocp saves or costs. See
  :mod:`proxy.bench.runner`.
- one benchmark (``nocp bench NAME`` or ``python -m proxy.bench.NAME``): :mod:`~proxy.bench.overhead`,
  :mod:`~proxy.bench.fidelity`, :mod:`~proxy.bench.compress_speed`, :mod:`~proxy.bench.history`,
  :mod:`~proxy.bench.retrieval`, :mod:`~proxy.bench.hardening`.

Everything writes to ``--out`` (default ``./nocp-bench``), never into the source tree unless
told to: ``make bench`` passes ``--out benchmarks/results`` (the committed results) and
``--update-readme README.md``.
"""
