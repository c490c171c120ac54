"""The model family per conversion type, its parameter files, and its calibration on recorded answers."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from ihc_attribution_dev.server import params as params_file
from ihc_attribution_dev.server.__main__ import build_parser, config_from_args
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.model import (
    FITTED_PARAMS,
    ChannelFactors,
    Curve,
    ModelParams,
    PhaseWeights,
    Touchpoint,
    TypeModel,
    Batch,
    attribute_journey,
    predict_batch,
    round_credits,
)
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution_dev.server.helpers import KEY, journey, post

np = pytest.importorskip("numpy")
pytest.importorskip("scipy")
cal = pytest.importorskip("ihc_attribution_dev.server.calibration")

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
CHANNELS = ["Direct Traffic", "Paid Search Brand", "Organic Traffic", "FB & IG Ads", "Newsletter & Email", "Referral"]


def tp(sid, hours, channel="Referral", he=1, ce=1, imp=0, conv=0) -> Touchpoint:
    return Touchpoint(sid, T0 + timedelta(hours=hours), channel, he, ce, conv, imp)


def random_journeys(seed: int, count: int) -> list:
    """Recorded-looking journeys of 2 to 7 sessions (answers left empty): pauses from minutes to weeks."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        n = rng.choice([2, 2, 2, 3, 3, 4, 5, 7])
        hours, t = [], 0.0
        for _ in range(n):
            hours.append(t)
            t += rng.choice([rng.uniform(0, 1), rng.uniform(1, 30), rng.uniform(30, 400)])
        tps = [tp(f"j{k}s{i}", h, rng.choice(CHANNELS), rng.randint(0, 1), rng.randint(0, 1),
                  int(rng.random() < 0.1), int(i == n - 1)) for i, h in enumerate(hours)]
        out.append(cal.Journey(f"j{k}", tps, [dict.fromkeys(("initializer", "holder", "closer", "ihc"), 0.0)] * n))
    return out


# A parameter set in which every term of the family is away from its neutral value.
EVERY_TERM = replace(cal.TYPE_B, params=replace(
    cal.TYPE_B.params, holder_unengaged=0.3, impression=ChannelFactors(2.0, 0.5, 1.5)))


# -- the family ------------------------------------------------------------------------------------


def test_type_a_is_the_family_with_neutral_terms():
    p = FITTED_PARAMS
    assert (p.holder_first, p.holder_last, p.holder_unengaged, p.closer_unengaged) == (1.0, 1.0, 0.0, 0.0)
    assert p.closer_rank(7) == p.memory(500) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_of_journeys_gets_the_answers_of_one_journey_at_a_time(seed):
    journeys = random_journeys(seed, 60)
    batch = Batch([j.touchpoints for j in journeys])
    for model in (TypeModel(FITTED_PARAMS, PhaseWeights()), EVERY_TERM):
        columns = predict_batch(batch, model.params, model.weights)
        credits = [c for j in journeys for c in attribute_journey(j.touchpoints, model.weights, model.params)]
        for values, name in zip(columns, ("initializer", "holder", "closer", "ihc")):
            assert np.abs(values - np.array([getattr(c, name) for c in credits])).max() < 1e-12, name


def _params(**changes) -> ModelParams:
    return replace(FITTED_PARAMS, **changes)


def test_holder_first_zero_keeps_holder_credit_off_the_first_session():
    rows = [tp("a", 0), tp("b", 1), tp("c", 2, conv=1)]
    assert attribute_journey(rows)[0].holder > 0.1
    credits = attribute_journey(rows, params=_params(holder_first=0.0))
    assert credits[0].holder == 0.0 and sum(c.holder for c in credits) == pytest.approx(1.0)


def test_closer_rank_spreads_closer_credit_over_the_last_sessions():
    rows = [tp("a", 0), tp("b", 0.01), tp("c", 0.02, conv=1)]  # minutes apart: distance alone is flat
    flat = attribute_journey(rows)
    steep = attribute_journey(rows, params=_params(closer_rank=Curve(((0.0, 1.0), (1.0, 0.5), (2.0, 0.25)))))
    assert flat[0].closer == pytest.approx(flat[2].closer, rel=0.02)
    assert [c.closer for c in steep] == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75], rel=0.02)


