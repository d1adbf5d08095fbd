"""Analyzers over a loaded Trace: one per question, each returning DataFrames."""
from .breakdown import BatchBreakdown
from .requests import RequestBreakdown

__all__ = ["BatchBreakdown", "RequestBreakdown"]
