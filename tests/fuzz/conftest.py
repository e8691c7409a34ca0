"""Hypothesis keeps its caches (constants it mined, unicode tables) in the system temp directory, not in the
work tree; with `database=None` in the settings it stores no examples at all."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cortex-flows-hypothesis")
