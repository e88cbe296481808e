"""The output side: structured answers asked for in TOON and returned as JSON, and verbosity.

:class:`OutputFormat` is a feature of the exchange (``output`` config; off by default);
:func:`plan_for_schema` decides whether a JSON schema is worth answering in TOON,
:func:`decode_answer` turns an answer back into the JSON value (validated), and
:func:`toon_answer` writes a value as a model following nocp's instruction would (the fake
provider and the benchmark use it). :func:`chat_stream` / :func:`responses_stream` render a
whole answer as the protocol's stream.
"""

from proxy.output._feature import TOON_MARKER, OutputFormat, toon_instruction, verbosity_note
from proxy.output._render import chat_stream, responses_stream
from proxy.output._schema import LIST_SEP, ToonPlan, decode_answer, plan_for_schema, toon_answer

__all__ = [
    "LIST_SEP",
    "TOON_MARKER",
    "OutputFormat",
    "ToonPlan",
    "chat_stream",
    "decode_answer",
    "plan_for_schema",
    "responses_stream",
    "toon_answer",
    "toon_instruction",
    "verbosity_note",
]
