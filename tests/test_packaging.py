"""pyproject.toml in the forms current build tools read without deprecation warnings."""

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_the_build_needs_a_setuptools_that_reads_it():
    # a TOML table ({text = "MIT"}) makes setuptools >= 77 print a deprecation warning per build
    # step of `make install`; the SPDX string is read from setuptools 77 on (PEP 639)
    assert PYPROJECT["project"]["license"] == "MIT"
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools.replace(" ", ""))
    assert minimum and int(minimum[1]) >= 77, setuptools
    # no license-files: setuptools' default patterns (LICEN[CS]E*, COPYING*, ...) pick up any file
    assert "license-files" not in PYPROJECT["project"]
