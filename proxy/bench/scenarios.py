"""Seed scenarios: agent conversations whose data arrives as tool outputs, generated from a seed.

Three kinds, each in three sizes (``small``, ``medium``, ``large``):

- ``rag``: a documentation assistant answers three questions, each after a ``search_docs``
  call that returns a batch of knowledge-base pages (JSON, pretty-printed). Sizes are
  documents x words per document: 10 x 200, 50 x 300, 200 x 500 (split over the three
  searches). Every question is about one page whose key sentence the answer quotes.
- ``api``: an operations agent audits a payments API (Stripe-shaped objects, pretty-printed,
  paginated by 100) for failed and refunded charges, answers in JSON (``response_format``),
  then opens a review for the customer with the largest refunds. Sizes are customers and
  charges in all: 5 / 10, 20 / 50, 100 / 200.
- ``db``: a data agent runs ``SELECT *`` queries over an outdoor shop's products, Q3 orders
  and customers (rows as pretty-printed JSON), then answers three analytical questions in
  JSON, the last two from the rows it already has. Sizes are products / orders / customers:
  20 / 30 / 15, 100 / 200 / 80, 500 / 1000 / 400.

Every answer is computed from the generated data, so it quotes the exact ids, amounts and
commands a real agent would, and the benchmark can check which of them are still in what
nocp sends (fidelity). The same ``(kind, size, seed)`` always gives the same conversation,
byte for byte (:class:`random.Random` seeded with a string is stable across processes).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from proxy.bench import _vocab as v

__all__ = [
    "API_SIZES",
    "DB_SIZES",
    "KINDS",
    "RAG_SIZES",
    "SIZES",
    "Conversation",
    "Message",
    "Scenario",
    "api_scenario",
    "db_scenario",
    "rag_scenario",
    "seed_scenario",
    "seed_scenarios",
    "tool_call",
]

Message = dict[str, Any]
SIZES: Final = ("small", "medium", "large")
KINDS: Final = ("rag", "api", "db")
RAG_SIZES: Final = {"small": (10, 200), "medium": (50, 300), "large": (200, 500)}
API_SIZES: Final = {"small": (5, 10), "medium": (20, 50), "large": (100, 200)}
DB_SIZES: Final = {"small": (20, 30, 15), "medium": (100, 200, 80), "large": (500, 1000, 400)}
_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOW: Final = dt.datetime(2025, 10, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Conversation:
    """One agent conversation, replayed as the sequence of requests the agent sent.

    ``messages`` is the whole chat (OpenAI chat-completions form); request k is every message
    before the k-th assistant turn, and that turn is the answer. ``tools`` and
    ``response_format`` are sent with every request.
    """

    id: str
    messages: tuple[Message, ...]
    tools: tuple[Message, ...] = ()
    response_format: Message | None = None

    def turns(self) -> list[int]:
        """Indexes of the assistant turns that answer a request (each has a message before it)."""
        return [i for i, m in enumerate(self.messages) if m.get("role") == "assistant" and i > 0]

    def body(self, end: int, model: str) -> dict[str, Any]:
        """The request that asks for assistant turn ``end``: the messages before it."""
        body: dict[str, Any] = {"model": model, "messages": list(self.messages[:end])}
        if self.tools:
            body["tools"] = list(self.tools)
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named set of conversations measured together."""

    name: str
    family: str
    kind: Literal["seed", "trace"]
    title: str
    conversations: tuple[Conversation, ...]
    size: str | None = None
    structured_output: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def requests(self) -> int:
        """Requests in all conversations."""
        return sum(len(c.turns()) for c in self.conversations)


# ------------------------------------------------------------------------------ helpers


def _rng(kind: str, size: str, seed: int) -> random.Random:
    return random.Random(f"nocp-bench:{kind}:{size}:{seed}")


def _token(rng: random.Random, n: int, alphabet: str = _BASE62) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, int]]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _answer_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tool_call(
    rng: random.Random, name: str, args: Mapping[str, Any], alphabet: str = _BASE62
) -> tuple[str, Message]:
    """A random call id and the assistant message calling ``name`` with ``args``."""
    call_id = "call_" + _token(rng, 24, alphabet)
    msg: Message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
            }
        ],
    }
    return call_id, msg


def _result(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _tool(name: str, description: str, properties: Mapping[str, Any], required: Sequence[str]) -> Message:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": dict(properties), "required": list(required)},
        },
    }


