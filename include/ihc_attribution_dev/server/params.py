"""Parameter files of the local IHC double: one conversion type's model as JSON.

``scripts/calibrate_ihc_model.py --out PARAMS.json`` writes them; the server loads them with
``--model-params ID=PARAMS.json``.

Format (``"format": "ihc-local-model/1"``)::

    {"format": "ihc-local-model/1", "conv_type_id": "B",
     "weights": {"initializer": 0.3, "holder": 0.3, "closer": 0.4},
     "curves": {"initializer_pause": [[0, 0.0], [48, 1.0]], "closer_distance": [[0, 1.0], ...],
                "closer_rank": [[0, 1.0]], "holder_discount": [[0, 1.0]], "memory": [[0, 1.0]]},
     "holder_first": 1.0, "holder_last": 1.0, "holder_unengaged": 0.0, "closer_unengaged": 0.0,
     "impression": {"initializer": 1.0, "holder": 1.0, "closer": 1.0},
     "channel_factors": {"Direct Traffic": {"initializer": 0.84, "holder": 0.96, "closer": 1.08}},
     "fit": {...}}

``fit`` (optional) records how the parameters were calibrated (journeys, cross-validated MAE and
the baselines' MAE); it is shown in the server's startup log and does not change any answer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ihc_attribution_dev.server.model import (
    PHASES,
    ChannelFactors,
    Curve,
    ModelParams,
    PhaseWeights,
    TypeModel,
)

FORMAT = "ihc-local-model/1"
CURVES = ("initializer_pause", "closer_distance", "closer_rank", "holder_discount", "memory")
SCALARS = ("holder_first", "holder_last", "holder_unengaged", "closer_unengaged")


def to_dict(model: TypeModel, conv_type_id: str) -> dict[str, Any]:
    """The JSON form of ``model`` for conversion type ``conv_type_id``."""
    p = model.params
    # asdict of weights and factors: their fields are the PHASES, in order.
    out: dict[str, Any] = {
        "format": FORMAT,
        "conv_type_id": conv_type_id,
        "weights": asdict(model.weights),
        "curves": {name: [list(point) for point in getattr(p, name).points] for name in CURVES},
        **{name: getattr(p, name) for name in SCALARS},
        "impression": asdict(p.impression),
        "channel_factors": {label: asdict(f) for label, f in sorted(p.channel_factors.items())},
    }
    if model.fit is not None:
        out["fit"] = dict(model.fit)
    return out


def from_dict(data: Any, source: str = "parameters") -> TypeModel:
    """A :class:`TypeModel` from its JSON form; raises ``ValueError`` naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"{source}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    try:
        curves, channels = data["curves"], data.get("channel_factors", {})
        if not isinstance(curves, dict) or not isinstance(channels, dict):
            raise ValueError("'curves' and 'channel_factors' must be objects")
        unknown = sorted(set(curves) - set(CURVES))
        if unknown:
            raise ValueError(f"unknown curves: {', '.join(unknown)}")
        for required in ("initializer_pause", "closer_distance", "holder_discount"):
            if required not in curves:
                raise ValueError(f"missing curve {required}")
        # ModelParams and PhaseWeights check the values themselves (finite, >= 0).
        params = ModelParams(
            **{name: _curve(points, name) for name, points in curves.items()},
            channel_factors={label: _factors(f, f"channel_factors.{label}") for label, f in channels.items()},
            **{name: _number(data[name], name) for name in SCALARS if name in data},
            impression=_factors(data.get("impression", {}), "impression"),
        )
        weights = PhaseWeights(**{phase: _number(data["weights"][phase], f"weights.{phase}") for phase in PHASES})
    except KeyError as exc:
        raise ValueError(f"{source}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    fit = data.get("fit")
    return TypeModel(params, weights, source=source, fit=fit if isinstance(fit, dict) else None)


def load(path: str | Path) -> TypeModel:
    """Read a parameter file; raises ``ValueError`` (unreadable, not JSON, or invalid)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read model parameters {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return from_dict(data, source=path.name)


def dump(model: TypeModel, conv_type_id: str, path: str | Path) -> None:
    """Write ``model`` as a parameter file (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(to_dict(model, conv_type_id), indent=1)
    # One line per curve point: [x, y].
    text = re.sub(r"\[\s+(-?[\d.e+-]+),\s+(-?[\d.e+-]+)\s+\]", r"[\1, \2]", text)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _curve(points: Any, name: str) -> Curve:
    try:
        if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
            raise ValueError("must be a list of [x, y] points")
        return Curve(tuple((_number(x, "x"), _number(y, "y")) for x, y in points))
    except ValueError as exc:
        raise ValueError(f"curve {name}: {exc}") from None


def _factors(value: Any, name: str) -> ChannelFactors:
    if not isinstance(value, dict) or set(value) - set(PHASES):
        raise ValueError(f"{name} must be an object with (some of) initializer, holder, closer")
    return ChannelFactors(**{phase: _number(value.get(phase, 1.0), f"{name}.{phase}") for phase in PHASES})
