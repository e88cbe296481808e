"""What nocp does to one request: the holdout cohort, shadow mode and per-request control.

- **Holdout** (``experiment.holdout``): a stable share of sessions goes through unchanged, as
  the ``control`` cohort; the rest is ``treated``. A session's cohort is a hash of the
  experiment's name, the tenant and the session id, so every request of a session lands in
  the same cohort (on every replica), and a new experiment name draws the cohorts afresh. A
  request without a session id is its own session.
- **Shadow mode** (``mode: shadow``): the stages run on a copy of the request, the log says
  what they would have sent (``shadow_input_tokens``), and the client's original goes upstream.
- **Per-request control**: ``X-Nocp-Bypass: 1`` skips every stage and feature for the
  request; ``X-Nocp-Policy: auto | lossless-only | never`` says what the stages may do
  (``lossless-only``: no lossy cut, no aging, no history roll-up; ``never``: nothing). Both
  headers are nocp's own and never reach the upstream (:func:`proxy.upstream.forward_headers`
  drops them); an invalid value is a 400 in the protocol's error shape.

A request that nocp leaves alone (control, bypass, ``never``, shadow) goes upstream as the
client's bytes, with one exception needed to measure it: a streamed Chat Completions request
that did not ask for usage gets ``stream_options.include_usage`` (as every streamed request
does; the usage chunk is taken out of what the client gets), so its billed tokens are logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from compressors.markers import marker_ids
from proxy.config import Settings
from proxy.exceptions import BadRequest
from proxy.translog import TransactionLog

__all__ = [
    "BYPASS_HEADER",
    "NOCP_HEADERS",
    "POLICIES",
    "POLICY_HEADER",
    "Policy",
    "ShadowCuts",
    "Treatment",
    "cohort_of",
    "treatment_of",
]

Policy = Literal["auto", "lossless-only", "never"]
POLICIES: tuple[Policy, ...] = ("auto", "lossless-only", "never")
BYPASS_HEADER = "X-Nocp-Bypass"
POLICY_HEADER = "X-Nocp-Policy"
NOCP_HEADERS = frozenset({BYPASS_HEADER.lower(), POLICY_HEADER.lower()})
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
_SHOWN = 40  # characters of a bad header value quoted in the error


@dataclass(frozen=True, slots=True)
class Treatment:
    """What applies to one request.

    ``policy``: what the stages may do (``auto`` unless the client asked otherwise);
    ``runs_stages``: whether the stages run at all (not for control, bypass or ``never``);
    ``shadow``: they run on a copy and the original is sent; ``applies``: their result (and
    the features: retrieval tool, prompt-cache breakpoints) goes upstream."""

    policy: Policy = "auto"
    cohort: Literal["control", "treated"] | None = None
    bypass: bool = False
    shadow: bool = False

    @property
    def runs_stages(self) -> bool:
        """The stages run (for real or in shadow)."""
        return not self.bypass and self.cohort != "control" and self.policy != "never"

    @property
    def applies(self) -> bool:
        """What the stages and features produce is sent."""
        return self.runs_stages and not self.shadow


def cohort_of(experiment: str, holdout: float, tenant: str, session: str) -> Literal["control", "treated"]:
    """The cohort of ``session`` of ``tenant``: ``control`` for a stable ``holdout`` share of
    sessions, by a hash of the experiment's name, the tenant and the session id."""
    raw = f"{experiment}\0{tenant}\0{session}".encode("utf-8", "surrogatepass")
    point = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") / 2**64
    return "control" if point < holdout else "treated"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    getall = getattr(headers, "getall", None)
    values: list[str] = list(getall(name, ())) if getall is not None else []
    if getall is None and name in headers:
        values = [headers[name]]
    if len(values) > 1:
        raise BadRequest(f"{name}: sent more than once", param=name)
    return values[0].strip().lower() if values else None


def _bad(name: str, value: str, expected: str) -> BadRequest:
    shown = value[:_SHOWN] + ("..." if len(value) > _SHOWN else "")
    return BadRequest(f"{name}: expected {expected}, got {shown!r}", param=name)


def treatment_of(
    settings: Settings, headers: Mapping[str, str], tenant: str, record: TransactionLog
) -> Treatment:
    """The treatment of a request with ``headers`` from ``tenant``, whose session is
    ``record.session_id``; its figures go into ``record`` (experiment, cohort, mode, bypass,
    policy). Raises :class:`~proxy.exceptions.BadRequest` for an invalid header."""
    record.mode = settings.mode
    bypass_value = _header(headers, BYPASS_HEADER)
    policy_value = _header(headers, POLICY_HEADER)
    if bypass_value is not None:
        if bypass_value not in _TRUE | _FALSE:
            raise _bad(BYPASS_HEADER, bypass_value, "1 or 0")
        record.bypass = bypass_value in _TRUE
    policy: Policy = "auto"
    if policy_value is not None:
        if policy_value not in POLICIES:
            raise _bad(POLICY_HEADER, policy_value, " | ".join(POLICIES))
        policy = next(p for p in POLICIES if p == policy_value)
        record.policy = policy
    experiment = settings.experiment
    cohort: Literal["control", "treated"] | None = None
    if experiment.holdout > 0:
        session = record.session_id or record.transaction_id
        cohort = cohort_of(experiment.name, experiment.holdout, tenant, session)
        record.experiment, record.cohort = experiment.name, cohort
    return Treatment(policy=policy, cohort=cohort, bypass=record.bypass, shadow=settings.mode == "shadow")


class ShadowCuts:
    """Where lossy stages record their cuts in shadow mode: nowhere (nothing is sent, so
    nothing is ever retrieved), but markers carry ids as they would with retrieval on, so
    the shadow prompt has the size the real one would have."""

    marker_key = "nocp-shadow"  # ids of the right length; the markers are never sent

    def __init__(self, tool_name: str) -> None:
        self.tool_name = tool_name
        self._originals: dict[str, str] = {}

    def add_cut(self, ref: str, text: str, *, tool: str | None, content_type: str, kind: str) -> None:
        """Keep the original only for :meth:`original_of` (this request)."""
        self._originals[ref] = text

    def original_of(self, text: str) -> str | None:
        """The original of a cut this request made whose marker ``text`` carries."""
        return next((self._originals[r] for r in marker_ids(text) if r in self._originals), None)
