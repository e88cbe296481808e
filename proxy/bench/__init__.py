"""``nocp bench``: baseline vs nocp on seed scenarios and real agent traces.

Every request of every scenario is sent twice through real HTTP on loopback: straight to a
fake provider (the baseline) and through ``nocp serve`` to a second one. Both fakes bill the
way a provider does (prompt, cached and completion tokens, with OpenAI-style prefix caching),
so the difference is what nocp saves or costs. See :mod:`proxy.bench.runner`.
"""