def test_memory_forgets_sessions_behind_a_long_pause():
    rows = [tp("old", 0), tp("restart", 200), tp("last", 201, conv=1)]
    forget = _params(memory=Curve(((0.0, 1.0), (72.0, 1.0), (96.0, 0.0))))
    old, restart, _ = attribute_journey(rows, params=forget)
    assert (old.initializer, old.holder, old.closer, old.ihc) == (0.0, 0.0, 0.0, 0.0)
    assert restart.initializer == pytest.approx(1.0)
    # Everything forgotten but the last session: the initializer goes to the last session.
    only_last = attribute_journey([tp("a", 0), tp("b", 300, conv=1)], params=replace(
        forget, initializer_pause=Curve(((0.0, 0.0),))))
    assert [c.initializer for c in only_last] == [0.0, 1.0]


def test_unengaged_and_impression_terms():
    rows = [tp("a", 0, he=0, ce=0, imp=1), tp("b", 1, conv=1)]
    assert attribute_journey(rows)[0].closer == 0.0 and attribute_journey(rows)[0].holder == 0.0
    a, _ = attribute_journey(rows, params=_params(closer_unengaged=0.5, holder_unengaged=0.5))
    assert a.closer > 0 and a.holder > 0
    plain, _ = attribute_journey(rows, params=_params(closer_unengaged=0.5))
    boosted, _ = attribute_journey(rows, params=_params(closer_unengaged=0.5, impression=ChannelFactors(1, 1, 3)))
    assert boosted.closer > plain.closer and boosted.initializer == plain.initializer


@pytest.mark.parametrize("changes,message", [
    ({"holder_first": -1.0}, "holder_first"),
    ({"closer_unengaged": float("nan")}, "closer_unengaged"),
    ({"memory": Curve(((0.0, 0.0), (10.0, 1.0)))}, "memory"),
    ({"impression": ChannelFactors(-1.0, 1.0, 1.0)}, "impression"),
])
def test_model_params_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        _params(**changes)


# -- parameter files and the server ------------------------------------------------------------------


def test_parameter_file_round_trip(tmp_path):
    path = tmp_path / "b.json"
    params_file.dump(replace(EVERY_TERM, fit={"verdict": "good"}), "B", path)
    data = json.loads(path.read_text())
    assert data["conv_type_id"] == "B" and data["format"] == "ihc-local-model/1"
    loaded = params_file.load(path)
    assert loaded.params == EVERY_TERM.params
    assert loaded.weights == EVERY_TERM.weights
    assert loaded.source == "b.json" and loaded.fit == {"verdict": "good"}


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format="v0"), "format"),
    (lambda d: d.pop("weights"), "missing 'weights'"),
    (lambda d: d["curves"].pop("closer_distance"), "missing curve closer_distance"),
    (lambda d: d["curves"].update(wiggle=[[0, 1]]), "unknown curves: wiggle"),
    (lambda d: d["curves"].update(memory=[[5, 1], [1, 1]]), "curve memory: curve points need strictly increasing"),
    (lambda d: d.update(holder_first="1"), "holder_first must be a finite number"),
    (lambda d: d["channel_factors"].update(X={"closer": -2}), "factor closer of 'X'"),
])
def test_parameter_file_errors(tmp_path, mutate, message):
    data = params_file.to_dict(EVERY_TERM, "B")
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        params_file.load(path)


