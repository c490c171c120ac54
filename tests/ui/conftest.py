"""The UI plugin lives in ``plugins/``, which Airflow puts on ``sys.path``; the tests do the same."""

from __future__ import annotations

import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.append(str(PLUGINS))
