"""The learned compression policy: Thompson sampling over compression arms, per tool and
content type, with retrievals as the signal of a cut that took something needed.

Off by default (``policy.enabled``; needs retrieval). Each tool output the tool-output stage
could cut lossily (its tool's policy is ``auto``, it is at least
``compression.lossy_threshold_tokens`` characters) gets the arm of its *session* for its tool
and content type: one of ``policy.arms`` (lossless only, or a lossy ``budget_tokens``). The arm
is chosen the first time the session sends such an output and stored in the session store, so
every later request of the session, and a retry, compresses it the same way (the same bytes:
the provider's prompt cache keeps hitting). A new session's arm is drawn by Thompson sampling
from the tenant's posteriors for that tool and content type (after each arm was tried in
``policy.min_sessions`` sessions).

The reward of an arm in one request (one observation per request and ``tool/content type``):

    tokens its outputs saved as sent (a cut resent on a later turn saves again)
  - per retrieval of one of its cuts: ``policy.retrieval_penalty_tokens``
                                      + its share of the round's tokens
                                        (:func:`proxy.translog.retrieval_overhead_tokens`)
  - the tokens of earlier retrievals' answers put back in this request

so over a session the arm earns the tokens its cuts saved on every turn minus everything the
retrievals they caused cost. Rewards are in tokens, unbounded and of any scale; the posterior
is Normal-Gamma (unknown mean and variance), which needs no normalisation (see
:mod:`proxy.policy._posterior`). The requests of one session are not independent draws (the
same cuts are resent), so early posteriors are somewhat over-confident; trying every arm in a
few sessions first guards against locking in on one session's luck.

Posteriors are per tenant (no data crosses tenants) and live in the session store, shared by
replicas (see :mod:`proxy.policy._state` for the keys). The TransactionLog's ``policy_arms``
says which arm each ``tool/content type`` of a request had; :func:`snapshot` gives the
posteriors as plain data for the dashboard. Fail open: an error choosing arms leaves the
request with the default compression (recorded in ``fail_open``, stage ``policy``); an error
updating the posteriors is logged.

``nocp bench policy`` measures it on the SWE-agent traces with a simulated model that
retrieves more often the tighter the budget (:mod:`proxy.bench.policy`).
"""

from proxy.policy._feature import LearnedPolicy, Observation, PolicyRequest, arm_config
from proxy.policy._posterior import ArmStats, Posterior, draw, observe, posterior
from proxy.policy._state import best_arm, snapshot

__all__ = [
    "ArmStats",
    "LearnedPolicy",
    "Observation",
    "PolicyRequest",
    "Posterior",
    "arm_config",
    "best_arm",
    "draw",
    "observe",
    "posterior",
    "snapshot",
]
