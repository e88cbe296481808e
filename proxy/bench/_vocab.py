"""Word pools for the seed scenarios: people, places, products, documentation sentences.

Everything here is plain data; the generators in :mod:`proxy.bench.scenarios` draw from it
with a seeded :class:`random.Random`, so a seed always gives the same conversation.
"""

from __future__ import annotations

from typing import Final

FIRST_NAMES: Final = (
    "Maria", "James", "Aiko", "Olusegun", "Sofia", "Liam", "Priya", "Mateo", "Chloe", "Wei",
    "Fatima", "Noah", "Ingrid", "Diego", "Amara", "Lukas", "Hana", "Omar", "Elena", "Tomasz",
    "Grace", "Ravi", "Camille", "Kwame", "Yuki", "Lucas", "Anika", "Jonas", "Leila", "Pedro",
    "Sara", "Mikael", "Zanele", "Hugo", "Mei", "Daniel", "Aylin", "Felix", "Nadia", "Oscar",
)  # fmt: skip
LAST_NAMES: Final = (
    "Gonzalez", "Okafor", "Tanaka", "Schmidt", "Rossi", "Nguyen", "Patel", "Johansson", "Dubois",
    "Kowalski", "Haddad", "Silva", "Murphy", "Chen", "Novak", "Fischer", "Mensah", "Costa",
    "Larsen", "Moreau", "Yilmaz", "Kim", "Ivanova", "Brennan", "Sato", "Weber", "Alvarez",
    "Becker", "Lindqvist", "Ortiz", "Hoffmann", "Adeyemi", "Bianchi", "Kaur", "Meyer", "Santos",
)  # fmt: skip
# country code, country, cities, postal code pattern (# = digit), phone prefix
PLACES: Final = (
    ("US", "United States", ("San Francisco", "Austin", "Denver", "Seattle", "Boston"), "#####", "+1"),
    ("DE", "Germany", ("Berlin", "Munich", "Hamburg", "Cologne", "Leipzig"), "#####", "+49"),
    ("FR", "France", ("Lyon", "Paris", "Grenoble", "Toulouse"), "#####", "+33"),
    ("GB", "United Kingdom", ("London", "Manchester", "Bristol", "Edinburgh"), "AB# #CD", "+44"),
    ("NL", "Netherlands", ("Amsterdam", "Utrecht", "Rotterdam"), "#### AB", "+31"),
    ("SE", "Sweden", ("Stockholm", "Gothenburg", "Uppsala"), "### ##", "+46"),
    ("IT", "Italy", ("Milan", "Turin", "Bologna", "Bolzano"), "#####", "+39"),
    ("CA", "Canada", ("Vancouver", "Calgary", "Toronto"), "A#B #C#", "+1"),
    ("JP", "Japan", ("Tokyo", "Sapporo", "Osaka"), "###-####", "+81"),
    ("AU", "Australia", ("Melbourne", "Hobart", "Brisbane"), "####", "+61"),
)
STREETS: Final = (
    "Market Street", "Lindenstrasse", "Rue de la Republique", "High Street", "Keizersgracht",
    "Storgatan", "Via Roma", "Granville Street", "Harbour Road", "Elm Avenue", "Parkweg",
)  # fmt: skip

# --- the outdoor shop (database scenario) -------------------------------------------------

