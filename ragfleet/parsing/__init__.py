"""Document files -> pages of structured blocks, with quality gates and OCR, parsed in a bounded child
process (docs/parsing.md). No Celery here: the fleet's tasks call `parse_file`."""

from ragfleet.parsing.isolate import parse_file
from ragfleet.parsing.model import (
    Block,
    DocFormat,
    Page,
    ParsedDocument,
    ParseError,
    ParseLimits,
    ParseReport,
)

__all__ = [
    "Block",
    "DocFormat",
    "Page",
    "ParseError",
    "ParseLimits",
    "ParseReport",
    "ParsedDocument",
    "parse_file",
]
