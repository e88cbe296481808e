"""Imported only by the compression workers' fork server (see :mod:`proxy.workers`): load the
compressors and the tokenizer tables once, so every worker forked from it starts warm."""

from proxy.workers import warm

warm()