CATEGORIES: Final = (
    ("Tents", ("Tent", "Shelter", "Tarp"), (89.0, 649.0), (1.2, 4.8)),
    ("Backpacks", ("Backpack", "Daypack", "Pack"), (49.0, 329.0), (0.6, 2.4)),
    ("Sleeping Bags", ("Sleeping Bag", "Quilt", "Liner"), (39.0, 479.0), (0.4, 1.9)),
    ("Footwear", ("Hiking Boot", "Trail Runner", "Approach Shoe"), (79.0, 289.0), (0.7, 1.6)),
    ("Jackets", ("Shell Jacket", "Down Jacket", "Fleece"), (59.0, 549.0), (0.2, 0.9)),
    ("Cookware", ("Stove", "Pot Set", "Mug"), (12.0, 189.0), (0.1, 1.1)),
    ("Lighting", ("Headlamp", "Lantern"), (19.0, 129.0), (0.05, 0.4)),
    ("Navigation", ("GPS Watch", "Compass", "Map Case"), (15.0, 599.0), (0.03, 0.2)),
    ("Climbing", ("Harness", "Rope", "Carabiner Set", "Belay Device"), (9.0, 329.0), (0.1, 4.5)),
    ("Water", ("Water Filter", "Bottle", "Hydration Bladder"), (9.0, 149.0), (0.1, 0.6)),
)
MODEL_WORDS: Final = (
    "Alpine", "Ridgeline", "Summit", "Cascade", "Tundra", "Granite", "Aurora", "Sierra", "Fjord",
    "Basecamp", "Trailhead", "Nordic", "Canyon", "Glacier", "Meridian", "Timberline", "Highland",
    "Solstice", "Cirrus", "Talus",
)  # fmt: skip
BRANDS: Final = ("Northwind", "Kestrel Gear", "Fellwalker", "Stormpeak", "Lumen Outdoor", "Trailcraft")
ORDER_STATUSES: Final = (
    ("delivered", 58), ("shipped", 17), ("processing", 8), ("cancelled", 7), ("returned", 10),
)  # fmt: skip
CHANNELS: Final = (("web", 55), ("app", 30), ("marketplace", 15))
SEGMENTS: Final = (("consumer", 70), ("pro", 20), ("business", 10))

# --- the payments API (API scenario) ------------------------------------------------------

PLANS: Final = (
    ("Starter plan - monthly", 2900), ("Growth plan - monthly", 12900), ("Scale plan - monthly", 49900),
    ("Growth plan - annual", 129000), ("Add-on: extra seats (5)", 4500), ("Usage overage - API calls", 0),
)  # fmt: skip
CARD_BRANDS: Final = (("visa", 48), ("mastercard", 34), ("amex", 12), ("discover", 6))
FAILURES: Final = (
    ("card_declined", "Your card was declined."),
    ("insufficient_funds", "Your card has insufficient funds."),
    ("expired_card", "Your card has expired."),
    ("incorrect_cvc", "Your card's security code is incorrect."),
    ("processing_error", "An error occurred while processing your card. Try again in a little bit."),
)
REFUND_REASONS: Final = ("requested_by_customer", "duplicate", "fraudulent")

# --- the documentation knowledge base (RAG scenario) --------------------------------------