def test_server_answers_each_type_with_its_own_model():
    config = ServerConfig(api_keys=(KEY,), conv_type_ids=("demo", "B"), models={"B": cal.TYPE_B})
    rows = journey("c1", ["2024-01-01 10:00:00", "2024-01-02 09:00:00", "2024-01-05 12:00:00"],
                   ["Direct Traffic", "Organic Traffic", "FB & IG Ads"])
    tps = [tp(r["session_id"], 0, r["channel_label"]) for r in rows]
    tps = [replace(t, timestamp=datetime.strptime(r["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc),
                   conversion=r["conversion"]) for t, r in zip(tps, rows)]
    with serve(config) as url:
        demo = post(url, {"customer_journeys": rows}, conv_type_id="demo").json()["value"]
        b = post(url, {"customer_journeys": rows}, conv_type_id="B").json()["value"]
        assert requests.get(url + "/health").status_code == 200
    expected_b = round_credits(attribute_journey(tps, cal.TYPE_B.weights, cal.TYPE_B.params))
    expected_demo = round_credits(attribute_journey(tps))
    assert [r["ihc"] for r in b] == [c.ihc for c in expected_b]
    assert [r["ihc"] for r in demo] == [c.ihc for c in expected_demo]
    assert b[0]["holder"] == 0.0 and demo[0]["holder"] > 0  # type B gives the first session no holder credit


def test_server_config_rejects_parameters_of_a_type_it_does_not_serve():
    with pytest.raises(ValueError, match="'B', which this server does not serve"):
        ServerConfig(api_keys=("k",), conv_type_ids=("demo",), models={"B": cal.TYPE_B})
    config = ServerConfig(api_keys=("k",), conv_type_ids=("demo", "B"), models={"B": cal.TYPE_B}, weights=PhaseWeights(1, 1, 1))
    assert config.model_for("B") is cal.TYPE_B
    assert config.model_for("demo").params is FITTED_PARAMS and config.model_for("demo").weights == PhaseWeights(1, 1, 1)
    assert "B: synthetic type B" in config.describe_models()


def test_model_params_flag(tmp_path):
    path = tmp_path / "b.json"
    params_file.dump(cal.TYPE_B, "B", path)
    cfg = config_from_args(build_parser().parse_args(
        ["--api-key", "k", "--conv-type-id", "demo", "--conv-type-id", "B", "--model-params", f"B={path}"]), {})
    assert cfg.model_for("B").params == cal.TYPE_B.params and cfg.model_for("demo").params is FITTED_PARAMS
    for argv, message in [
        (["--model-params", f"X={path}"], "'X', which this server does not serve"),
        (["--model-params", str(path)], "takes ID=PARAMS.json"),
        (["--model-params", f"B={tmp_path / 'missing.json'}"], "cannot read model parameters"),
        (["--model-params", f"B={path}", "--model-params", f"B={path}"], "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            config_from_args(build_parser().parse_args(["--api-key", "k", "--conv-type-id", "B", *argv]), {})


# -- calibration -----------------------------------------------------------------------------------


def _held_out_mae(journeys) -> tuple[float, float, TypeModel]:
    """Calibrate on the even journeys, score ihc on the odd ones: (model MAE, linear MAE, model)."""
    train, test = cal.folds_of(cal.multi_session(journeys), 2)[1]
    model = cal.calibrate(train)
    return cal.mae(test, cal.model_method(model.params, model.weights)), cal.mae(test, cal.linear), model


def test_calibration_recovers_a_different_conversion_type():
    journeys = cal.synthetic_answers(random_journeys(7, 700), EVERY_TERM)
    model_mae, linear_mae, model = _held_out_mae(journeys)
    assert model_mae <= 0.05
    assert model_mae < linear_mae / 10
    # The distinctive terms of the type are found, not just any curve that happens to fit.
    w = model.weights
    assert (w.initializer, w.holder, w.closer) == pytest.approx((0.25, 0.25, 0.5), abs=0.01)
    assert model.params.holder_first < 0.1
    assert model.params.closer_rank(1) == pytest.approx(0.5, abs=0.15)
    assert model.params.impression.initializer > 1.3


def test_cross_validation_answers_each_journey_with_the_model_of_the_other_fold():
    journeys = cal.synthetic_answers(random_journeys(9, 240), EVERY_TERM)
    held, cv = cal.cross_validate(journeys, 2, max_nfev=5)
    assert sorted(j.conversion_id for j in held) == sorted(j.conversion_id for j in cal.multi_session(journeys))
    train, test = cal.folds_of(cal.multi_session(journeys), 2)[0]
    model = cal.calibrate(train, max_nfev=5)
    # Looked up by conversion id: an equal copy of a journey (as read again from its file) gets the same answer.
    assert cv(replace(test[0])) == cal.model_method(model.params, model.weights)(test[0])


def test_calibration_of_a_shape_outside_the_family_fits_poorly():
    journeys = cal.time_of_day_answers(random_journeys(8, 500))
    model_mae, linear_mae, _ = _held_out_mae(journeys)
    assert model_mae > cal.POOR_FIT_RATIO * linear_mae


def _calibration_script():
    spec = importlib.util.spec_from_file_location("calibrate_ihc_model", ROOT / "scripts" / "calibrate_ihc_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(path: Path, journeys, conv_type: str) -> Path:
    cal.write_answers(path, journeys, conv_type)
    return path


def test_calibrate_command_writes_parameters_and_reports_a_poor_fit(tmp_path, capsys):
    script = _calibration_script()
    good = _write(tmp_path / "b.jsonl", cal.synthetic_answers(random_journeys(3, 200), cal.TYPE_B), "B")
    out = tmp_path / "b.json"
    assert script.main(["--answers", str(good), "--conv-type-id", "B", "--folds", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "good fit" in text and "| linear (1/n) |" in text and "| last touch |" in text
    assert "2-fold cross-validated" in text
    fit = params_file.load(out).fit
    assert fit["verdict"] == "good" and fit["mae_cross_validated"] < 0.05 < fit["mae_linear"]

    bad = _write(tmp_path / "tod.jsonl", cal.time_of_day_answers(random_journeys(4, 200)), "T")
    out = tmp_path / "tod.json"
    assert script.main(["--answers", str(bad), "--conv-type-id", "T", "--folds", "2", "--out", str(out)]) == 0
    assert "POOR FIT" in capsys.readouterr().out
    assert params_file.load(out).fit["verdict"] == "poor"


@pytest.mark.parametrize("count,conv_type,message", [
    (60, "B", "too few journeys to calibrate: 60 with 2+ sessions, at least 100 needed"),
    (120, "B", "too few journeys for 2-fold cross-validation: 120 with 2+ sessions leave about 60"),
    (300, "Z", "no journeys of conv_type 'Z' (it holds conv_type B)"),
])
def test_calibrate_command_refuses_recordings_it_cannot_fit(tmp_path, capsys, count, conv_type, message):
    script = _calibration_script()
    path = _write(tmp_path / "small.jsonl", cal.synthetic_answers(random_journeys(5, count), cal.TYPE_B), "B")
    out = tmp_path / "p.json"
    folds = ["--folds", "2"] if count == 120 else []
    assert script.main(["--answers", str(path), "--conv-type-id", conv_type, "--out", str(out), *folds]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("change,message", [
    (lambda d: d["result"].pop(), "exactly one row per session"),
    (lambda d: d["result"][0].update(ihc=0.9), "column ihc sums to"),
    (lambda d: d["sessions"][0].update(timestamp="yesterday"), "timestamp"),
    (lambda d: d.pop("sessions"), "missing 'sessions'"),
])
def test_malformed_recordings_are_refused_with_the_line(tmp_path, change, message):
    journeys = cal.synthetic_answers(random_journeys(6, 3), cal.TYPE_B)
    path = _write(tmp_path / "r.jsonl", journeys, "B")
    lines = path.read_text().splitlines()
    data = json.loads(lines[1])
    change(data)
    lines[1] = json.dumps(data)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(cal.RecordingError, match=f"r.jsonl line 2: .*{message}"):
        cal.load_answers(path)


def test_type_a_calibrated_on_half_of_the_reference_answers_the_other_half():
    script = _calibration_script()
    if not script.DEFAULT_REFERENCE.is_file():
        pytest.skip(f"reference answers not found at {script.DEFAULT_REFERENCE}")
    model_mae, linear_mae, model = _held_out_mae(cal.load_answers(script.DEFAULT_REFERENCE, "A"))
    assert model_mae <= 0.002
    assert (model.weights.initializer, model.weights.holder, model.weights.closer) == (0.345, 0.38, 0.275)
