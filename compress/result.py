"""``Result(model, report)``: what every compression stage returns.

The report is a plain JSON-able dict; every figure in it says where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecompress.fileio import write_json_atomic


@dataclass
class Result:
    """A compressed model and the report of the stage that produced it."""

    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)

    def save_report(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.report)
