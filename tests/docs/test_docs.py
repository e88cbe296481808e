"""docs/ stays complete and navigable: every config key and log field documented, every link valid."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from proxy.config import Settings
from proxy.translog import TransactionLog

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _struct(tp: object) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def config_keys(struct: type[msgspec.Struct] = Settings, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every field, recursively: `server.port`, `upstreams[].name`,
    `history.models.<glob>.context_window`."""
    for field in msgspec.structs.fields(struct):
        key = prefix + field.encode_name
        yield key
        args = typing.get_args(field.type)
        if (inner := _struct(field.type)) is not None:
            yield from config_keys(inner, key + ".")
        elif typing.get_origin(field.type) is tuple and args and (inner := _struct(args[0])):
            yield from config_keys(inner, key + "[].")
        elif typing.get_origin(field.type) is dict and (inner := _struct(args[1])):
            yield from config_keys(inner, key + ".<glob>.")


def _documented(page: Path) -> set[str]:
    """Keys or fields named in the first cell of a table row of ``page``."""
    return set(re.findall(r"^\| `([^`]+)` \|", page.read_text(), re.M))


def _sections(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct) if _struct(f.type) is not None}


@pytest.mark.parametrize("key", [k for k in config_keys() if k not in _sections(Settings)])
def test_every_config_key_is_documented(key: str) -> None:
    """Each key of the settings Structs has a row in docs/configuration.md."""
    assert key in _documented(DOCS / "configuration.md"), f"{key} has no row in docs/configuration.md"


def test_config_key_walk_reaches_nested_structs() -> None:
    """The key walk goes into sections, list items and per-model maps."""
    keys = set(config_keys())
    assert {"server.port", "upstreams[].base_url", "auth.keys[].tenant", "compression.budget_tokens"} <= keys
    assert {"history.models.<glob>.context_window", "pricing.models.<glob>.cached_input"} <= keys


def test_documented_config_keys_exist() -> None:
    """docs/configuration.md documents no key that the settings do not have."""
    extra = _documented(DOCS / "configuration.md") - set(config_keys())
    assert not extra, f"documented but not in proxy.config: {sorted(extra)}"


@pytest.mark.parametrize("field", [f.encode_name for f in msgspec.structs.fields(TransactionLog)])
def test_every_transaction_log_field_is_documented(field: str) -> None:
    """Each field of a TransactionLog line has a row in docs/transaction-log.md."""
    assert field in _documented(DOCS / "transaction-log.md"), f"{field} has no row in docs/transaction-log.md"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _without_fences(page.read_text()), re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _without_fences(text: str) -> str:
    """``text`` without fenced code blocks (where a ``#`` line is a comment, not a heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where links are not links."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))


LINKS = [(page, target) for page in PAGES for target in _links(page) if not re.match(r"[a-z]+:", target)]


def test_pages_have_links_to_check() -> None:
    """The link check sees the README's links to docs/ and every docs page."""
    readme_targets = {target for page, target in LINKS if page.name == "README.md"}
    for doc in DOCS.glob("*.md"):
        assert f"docs/{doc.name}" in readme_targets, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_relative_links_resolve(page: Path, target: str) -> None:
    """Each relative link in README.md, CHANGELOG.md and docs/*.md names an existing file, and
    its #anchor an existing heading of that file."""
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
    assert dest.is_relative_to(ROOT), f"{page.relative_to(ROOT)}: {target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"{page.relative_to(ROOT)}: anchor into a non-Markdown file {target}"
        assert anchor in _anchors(dest), (
            f"{page.relative_to(ROOT)}: no heading for #{anchor} in {path or page.name}"
        )


def test_anchor_slugs_follow_github() -> None:
    """Heading anchors are computed the way GitHub renders them (code, punctuation, duplicates)."""
    assert _slug("What tenants share: nothing") == "what-tenants-share-nothing"
    assert _slug("`nocp bench`: cost against going direct") == "nocp-bench-cost-against-going-direct"
    assert _slug("Reading `bench.md`") == "reading-benchmd"
    assert _slug("Metrics and drift alerts") == "metrics-and-drift-alerts"
