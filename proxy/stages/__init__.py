"""Pipeline stages, each a small async callable ``stage(prompt, ctx) -> Prompt``."""

from proxy.stages.history import HistoryStage
from proxy.stages.tool_output import ToolOutputStage

__all__ = ["HistoryStage", "ToolOutputStage"]
