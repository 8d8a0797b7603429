"""pyproject.toml installs without setuptools' deprecation warnings (what every `make dev-up` used to print)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# PEP 639: an SPDX expression, a plain string; setuptools reads it from version 77 on.
SPDX_EXPRESSION = re.compile(r"^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$")


def test_the_license_is_an_spdx_expression_not_a_table() -> None:
    license_ = PYPROJECT["project"]["license"]
    assert isinstance(license_, str), "the `license = {text = ...}` table is deprecated"
    assert SPDX_EXPRESSION.match(license_)
    classifiers = PYPROJECT["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")], "license classifiers are deprecated"


def test_the_build_uses_a_setuptools_that_reads_spdx_licenses() -> None:
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    minimum = re.search(r">=\s*(\d+)", setuptools)
    assert minimum is not None, setuptools
    assert int(minimum.group(1)) >= 77, setuptools
