"""The public surface, as httpx pins its own: each package's ``__all__``, and private modules kept
private.

A module whose name (or one of whose packages' names) starts with ``_`` is private to the
package that holds it: that package and its subpackages may import it, nothing else may.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("proxy", "compressors", "benchmarks")

PUBLIC: dict[str, list[str]] = {
    "compressors": [
        "Compressed",
        "CompressionConfig",
        "CompressionContext",
        "CompressionFailed",
        "CompressionResult",
        "CompressorError",
        "ContentType",
        "TokenizerUnavailable",
        "ToolPolicy",
        "WrongContentType",
        "cached",
        "clear_cache",
        "compress",
        "detect",
        "exceptions",
        "remember",
        "tokens",
    ],
    "compressors.exceptions": [
        "CompressionFailed",
        "CompressorError",
        "TokenizerUnavailable",
        "WrongContentType",
    ],
    "compressors.hardtokens": ["KINDS", "hard_tokens", "hard_tokens_by_kind"],
    "compressors.markers": [
        "ID_CHARS",
        "MARKER_PREFIX",
        "content_id",
        "marker_id",
        "marker_ids",
        "omitted_marker",
        "unavailable",
    ],
    "compressors.summary": [
        "FACTS_HEADER",
        "SUMMARY_HEADER",
        "TurnText",
        "extractive_summary",
        "facts_pass",
        "render_transcript",
    ],
    "compressors.tokens": [
        "clear_cache",
        "count",
        "count_chat_request",
        "count_each",
        "count_gemini_request",
        "count_messages",
        "encoding_for_model",
        "get_encoding",
        "is_exact",
    ],
    "compressors.toon": ["ToonDecodeError", "same_value", "toon_decode", "toon_encode"],
    "proxy": [
        "Pipeline",
        "Settings",
        "Stage",
        "StageContext",
        "UpstreamConfig",
        "__version__",
        "create_app",
        "load_settings",
    ],
    "proxy.dashboard": [
        "DEFAULT_RECORDS",
        "LogStats",
        "MAX_RECORDS",
        "Page",
        "cohorts",
        "page",
        "policy",
        "request_rate",
        "snapshot",
    ],
    "proxy.policy": [
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
    ],
    "proxy.protocols": [
        "ADAPTERS",
        "Adapter",
        "AnthropicAdapter",
        "Call",
        "GeminiAdapter",
        "HopStream",
        "JSONArraySplitter",
        "ModelTurn",
        "OpenAIChatAdapter",
        "OpenAIResponsesAdapter",
        "Prompt",
        "Rollup",
        "Route",
        "SSESplitter",
        "Segment",
        "SegmentKind",
        "StreamEvent",
        "ToolSpec",
        "Turn",
        "Usage",
        "add_usage",
        "anchor_digest",
        "decode_json_object",
        "digest",
        "encode_json",
        "sse_data",
    ],
    "proxy.sessions": [
        "CircuitBreaker",
        "HEADER",
        "RedisSessionStore",
        "SQLiteSessionStore",
        "SessionState",
        "SessionStore",
        "StoreUnavailable",
        "decode_state",
        "derive_session_id",
        "encode_state",
        "metadata_session",
        "open_store",
        "session_from",
        "sqlite_path",
    ],
    "proxy.output": [
        "LIST_SEP",
        "OutputFormat",
        "TOON_MARKER",
        "ToonPlan",
        "chat_stream",
        "decode_answer",
        "plan_for_schema",
        "responses_stream",
        "toon_answer",
        "toon_instruction",
        "verbosity_note",
    ],
    "proxy.stages": ["HistoryStage", "ToolOutputStage"],
    "proxy.testing": [
        "Answer",
        "DEFAULT_MODELS",
        "Drop",
        "FIXED_CREATED",
        "Fail",
        "FakeUpstream",
        "MemoryWriter",
        "MockResponse",
        "MockSend",
        "PrefixCache",
        "RecordedRequest",
        "RecordingClient",
        "Replay",
        "Reply",
        "Stall",
        "Step",
        "StreamStall",
        "Structured",
        "ToolCall",
        "UsageRecord",
        "run_fake_upstream",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned(module: str) -> None:
    """A package's ``__all__`` is exactly its pinned list of names, and every one resolves."""
    mod = importlib.import_module(module)
    assert PUBLIC[module] == sorted(PUBLIC[module]), "keep the pin sorted"
    assert sorted(mod.__all__) == PUBLIC[module]
    assert len(set(mod.__all__)) == len(mod.__all__)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_owner(dotted: str) -> str | None:
    """The package a module of ours is private to (None: public, or not ours)."""
    parts = dotted.split(".")
    if parts[0] not in SCANNED:
        return None
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i])
    return None


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every module ``path`` imports, at any depth (functions, TYPE_CHECKING)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:  # ``from pkg import _module`` imports a module too
                if _is_module(f"{base}.{alias.name}"):
                    yield node.lineno, f"{base}.{alias.name}"


def test_no_module_imports_another_packages_private_modules() -> None:
    """No module in proxy/, compressors/ or benchmarks/ imports a private module of another package."""
    found: list[str] = []
    for root in SCANNED:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            importer = _module_name(path)
            for line, imported in _imports(path):
                owner = _private_owner(imported)
                if owner is None or importer == owner or importer.startswith(owner + "."):
                    continue
                found.append(f"{rel}:{line} imports {imported} (private to {owner})")
    assert not found, "\n".join(found)
