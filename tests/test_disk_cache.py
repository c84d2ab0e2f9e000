"""The per-user disk cache of compiled formulas (issue #13, point 1): data only, versioned, never an error.

A formula (or a registry name with other parameters) compiled once is stored as JSON in ``GAINDERIVE_CACHE_DIR``;
a second process loads it without importing sympy and reports the same numbers.  Broken, stale or unwritable
caches are ignored.

Reference values: ELU with alpha = a, derived by hand (z ~ N(0, q), f = z for z > 0 and a(e^z - 1) below; the
truncated exponential moments E[e^{kz} 1{z<0}] = e^{k^2 q/2} Phi(-k sqrt q)):

    E f     = sqrt(q/(2 pi)) + a (e^{q/2} Phi(-sqrt q) - 1/2)
    E f^2   = q/2 + a^2 (e^{2q} Phi(-2 sqrt q) - 2 e^{q/2} Phi(-sqrt q) + 1/2)
    E f'^2  = 1/2 + a^2 e^{2q} Phi(-2 sqrt q)

evaluated by mpmath at 30 digits, so every comparison is |value - reference| <= error bar + 4 ulps of the
reference (its rounding to float64 and the value's last operation).
"""

import ast
import importlib
import json
import os
import pathlib
import subprocess
import sys
import warnings

import mpmath as mp
import numpy as np
import pytest
from closed_forms import elu_like

import gainderive as gd
from gainderive import _cache

moments_module = importlib.import_module("gainderive.moments")
ULP = 2.0**-52
FORMULA = "where(x > 0, x, 0.5*expm1(x))"  # ELU with alpha = 1/2, typed as a formula
QS = [0.1, 1.0, 7.0]
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


def hand_elu(q):
    """ELU with alpha = 1/2, its four moments derived by hand (tests/closed_forms.py), at 30 digits."""
    with mp.workdps(30):
        mean, second, derivative = elu_like(mp.mpf(q), mp.mpf(1) / 2)
        return {"mean": mean, "second_moment": second, "derivative_second_moment": derivative,
                "variance": second - mean**2}


def assert_within_bars(rows):
    """rows: {moment: (values, errors)} at QS."""
    for name in MOMENTS:
        values, errors = (np.asarray(v, dtype=float) for v in rows[name][:2])
        exact = np.array([float(hand_elu(q)[name]) for q in QS])
        assert np.all(np.abs(values - exact) <= errors + 4 * ULP * np.abs(exact)), name


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache directory, and an empty in-memory compile cache before and after (so the disk is read)."""
    folder = tmp_path / "cache"
    monkeypatch.delenv("GAINDERIVE_NO_CACHE", raising=False)
    monkeypatch.setenv("GAINDERIVE_CACHE_DIR", str(folder))
    moments_module.clear_compile_cache()
    yield folder
    moments_module.clear_compile_cache()


def fresh_moments(spec, **params):
    moments_module.clear_compile_cache()  # what a new process starts with
    return gd.moments(spec, np.array(QS), **params)


def as_rows(m):
    return {name: (est.value.tolist(), est.error.tolist(), est.method) for name, est in m}


_CHILD = """
import json, sys
import numpy as np
import gainderive as gd
out = {}
for spec, params in ((FORMULA, {}), ("elu", {"alpha": "1/2"})):
    m = gd.moments(spec, np.array(QS), **params)
    out[spec] = {name: (e.value.tolist(), e.error.tolist(), e.method) for name, e in m}
    out[spec]["forms"] = {k: (None if v is None else v.text) for k, v in m.closed_forms.items()}