PRODUCTS: Final = (
    ("Helio Compute", "compute", "instance"),
    ("Helio Object Storage", "storage", "bucket"),
    ("Helio Queue", "queue", "topic"),
    ("Helio Postgres", "postgres", "replica"),
    ("Helio Edge CDN", "cdn", "distribution"),
    ("Helio IAM", "iam", "service account"),
    ("Helio Functions", "functions", "function"),
    ("Helio Metrics", "metrics", "dashboard"),
    ("Helio Kubernetes Engine", "hke", "node pool"),
    ("Helio Vault", "vault", "secret"),
)
REGIONS: Final = (
    "eu-west-1", "eu-central-1", "us-east-1", "us-east-2", "us-west-2", "ap-southeast-1",
    "ap-northeast-1", "sa-east-1",
)  # fmt: skip
ERROR_CODES: Final = (
    ("HEL-4031", "the caller's token has expired or was issued for another project"),
    ("HEL-4290", "the project exceeded its request quota for the current minute"),
    ("HEL-5024", "the upstream health check failed three times in a row"),
    ("ERR_TLS_HANDSHAKE", "the client offered only TLS 1.0 or 1.1 ciphers"),
    ("E_QUOTA_EXCEEDED", "the regional resource quota is used up"),
    ("HEL-4093", "a concurrent update changed the resource version"),
    ("ERR_REPLICA_LAG", "a read replica fell behind the primary by more than the allowed lag"),
)
CONFIG_KEYS: Final = (
    ("max_connections", (50, 2000), ""),
    ("idle_timeout_s", (30, 900), " seconds"),
    ("replication.lag_alert_ms", (200, 5000), " ms"),
    ("lifecycle.noncurrent_days", (7, 365), " days"),
    ("autoscaler.target_cpu", (45, 85), "%"),
    ("retry.max_attempts", (3, 12), ""),
    ("cache.ttl_s", (60, 86400), " seconds"),
    ("backup.retention_days", (7, 35), " days"),
)
CONFIG_PATHS: Final = (
    "/etc/helio/agent.yaml", "~/.helio/config.toml", "/etc/helio/replication.conf",
    "deploy/helio/values.yaml", "/opt/helio/etc/limits.json", "~/.helio/credentials",
)  # fmt: skip
INSTANCE_TYPES: Final = ("hc2.large", "hc2.xlarge", "hm3.2xlarge", "hc3.4xlarge", "ha1.medium")
DOC_TOPICS: Final = (
    "Rotating signing keys",
    "Quotas and limits",
    "Troubleshooting failed requests",
    "Backup and restore",
    "Performance and load testing",
    "Configuring lifecycle rules",
    "Setting up private networking",
    "Monitoring and alerts",
    "Migrating between major versions",
    "Encryption at rest",
    "Release notes",
    "Access control and roles",
)
ROLES: Final = (
    "storage.objectAdmin", "compute.instanceOperator", "queue.publisher", "postgres.readReplicaAdmin",
    "iam.serviceAccountUser", "metrics.viewer", "vault.secretAccessor",
)  # fmt: skip
# Filler sentences. Slots: {p} product, {slug}, {res} resource noun, {ver}, {ver2}, {n}, {n2},
# {pct}, {ms}, {days}, {hours}, {region}, {region2}, {err}, {cfg}, {path}, {cmd}, {role},
# {inst}, {date}.
DOC_SENTENCES: Final = (
    "This page explains how {p} handles the task and which settings you can change.",
    "The steps below assume the helio CLI {ver} or later, logged in with `helio auth login`.",
    "For most workloads the defaults are sufficient, but large deployments should review the limits first.",
    "Starting with {p} {ver}, the default value of `{cfg}` is {n}, down from {n2} in earlier releases.",
    "Run `{cmd}` to list the current configuration; the output includes the `{cfg}` value for every {res}.",
    "Configuration is read from `{path}` at start-up, and changes take effect after the agent restarts.",
    "In {region}, each project can create up to {n} {res}s; other regions allow {n2}.",
    "If a request fails with {err}, check that the service account has the `{role}` role on the project.",
    "During the maintenance window on {date}, {p} in {region} was read-only for about {n} minutes.",
    "Snapshots older than {days} days are deleted automatically unless a retention lock is set on the {res}.",
    "Latency at the 99th percentile stayed below {ms} ms in {region2} after the fix was rolled out.",
    "You can export the metrics to Prometheus; the exporter listens on port {n} by default.",
    "Billing is per second with a one-minute minimum; stopped {res}s are not billed, volumes are.",
    "To avoid throttling, stay below {n} requests per second per {res} and back off exponentially.",
    "The {role} role grants read access only; writes additionally need the owner role on the {res}.",
    "Version {ver2} deprecated the v1 endpoint, which will stop accepting requests after {date}.",
    "Use `helio {slug} describe <name> --format json` to see the full state of a {res}.",
    "When the health check fails, {p} replaces the {res} and keeps the old one for {hours} hours.",
    "Private networking needs a VPC in {region}; peering across regions adds about {ms} ms.",
    "The audit log records every change with the caller, the source IP address and the request id.",
    "Data is encrypted at rest with AES-256; customer-managed keys are stored in Helio Vault.",
    "We recommend enabling alerts on error rate above {pct}% over five minutes for production {res}s.",
    "Older clients that pin TLS 1.1 will see {err} after the upgrade; update them before {date}.",
    "The dashboard shows usage per {res}, refreshed every {n} seconds.",
    "Support can raise most limits within one business day; include the project id and region.",
    "A {res} created from the console gets the labels team, env and cost-center by default.",
    "On {inst} machines, throughput reached {n} operations per second with {pct}% CPU utilisation.",
    "Changes to `{cfg}` are validated before they are applied; an invalid value is rejected with {err}.",
    "The command `{cmd}` is idempotent, so it is safe to run it again from automation.",
    "Known issue: in {p} {ver}, metrics for deleted {res}s keep appearing for up to {hours} hours.",
)