def _object(required: bool = True, /, **props: Any) -> Message:
    """A JSON schema object of ``props`` (all required unless told), no other keys."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required else [],
        "additionalProperties": False,
    }


def _rows(**props: Any) -> Message:
    return {"type": "array", "items": _object(**props)}


_STR: Final = {"type": "string"}
_NUM: Final = {"type": "number"}
_INT: Final = {"type": "integer"}
_IDS: Final = {"type": "array", "items": _STR}
# The answers' schemas (one per conversation: every answer of it uses some of the keys)
_API_ANSWER: Final = _object(
    False,
    period=_object(**{"from": _STR, "to": _STR}),
    customers=_rows(
        customer_id=_STR,
        name=_STR,
        email=_STR,
        failed_total_usd=_NUM,
        refunded_total_usd=_NUM,
        charge_ids=_IDS,
        high_risk={"type": "boolean"},
    ),
    totals=_object(failed_usd=_NUM, refunded_usd=_NUM, customers_flagged=_INT, high_risk_customers=_INT),
    review_id=_STR,
    customer_id=_STR,
    customer_name=_STR,
    charge_ids=_IDS,
    refunded_total_usd=_NUM,
    status={"type": "string", "enum": ["open", "closed"]},
)
_DB_ANSWER: Final = _object(
    False,
    quarter=_STR,
    top_products=_rows(product_id=_INT, sku=_STR, name=_STR, revenue_usd=_NUM, units=_INT),
    top_customers_for_top_product=_rows(customer_id=_INT, full_name=_STR, email=_STR, spend_usd=_NUM),
    returns_from_germany=_rows(
        customer_id=_INT, full_name=_STR, order_id=_INT, product=_STR, refund_usd=_NUM
    ),
    reorder=_rows(product_id=_INT, sku=_STR, name=_STR, stock_qty=_INT, units_sold_q3=_INT),
)


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _date(rng: random.Random, start: dt.date, days: int) -> dt.date:
    return start + dt.timedelta(days=rng.randrange(days))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(v.FIRST_NAMES), rng.choice(v.LAST_NAMES)


def _postal(rng: random.Random, pattern: str) -> str:
    return "".join(
        str(rng.randrange(10)) if ch == "#" else rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") if ch.isalpha() else ch
        for ch in pattern
    )


# ------------------------------------------------------------------------------ RAG


def _doc_slots(rng: random.Random, product: tuple[str, str, str]) -> dict[str, str]:
    name, slug, res = product
    cfg, (lo, hi), _unit = rng.choice(v.CONFIG_KEYS)
    value = rng.randint(lo, hi)
    region, region2 = rng.sample(v.REGIONS, 2)
    commands = (
        f"helio {slug} list --region {region} --format table",
        f"helio {slug} update {_slug(res)}-{rng.randint(1, 40):02d} --set {cfg}={value}",
        f"helio {slug} backups list --limit {rng.choice((10, 20, 50))}",
        f"helio quotas show --service {slug} --region {region}",
        f"helio {slug} logs tail --since {rng.choice((5, 15, 30, 60))}m",
    )
    return {
        "p": name,
        "slug": slug,
        "res": res,
        "ver": f"{rng.randint(2, 6)}.{rng.randint(0, 14)}",
        "ver2": f"{rng.randint(3, 7)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
        "n": str(rng.randint(2, 500)),
        "n2": str(rng.randint(501, 4000)),
        "pct": str(rng.randint(1, 9)),
        "ms": str(rng.randint(12, 480)),
        "days": str(rng.choice((7, 14, 30, 60, 90))),
        "hours": str(rng.choice((6, 12, 24, 48))),
        "region": region,
        "region2": region2,
        "err": rng.choice(v.ERROR_CODES)[0],
        "cfg": cfg,
        "path": rng.choice(v.CONFIG_PATHS),
        "cmd": rng.choice(commands),
        "role": rng.choice(v.ROLES),
        "inst": rng.choice(v.INSTANCE_TYPES),
        "date": _date(rng, dt.date(2025, 1, 6), 300).isoformat(),
    }


def _doc_text(rng: random.Random, product: tuple[str, str, str], words: int, fact: str | None) -> str:
    sentences: list[str] = []
    count = len(fact.split()) if fact else 0
    while count < words:
        sentence = rng.choice(v.DOC_SENTENCES).format(**_doc_slots(rng, product))
        sentences.append(sentence)
        count += len(sentence.split())
    if fact:
        sentences.insert(rng.randint(1, len(sentences)), fact)
    paragraphs: list[str] = []
    i = 0
    while i < len(sentences):
        n = rng.randint(3, 5)
        paragraphs.append(" ".join(sentences[i : i + n]))
        i += n
    return "\n\n".join(paragraphs)


@dataclass(frozen=True, slots=True)
class _Fact:
    topic: str
    question: str
    sentence: str
    answer: str  # with {doc} and {title} left to fill
    query: str


def _fact(rng: random.Random, kind: str, product: tuple[str, str, str]) -> _Fact:
    name, slug, res = product
    region = rng.choice(v.REGIONS)
    path = rng.choice(v.CONFIG_PATHS)
    if kind == "rotation":
        hours = rng.choice((24, 48, 72, 96, 168))
        key = "key-" + _token(rng, 6, "0123456789abcdef")
        cmd = f"helio {slug} keys rotate --key-id {key} --grace-period {hours}h"
        return _Fact(
            "Rotating signing keys",
            f"If I rotate the signing key for {name}, how long does the old key keep working, "
            "and what is the exact command?",
            f"When you rotate a signing key with `{cmd}`, the previous {name} key stays valid for "
            f"{hours} hours so that running clients can switch to the new key.",
            f'According to {{doc}} ("{{title}}"), the old {name} signing key stays valid for {hours} '
            f"hours after rotation. The command is `{cmd}`; roll the new key out to every client "
            "within that window.",
            f"{name} rotate signing key grace period",
        )
    if kind == "quota":
        n = rng.randint(20, 400)
        cmd = f"helio quotas request --service {slug} --region {region} --limit {n * 2}"
        return _Fact(
            "Quotas and limits",
            f"What is the default limit of {res}s per project for {name} in {region}, and how do I "
            "get it raised?",
            f"By default {name} allows {n} {res}s per project in {region}; to raise the limit, file a "
            f"request with `{cmd}`, which support usually approves within 2 business days.",
            f'Per {{doc}} ("{{title}}"), {name} allows {n} {res}s per project in {region} by '
            f"default. Ask for more with `{cmd}`; approval usually takes up to 2 business days.",
            f"{name} {res} limit per project {region} quota increase",
        )
    if kind == "error":
        err, cause = rng.choice(v.ERROR_CODES)
        cfg, (lo, hi), unit = rng.choice(v.CONFIG_KEYS)
        value = rng.randint(lo, hi)
        return _Fact(
            "Troubleshooting failed requests",
            f"Our {name} clients keep failing with {err}. What does it mean and how do we fix it?",
            f"The error {err} means that {cause}; to fix it, set `{cfg}` to {value}{unit} in `{path}` "
            f"and restart the {slug} agent.",
            f'{{doc}} ("{{title}}") says {err} means that {cause}. Set `{cfg}` to {value}{unit} in '
            f"`{path}` and restart the {slug} agent.",
            f"{name} {err} error fix",
        )
    if kind == "backup":
        days = rng.randint(7, 35)
        at = f"{rng.randint(0, 5):02d}:{rng.choice((0, 15, 30, 45)):02d} UTC"
        return _Fact(
            "Backup and restore",
            f"How long does {name} keep automatic backups, when do they run, and where do I change "
            "the retention?",
            f"Automatic backups of {name} run daily at {at} and are kept for {days} days; change the "
            f"retention with `backup.retention_days` in `{path}`.",
            f'From {{doc}} ("{{title}}"): {name} takes automatic backups daily at {at} and keeps '
            f"them for {days} days. Change `backup.retention_days` in `{path}` to keep them longer.",
            f"{name} automatic backup retention schedule",
        )
    ms = rng.randint(18, 240)
    clients = rng.choice((500, 1000, 2500, 5000, 10000))
    inst = rng.choice(v.INSTANCE_TYPES)
    date = _date(rng, dt.date(2025, 6, 2), 110).isoformat()
    return _Fact(
        "Performance and load testing",
        f"What p99 latency did {name} reach in the most recent load test, with how many clients "
        "and on which instance type?",
        f"In the load test of {date}, {name} kept p99 latency at {ms} ms with {clients} concurrent "
        f"clients on {inst} instances in {region}.",
        f'{{doc}} ("{{title}}") reports the load test of {date}: p99 latency {ms} ms with {clients} '
        f"concurrent clients on {inst} instances in {region}.",
        f"{name} load test p99 latency concurrent clients",
    )


def rag_scenario(size: str, seed: int = 0) -> Scenario:
    """A documentation assistant answering three questions from knowledge-base searches."""
    documents, words = RAG_SIZES[size]
    rng = _rng("rag", size, seed)
    kinds = rng.sample(("rotation", "quota", "error", "backup", "loadtest"), 3)
    targets = rng.sample(v.PRODUCTS, 3)
    ids = rng.sample(range(10_000, 99_999), documents)
    system = (
        "You are the documentation assistant of Helio Cloud. Before answering, search the "
        "knowledge base with search_docs. Answer precisely: quote commands, numbers, limits and "
        "error codes exactly as the documentation states them, and cite the document ids you used."
    )
    messages: list[Message] = [{"role": "system", "content": system}]
    start = 0
    for batch, kind, product in zip(_split(documents, 3), kinds, targets, strict=True):
        fact = _fact(rng, kind, product)
        target_rank = rng.randint(0, min(2, batch - 1))
        results: list[Message] = []
        scores = sorted((round(rng.uniform(0.31, 0.97), 3) for _ in range(batch)), reverse=True)
        title = doc_id = ""
        for rank in range(batch):
            is_target = rank == target_rank
            prod = product if is_target or rng.random() < 0.3 else rng.choice(v.PRODUCTS)
            topic = fact.topic if is_target else rng.choice(v.DOC_TOPICS)
            kb = f"KB-{ids[start + rank]}"
            doc_title = f"{prod[0]}: {topic}"
            if is_target:
                title, doc_id = doc_title, kb
            results.append(
                {
                    "id": kb,
                    "title": doc_title,
                    "product": prod[0],
                    "url": f"https://docs.heliocloud.example/{prod[1]}/{_slug(topic)}-{kb[-3:]}",
                    "updated_at": _date(rng, dt.date(2024, 3, 1), 560).isoformat(),
                    "score": scores[rank],
                    "content": _doc_text(rng, prod, words, fact.sentence if is_target else None),
                }
            )
        start += batch
        messages.append({"role": "user", "content": fact.question})
        top_k = batch
        call_id, call = tool_call(rng, "search_docs", {"query": fact.query, "top_k": top_k})
        messages.append(call)
        found = {"query": fact.query, "total_hits": batch + rng.randint(3, 400), "results": results}
        messages.append(_result(call_id, _pretty(found)))
        messages.append({"role": "assistant", "content": fact.answer.format(doc=doc_id, title=title)})
    tools = (
        _tool(
            "search_docs",
            "Full-text and semantic search over the Helio Cloud documentation. Returns the best "
            "matching pages with their full content.",
            {
                "query": {"type": "string", "description": "What to look for."},
                "top_k": {"type": "integer", "description": "How many pages to return (1-100)."},
            },
            ["query"],
        ),
    )
    return Scenario(
        name=f"rag-{size}",
        family="rag",
        kind="seed",
        size=size,
        title=f"RAG retrieval, {documents} docs x {words} words",
        conversations=(Conversation(f"rag-{size}-s{seed}", tuple(messages), tools),),
        params={"documents": documents, "words_per_document": words, "seed": seed},
    )


# ------------------------------------------------------------------------------ API


def _customer(rng: random.Random, now: dt.datetime) -> Message:
    first, last = _person(rng)
    code, _country, cities, postal, phone = rng.choice(v.PLACES)
    created = now - dt.timedelta(days=rng.randint(40, 900), seconds=rng.randint(0, 86399))
    return {
        "id": "cus_" + _token(rng, 14),
        "object": "customer",
        "address": {
            "city": rng.choice(cities),
            "country": code,
            "line1": f"{rng.randint(1, 240)} {rng.choice(v.STREETS)}",
            "line2": None,
            "postal_code": _postal(rng, postal),
            "state": None,
        },
        "balance": 0,
        "created": int(created.timestamp()),
        "currency": "usd",
        "default_source": None,
        "delinquent": rng.random() < 0.08,
        "description": None,
        "email": f"{first.lower()}.{last.lower()}@"
        + rng.choice(("example.com", "example.org", "example.net")),
        "invoice_prefix": _token(rng, 8, "0123456789ABCDEF"),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": "pm_" + _token(rng, 24),
            "footer": None,
            "rendering_options": None,
        },
        "livemode": True,
        "metadata": {
            "crm_id": f"CRM-{rng.randint(100, 99999):05d}",
            "plan": rng.choice(("starter", "growth", "scale")),
        },
        "name": f"{first} {last}",
        "phone": f"{phone} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        "preferred_locales": [rng.choice(("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "nl-NL"))],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def _charge(rng: random.Random, customer: Message, status: str, now: dt.datetime) -> Message:
    description, amount = rng.choice(v.PLANS)
    if amount == 0:
        amount = rng.randint(350, 25_000)
    created = now - dt.timedelta(days=rng.randint(1, 29), seconds=rng.randint(0, 86399))
    risk = _weighted(rng, (("normal", 85), ("elevated", 10), ("highest", 5)))
    score = {"normal": rng.randint(5, 64), "elevated": rng.randint(65, 74), "highest": rng.randint(75, 99)}[
        risk
    ]
    brand = _weighted(rng, v.CARD_BRANDS)
    failure_code = failure_message = None
    outcome: Message = {
        "network_status": "approved_by_network",
        "reason": None,
        "risk_level": risk,
        "risk_score": score,
        "seller_message": "Payment complete.",
        "type": "authorized",
    }
    refunded_amount = 0
    if status == "failed":
        failure_code, failure_message = rng.choice(v.FAILURES)
        outcome.update(
            network_status="declined_by_network",
            reason=failure_code,
            seller_message="The bank did not return any further details with this decline.",
            type="issuer_declined",
        )
    elif status == "refunded":
        refunded_amount = amount if rng.random() < 0.6 else round(amount * rng.uniform(0.3, 0.7))
    address = customer["address"]
    return {
        "id": "ch_3" + _token(rng, 23),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if status != "failed" else 0,
        "amount_refunded": refunded_amount,
        "balance_transaction": "txn_3" + _token(rng, 23) if status != "failed" else None,
        "billing_details": {
            "address": dict(address),
            "email": customer["email"],
            "name": customer["name"],
            "phone": customer["phone"],
        },
        "captured": status != "failed",
        "created": int(created.timestamp()),
        "currency": "usd",
        "customer": customer["id"],
        "description": description,
        "disputed": False,
        "failure_code": failure_code,
        "failure_message": failure_message,
        "fraud_details": {},
        "livemode": True,
        "metadata": {"order_id": f"ord_{rng.randint(10_000, 99_999)}"},
        "outcome": outcome,
        "paid": status not in ("failed", "pending"),
        "payment_intent": "pi_3" + _token(rng, 23),
        "payment_method": customer["invoice_settings"]["default_payment_method"],
        "payment_method_details": {
            "card": {
                "brand": brand,
                "checks": {
                    "address_line1_check": "pass",
                    "address_postal_code_check": rng.choice(("pass", "pass", "unchecked")),
                    "cvc_check": "fail" if failure_code == "incorrect_cvc" else "pass",
                },
                "country": address["country"],
                "exp_month": rng.randint(1, 12),
                "exp_year": rng.randint(2025, 2030),
                "fingerprint": _token(rng, 16),
                "funding": rng.choice(("credit", "credit", "debit")),
                "last4": f"{rng.randint(0, 9999):04d}",
                "network": brand,
            },
            "type": "card",
        },
        "receipt_email": customer["email"],
        "receipt_url": f"https://pay.paystream.example/receipts/acct_1Nv{_token(rng, 13)}/{_token(rng, 40)}",
        "refunded": refunded_amount == amount,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 1 if refunded_amount else 0,
        },
        "status": "pending" if status == "pending" else "failed" if status == "failed" else "succeeded",
    }


def _usd(cents: int) -> float:
    return round(cents / 100, 2)


def api_scenario(size: str, seed: int = 0) -> Scenario:
    """An operations agent auditing failed and refunded charges through a payments API."""
    n_customers, n_charges = API_SIZES[size]
    rng = _rng("api", size, seed)
    customers = [_customer(rng, _NOW) for _ in range(n_customers)]
    statuses = ["failed"] * max(1, round(n_charges * 0.12)) + ["refunded"] * max(1, round(n_charges * 0.09))
    statuses += [
        _weighted(rng, (("succeeded", 90), ("pending", 10))) for _ in range(n_charges - len(statuses))
    ]
    rng.shuffle(statuses)
    weights = [1 / (i + 1) ** 0.6 for i in range(n_customers)]
    charges = [_charge(rng, rng.choices(customers, weights=weights)[0], status, _NOW) for status in statuses]
    charges.sort(key=lambda c: c["created"], reverse=True)  # the API lists newest first
    since = int((_NOW - dt.timedelta(days=30)).timestamp())

    system = (
        "You are the payments operations agent of Brightloop, a B2B software company that bills "
        "through the Paystream API. Use paystream_api to read and change data; never guess ids "
        "or amounts. Amounts in the API are in cents; report them in USD. Always answer with a "
        "single JSON object that follows the response schema."
    )
    messages: list[Message] = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": "Audit the last 30 days: which customers had failed or refunded charges? For "
            "each, give the failed and refunded totals in USD and the charge ids, and flag anyone "
            "with a charge of elevated or highest risk.",
        },
    ]
    call_id, call = tool_call(
        rng, "paystream_api", {"method": "GET", "path": "/v1/customers", "query": {"limit": 100}}
    )
    messages += [
        call,
        _result(
            call_id,
            _pretty({"object": "list", "data": customers, "has_more": False, "url": "/v1/customers"}),
        ),
    ]
    for page in range(0, n_charges, 100):
        query: dict[str, Any] = {"limit": 100, "created[gte]": since}
        if page:
            query["starting_after"] = charges[page - 1]["id"]
        call_id, call = tool_call(
            rng, "paystream_api", {"method": "GET", "path": "/v1/charges", "query": query}
        )
        listing = {
            "object": "list",
            "data": charges[page : page + 100],
            "has_more": page + 100 < n_charges,
            "url": "/v1/charges",
        }
        messages += [call, _result(call_id, _pretty(listing))]

    by_customer: dict[str, list[Message]] = defaultdict(list)
    for ch in charges:
        by_customer[ch["customer"]].append(ch)
    names = {c["id"]: c for c in customers}
    flagged: list[Message] = []
    for cid, own in by_customer.items():
        failed = [c for c in own if c["status"] == "failed"]
        refunded = [c for c in own if c["amount_refunded"] > 0]
        if not failed and not refunded:
            continue
        flagged.append(
            {
                "customer_id": cid,
                "name": names[cid]["name"],
                "email": names[cid]["email"],
                "failed_total_usd": _usd(sum(c["amount"] for c in failed)),
                "refunded_total_usd": _usd(sum(c["amount_refunded"] for c in refunded)),
                "charge_ids": [c["id"] for c in own if c in failed or c in refunded],
                "high_risk": any(c["outcome"]["risk_level"] != "normal" for c in own),
            }
        )
    flagged.sort(key=lambda f: (-(f["failed_total_usd"] + f["refunded_total_usd"]), f["customer_id"]))
    report = {
        "period": {
            "from": (_NOW - dt.timedelta(days=30)).date().isoformat(),
            "to": (_NOW - dt.timedelta(days=1)).date().isoformat(),
        },
        "customers": flagged,
        "totals": {
            "failed_usd": round(sum(f["failed_total_usd"] for f in flagged), 2),
            "refunded_usd": round(sum(f["refunded_total_usd"] for f in flagged), 2),
            "customers_flagged": len(flagged),
            "high_risk_customers": sum(1 for f in flagged if f["high_risk"]),
        },
    }
    messages.append({"role": "assistant", "content": _answer_json(report)})

    top = max(flagged, key=lambda f: (f["refunded_total_usd"], f["customer_id"]))
    refund_ids = [c["id"] for c in by_customer[top["customer_id"]] if c["amount_refunded"] > 0]
    messages.append(
        {
            "role": "user",
            "content": "Open a review for the customer with the largest refunded total, citing those "
            "refunded charge ids, and tell me the review id.",
        }
    )
    body = {"customer": top["customer_id"], "charges": refund_ids, "reason": "refund_audit"}
    call_id, call = tool_call(rng, "paystream_api", {"method": "POST", "path": "/v1/reviews", "body": body})
    review = {
        "id": "prv_" + _token(rng, 24),
        "object": "review",
        "billing_zip": names[top["customer_id"]]["address"]["postal_code"],
        "charges": refund_ids,
        "closed_reason": None,
        "created": int(_NOW.timestamp()),
        "customer": top["customer_id"],
        "livemode": True,
        "open": True,
        "opened_reason": "manual",
        "reason": "refund_audit",
    }
    messages += [call, _result(call_id, _pretty(review))]
    messages.append(
        {
            "role": "assistant",
            "content": _answer_json(
                {
                    "review_id": review["id"],
                    "customer_id": top["customer_id"],
                    "customer_name": top["name"],
                    "charge_ids": refund_ids,
                    "refunded_total_usd": top["refunded_total_usd"],
                    "status": "open",
                }
            ),
        }
    )
    tools = (
        _tool(
            "paystream_api",
            "Call the Paystream REST API (https://api.paystream.example). Lists are paginated "
            "(limit <= 100, starting_after = the last id of the previous page).",
            {
                "method": {"type": "string", "enum": ["GET", "POST"]},
                "path": {"type": "string", "description": "e.g. /v1/charges"},
                "query": {"type": "object", "description": "Query parameters."},
                "body": {"type": "object", "description": "Form body of a POST."},
            },
            ["method", "path"],
        ),
    )
    schema = {"type": "json_schema", "json_schema": {"name": "ops_answer", "schema": _API_ANSWER}}
    return Scenario(
        name=f"api-{size}",
        family="api",
        kind="seed",
        size=size,
        title=f"API calls, {n_customers} users / {n_charges} transactions",
        conversations=(Conversation(f"api-{size}-s{seed}", tuple(messages), tools, schema),),
        structured_output=True,
        params={"customers": n_customers, "charges": n_charges, "seed": seed},
    )


# ------------------------------------------------------------------------------ database

_VARIANTS: Final = ("2", "3", "45L", "30L", "Pro", "Lite", "UL", "GTX", "Mid", "Plus", "X", "Air")


def _products(rng: random.Random, n: int) -> list[Message]:
    rows: list[Message] = []
    seen: set[str] = set()
    for pid in range(1, n + 1):
        category, nouns, (lo, hi), (wlo, whi) = rng.choice(v.CATEGORIES)
        name = f"{rng.choice(v.MODEL_WORDS)} {rng.choice(_VARIANTS)} {rng.choice(nouns)}"
        if name in seen:
            name = f"{name} {pid}"
        seen.add(name)
        price = round(rng.uniform(lo, hi)) - rng.choice((0.01, 0.05, 0.0))
        rows.append(
            {
                "product_id": pid,
                "sku": f"{category[:3].upper()}-{name[:3].upper()}-{pid:04d}",
                "name": name,
                "category": category,
                "brand": rng.choice(v.BRANDS),
                "unit_price": round(price, 2),
                "unit_cost": round(price * rng.uniform(0.42, 0.66), 2),
                "stock_qty": rng.randint(0, 19) if rng.random() < 0.18 else rng.randint(20, 420),
                "weight_kg": round(rng.uniform(wlo, whi), 2),
                "is_active": rng.random() < 0.95,
                "created_at": _date(rng, dt.date(2022, 1, 10), 1200).isoformat(),
            }
        )
    return rows


def _customers(rng: random.Random, n: int) -> list[Message]:
    rows: list[Message] = []
    weights = (25, 15, 10, 10, 8, 6, 8, 6, 6, 6)
    for i in range(n):
        first, last = _person(rng)
        _code, country, cities, _postal, _phone = rng.choices(v.PLACES, weights=weights)[0]
        if i == 0:  # at least one German customer (the second question asks about Germany)
            country, cities = v.PLACES[1][1], v.PLACES[1][2]
        rows.append(
            {
                "customer_id": 1001 + i,
                "full_name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@"
                f"{rng.choice(('example.com', 'mail.example.org', 'example.net'))}",
                "country": country,
                "city": rng.choice(cities),
                "segment": _weighted(rng, v.SEGMENTS),
                "signup_date": _date(rng, dt.date(2019, 3, 1), 2300).isoformat(),
                "lifetime_value_usd": round(rng.lognormvariate(6.0, 0.9), 2),
                "marketing_opt_in": rng.random() < 0.55,
            }
        )
    return rows


def _orders(rng: random.Random, n: int, products: list[Message], customers: list[Message]) -> list[Message]:
    rows: list[Message] = []
    p_weights = [1 / (i + 1) ** 0.7 for i in range(len(products))]
    c_weights = [1 / (i + 1) ** 0.5 for i in range(len(customers))]
    p_order = rng.sample(products, len(products))
    c_order = rng.sample(customers, len(customers))
    start = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
    for i in range(n):
        product = rng.choices(p_order, weights=p_weights)[0]
        customer = rng.choices(c_order, weights=c_weights)[0]
        qty = rng.choices((1, 2, 3, 4), weights=(70, 20, 7, 3))[0]
        discount = rng.choice((0, 0, 0, 0, 5, 10, 15, 20))
        when = start + dt.timedelta(seconds=rng.randrange(92 * 86400))
        rows.append(
            {
                "order_id": 500_001 + i,
                "customer_id": customer["customer_id"],
                "product_id": product["product_id"],
                "quantity": qty,
                "unit_price": product["unit_price"],
                "discount_pct": discount,
                "total_usd": round(qty * product["unit_price"] * (100 - discount) / 100, 2),
                "status": _weighted(rng, v.ORDER_STATUSES),
                "order_date": when.isoformat().replace("+00:00", "Z"),
                "ship_country": customer["country"],
                "channel": _weighted(rng, v.CHANNELS),
            }
        )
    rows.sort(key=lambda r: r["order_date"])
    for i, row in enumerate(rows):
        row["order_id"] = 500_001 + i
    return rows


def db_scenario(size: str, seed: int = 0) -> Scenario:
    """A data agent answering analytical questions from SQL query results."""
    n_products, n_orders, n_customers = DB_SIZES[size]
    rng = _rng("db", size, seed)
    products = _products(rng, n_products)
    customers = _customers(rng, n_customers)
    orders = _orders(rng, n_orders, products, customers)
    prod = {p["product_id"]: p for p in products}
    cust = {c["customer_id"]: c for c in customers}
    # The questions need at least one German return and one low-stock best seller.
    german = [o for o in orders if cust[o["customer_id"]]["country"] == "Germany"]
    if german and not any(o["status"] == "returned" for o in german):
        german[len(german) // 2]["status"] = "returned"
    elif not german:
        orders[0]["customer_id"], orders[0]["ship_country"], orders[0]["status"] = 1001, "Germany", "returned"
    sold: dict[int, int] = defaultdict(int)
    revenue: dict[int, float] = defaultdict(float)
    for o in orders:
        if o["status"] in ("delivered", "shipped"):
            sold[o["product_id"]] += o["quantity"]
            revenue[o["product_id"]] += o["total_usd"]
    low_min = 2
    if not any(prod[p]["stock_qty"] < 20 and prod[p]["is_active"] and n >= low_min for p, n in sold.items()):
        best = max(sold, key=lambda p: (sold[p], -p))
        prod[best]["stock_qty"], prod[best]["is_active"] = rng.randint(2, 14), True

    system = (
        "You are the analytics agent of Northwind Outfitters, an online shop for outdoor gear. "
        "You can query the shop's PostgreSQL database with run_sql (tables products, orders, "
        "customers). Revenue counts delivered and shipped orders only (total_usd, after "
        "discounts). Answer with a single JSON object that follows the response schema; use the "
        "exact ids, names and amounts from the data."
    )
    q1 = (
        "Which 5 products brought in the most revenue in Q3 2025? For the top product, list its 3 "
        "biggest customers by spend."
    )
    messages: list[Message] = [{"role": "system", "content": system}, {"role": "user", "content": q1}]
    queries = (
        ("SELECT * FROM products ORDER BY product_id;", products),
        (
            "SELECT * FROM orders WHERE order_date >= '2025-07-01' AND order_date < '2025-10-01' "
            "ORDER BY order_date;",
            orders,
        ),
        ("SELECT * FROM customers ORDER BY customer_id;", customers),
    )
    for sql, rows in queries:
        call_id, call = tool_call(rng, "run_sql", {"query": sql})
        messages += [call, _result(call_id, _pretty(rows))]

    top5 = sorted(revenue, key=lambda p: (-revenue[p], p))[:5]
    spend: dict[int, float] = defaultdict(float)
    for o in orders:
        if o["product_id"] == top5[0] and o["status"] in ("delivered", "shipped"):
            spend[o["customer_id"]] += o["total_usd"]
    top_customers = sorted(spend, key=lambda c: (-spend[c], c))[:3]
    messages.append(
        {
            "role": "assistant",
            "content": _answer_json(
                {
                    "quarter": "2025-Q3",
                    "top_products": [
                        {
                            "product_id": p,
                            "sku": prod[p]["sku"],
                            "name": prod[p]["name"],
                            "revenue_usd": round(revenue[p], 2),
                            "units": sold[p],
                        }
                        for p in top5
                    ],
                    "top_customers_for_top_product": [
                        {
                            "customer_id": c,
                            "full_name": cust[c]["full_name"],
                            "email": cust[c]["email"],
                            "spend_usd": round(spend[c], 2),
                        }
                        for c in top_customers
                    ],
                }
            ),
        }
    )
    returns = [
        o for o in orders if o["status"] == "returned" and cust[o["customer_id"]]["country"] == "Germany"
    ]
    messages.append(
        {
            "role": "user",
            "content": "Which customers from Germany returned an order in that quarter? Give the "
            "customer, order id, product and the amount to refund.",
        }
    )
    messages.append(
        {
            "role": "assistant",
            "content": _answer_json(
                {
                    "returns_from_germany": [
                        {
                            "customer_id": o["customer_id"],
                            "full_name": cust[o["customer_id"]]["full_name"],
                            "order_id": o["order_id"],
                            "product": prod[o["product_id"]]["name"],
                            "refund_usd": o["total_usd"],
                        }
                        for o in returns
                    ]
                }
            ),
        }
    )
    low = sorted(
        (p for p, n in sold.items() if prod[p]["stock_qty"] < 20 and prod[p]["is_active"] and n >= low_min),
        key=lambda p: (-sold[p], p),
    )
    messages.append(
        {
            "role": "user",
            "content": f"Which active products have fewer than 20 units in stock but sold at least "
            f"{low_min} units in Q3? I want to reorder them.",
        }
    )
    messages.append(
        {
            "role": "assistant",
            "content": _answer_json(
                {
                    "reorder": [
                        {
                            "product_id": p,
                            "sku": prod[p]["sku"],
                            "name": prod[p]["name"],
                            "stock_qty": prod[p]["stock_qty"],
                            "units_sold_q3": sold[p],
                        }
                        for p in low
                    ]
                }
            ),
        }
    )
    tools = (
        _tool(
            "run_sql",
            "Run one read-only SQL statement on the shop database (PostgreSQL 16) and return the "
            "rows as JSON.",
            {"query": {"type": "string", "description": "A single SELECT statement."}},
            ["query"],
        ),
    )
    schema = {"type": "json_schema", "json_schema": {"name": "analytics_answer", "schema": _DB_ANSWER}}
    return Scenario(
        name=f"db-{size}",
        family="db",
        kind="seed",
        size=size,
        title=f"Database queries, {n_products} products / {n_orders} orders / {n_customers} customers",
        conversations=(Conversation(f"db-{size}-s{seed}", tuple(messages), tools, schema),),
        structured_output=True,
        params={"products": n_products, "orders": n_orders, "customers": n_customers, "seed": seed},
    )


_GENERATORS: Final[dict[str, Callable[[str, int], Scenario]]] = {
    "rag": rag_scenario,
    "api": api_scenario,
    "db": db_scenario,
}


def seed_scenario(kind: str, size: str, seed: int = 0) -> Scenario:
    """One seed scenario by kind (``rag``, ``api``, ``db``) and size."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown scenario kind {kind!r}; expected one of {', '.join(KINDS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    return _GENERATORS[kind](size, seed)


def seed_scenarios(sizes: Sequence[str] = SIZES, seed: int = 0) -> Iterator[Scenario]:
    """Every kind in every size of ``sizes``, kind by kind."""
    for kind in KINDS:
        for size in sizes:
            yield seed_scenario(kind, size, seed)