out["sympy"] = "sympy" in sys.modules
print(json.dumps(out))
"""


def run_child(folder):
    env = {**os.environ, "GAINDERIVE_CACHE_DIR": str(folder)}
    env.pop("GAINDERIVE_NO_CACHE", None)
    code = _CHILD.replace("FORMULA", repr(FORMULA)).replace("QS", repr(QS))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=120)
    return json.loads(done.stdout)


def test_a_second_process_loads_the_formula_without_sympy_and_reports_the_same(tmp_path):
    folder = tmp_path / "cache"
    first = run_child(folder)
    assert first["sympy"] is True  # the first process derived and verified the forms
    assert len(list(folder.glob("*.json"))) == 2  # the formula, and the registry name with alpha = 1/2
    second = run_child(folder)
    assert second["sympy"] is False
    assert second == {**first, "sympy": False}  # the same numbers, bars, methods and forms
    for spec in (FORMULA, "elu"):
        assert_within_bars(second[spec])
        assert second[spec]["forms"]["derivative_second_moment"] is not None


def test_cached_and_uncached_moments_are_the_same_and_right(cache_dir, monkeypatch):
    built = as_rows(fresh_moments(FORMULA))
    assert len(list(cache_dir.glob("*.json"))) == 1
    loaded = as_rows(fresh_moments(FORMULA))
    monkeypatch.setenv("GAINDERIVE_NO_CACHE", "1")
    uncached = as_rows(fresh_moments(FORMULA))
    assert loaded == built == uncached
    assert_within_bars(loaded)


def test_a_stored_entry_is_really_used(cache_dir):
    # a control for the tests below: an entry of this version with an altered form text is read back as stored
    fresh_moments(FORMULA)
    (path,) = cache_dir.glob("*.json")
    entry = json.loads(path.read_text())
    entry["closed_forms"]["mean"]["text"] = "altered"
    path.write_text(json.dumps(entry))
    assert fresh_moments(FORMULA).closed_forms["mean"].text == "altered"


@pytest.mark.parametrize("damage", ["truncated", "not json", "a list", "binary", "empty", "wrong key",
                                    "missing part", "other version", "other format"])
def test_a_damaged_or_stale_entry_is_ignored_and_rebuilt(cache_dir, damage):
    reference = as_rows(fresh_moments(FORMULA))
    (path,) = cache_dir.glob("*.json")
    text = path.read_text()
    entry = json.loads(text)
    entry["closed_forms"]["mean"]["text"] = "altered"  # would show if the damaged entry were used
    if damage == "truncated":
        path.write_text(json.dumps(entry)[: len(text) // 2])
    elif damage == "not json":
        path.write_text("{this is not json")
    elif damage == "a list":
        path.write_text("[1, 2, 3]")
    elif damage == "binary":
        path.write_bytes(bytes(range(256)))
    elif damage == "empty":
        path.write_text("")
    elif damage == "wrong key":
        path.write_text(json.dumps({**entry, "key": "0" * 40 + ".json"}))
    elif damage == "missing part":
        del entry["integrand"]
        path.write_text(json.dumps(entry))
    elif damage == "other version":
        path.write_text(json.dumps({**entry, "version": "0.0.1"}))
    else:
        path.write_text(json.dumps({**entry, "format": _cache.FORMAT + 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignored quietly: no warning, no error
        m = fresh_moments(FORMULA)
    assert as_rows(m) == reference and m.closed_forms["mean"].text != "altered"
    rebuilt = json.loads(path.read_text())  # written again, whole and of this version
    assert rebuilt["version"] == gd.__version__ and rebuilt["format"] == _cache.FORMAT
    assert rebuilt["closed_forms"]["mean"]["text"] != "altered"


def test_an_unwritable_cache_directory_means_no_caching_and_no_noise(tmp_path, monkeypatch, recwarn):
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    monkeypatch.delenv("GAINDERIVE_NO_CACHE", raising=False)
    monkeypatch.setenv("GAINDERIVE_CACHE_DIR", str(blocker / "cache"))  # cannot be created: its parent is a file
    m = fresh_moments(FORMULA)
    assert_within_bars(as_rows(m))
    assert not [w for w in recwarn if "cache" in str(w.message).lower()]
    assert blocker.read_text() == "not a directory"
    moments_module.clear_compile_cache()


@pytest.mark.parametrize("setting", [{"GAINDERIVE_CACHE_DIR": ""}, {"GAINDERIVE_NO_CACHE": "1"}])
def test_the_cache_is_disabled_by_the_environment(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GAINDERIVE_CACHE_DIR", str(tmp_path / "chosen"))
    monkeypatch.delenv("GAINDERIVE_NO_CACHE", raising=False)
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert _cache.cache_directory() is None
    fresh_moments(FORMULA)
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "chosen").exists()
    moments_module.clear_compile_cache()


def test_the_default_directory_is_the_per_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GAINDERIVE_CACHE_DIR", raising=False)
    monkeypatch.delenv("GAINDERIVE_NO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_directory() == tmp_path / "xdg" / "gainderive"
    fresh_moments(FORMULA)
    assert len(list((tmp_path / "xdg" / "gainderive").glob("*.json"))) == 1
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_directory() == tmp_path / "home" / ".cache" / "gainderive"
    moments_module.clear_compile_cache()


def test_entries_are_plain_json_and_nothing_unpickles(cache_dir):
    fresh_moments(FORMULA)
    (path,) = cache_dir.glob("*.json")
    assert path.stat().st_size < _cache.MAX_ENTRY_BYTES

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(json.loads(path.read_text(encoding="utf-8")))
    # no module of the package can deserialise code: pickle, marshal, shelve, dill or eval of a stored text
    package = pathlib.Path(gd.__file__).parent
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & {"pickle", "marshal", "shelve", "dill", "cloudpickle"}, \
                source.name
