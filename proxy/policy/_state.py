"""What the learned policy keeps in the session store, and the snapshot the dashboard shows.

- ``p:t:<hash of tenant>``: the tenant's posteriors, one blob per tenant (a
  :class:`TenantState`: per ``tool/content type`` the :class:`~proxy.policy.ArmStats` of each
  arm), kept ``policy.ttl_s`` after its last use. Posteriors are per tenant: what one tenant's
  traffic taught never steers another's compression, and nothing of a tenant's (its tool names)
  is read on another's requests.
- ``p:s:<hash of tenant, session, tool/content type>``: the arm chosen for that session, kept as
  long as the session (``sessions.ttl_s``), so every later request (and a retry) of the session
  compresses those outputs the same way: the same bytes, the prompt cache keeps hitting.
  Beside each pair, its content type's rewards over every tool are pooled (tool ``""``): a
  pair whose arms were not yet tried enough chooses from those.
- ``p:tenants``: the tenants that have posteriors (for :func:`snapshot`), at most
  :data:`MAX_TENANTS`.

Updates are read-modify-write of a blob (stores have no compare-and-set for blobs); one process
serialises its own (see :class:`~proxy.policy.LearnedPolicy`), so replicas sharing a store can
lose an observation when two update one tenant at the same moment: a bandit only learns a little
slower from that, it is never wrong.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from proxy.config import PolicyConfig
from proxy.policy._posterior import ArmStats, posterior
from proxy.sessions import SessionStore

__all__ = [
    "INDEX_KEY",
    "MAX_TENANTS",
    "KeyState",
    "TenantState",
    "best_arm",
    "pooled_key",
    "session_key",
    "snapshot",
    "tenant_key",
]

INDEX_KEY = "p:tenants"
MAX_TENANTS = 1000
TOOL_CHARS = 64  # a tool name is the client's: bounded in keys


class KeyState(msgspec.Struct, kw_only=True):
    """The arms of one (tool, content type) of a tenant."""

    tool: str
    content_type: str
    arms: dict[str, ArmStats] = msgspec.field(default_factory=dict)


class TenantState(msgspec.Struct, kw_only=True):
    """A tenant's posteriors, by ``tool/content type``."""

    tenant: str
    keys: dict[str, KeyState] = msgspec.field(default_factory=dict)


state_encoder = msgspec.json.Encoder()
state_decoder = msgspec.json.Decoder(TenantState)
index_decoder = msgspec.json.Decoder(list[str])


def _hash(*parts: str) -> str:
    raw = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def pooled_key(content_type: str) -> str:
    """The key of a content type's pooled stats (every tool's rewards; the tool is empty)."""
    return f"/{content_type}"


def tenant_key(tenant: str) -> str:
    """The blob key of ``tenant``'s posteriors."""
    return "p:t:" + _hash(tenant)


def session_key(tenant: str, session: str, key: str) -> str:
    """The blob key of the arm chosen for ``key`` (``tool/content type``) in a session."""
    return "p:s:" + _hash(tenant, session, key)


def _arm_row(name: str, stats: ArmStats) -> dict[str, Any]:
    p = posterior(stats)
    return {
        "arm": name,
        "pulls": stats.pulls,
        "observations": stats.n,
        "mean_reward_tokens": round(stats.mean, 3),
        "total_reward_tokens": round(stats.total, 1),
        "posterior": {"mu": round(p.mu, 3), "kappa": p.kappa, "alpha": p.alpha, "beta": round(p.beta, 3)},
    }


def best_arm(state: KeyState) -> str | None:
    """The arm with the highest posterior mean among those observed (None: none yet)."""
    seen = [(posterior(s).mu, name) for name, s in state.arms.items() if s.n]
    return max(seen)[1] if seen else None


async def snapshot(store: SessionStore, config: PolicyConfig | None = None) -> dict[str, Any]:
    """The policy's state as plain JSON-able data: per tenant and (tool, content type) the arms
    with their posterior parameters, pulls (sessions), observations (requests), mean reward (in
    tokens) and the best arm so far. Reading restarts the posteriors' idle timers."""
    cfg = config or PolicyConfig()
    ttl = cfg.ttl_s
    (raw,) = await store.get_blobs([INDEX_KEY], ttl_s=ttl)
    tenants = index_decoder.decode(raw) if raw else []
    blobs = await store.get_blobs([tenant_key(t) for t in tenants], ttl_s=ttl)
    out = []
    for blob in blobs:
        if not blob:
            continue
        state = state_decoder.decode(blob)
        keys = [
            {
                "tool": k.tool or "*",
                "pooled": not k.tool,
                "content_type": k.content_type,
                "best_arm": best_arm(k),
                "arms": [_arm_row(name, s) for name, s in sorted(k.arms.items())],
            }
            for _, k in sorted(state.keys.items())
        ]
        out.append({"tenant": state.tenant, "keys": keys})
    return {
        "enabled": cfg.enabled,
        "arms": [{"name": a.name, "budget_tokens": a.budget_tokens} for a in cfg.arms],
        "retrieval_penalty_tokens": cfg.retrieval_penalty_tokens,
        "tenants": out,
    }
