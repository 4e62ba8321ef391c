"""pytest plugin (entry point `pytest11`): `pytest --unified-backend NAME` runs the conformance suite.

Inactive unless the option is given. Then the suite in `unified/conformance/suite.py` is collected
for each named backend, next to whatever else the command collects.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unified", "unified backend conformance")
    group.addoption("--unified-backend", action="append", default=[], metavar="NAME",
                    help="run the unified conformance suite against this backend (repeatable)")
    group.addoption("--unified-images", type=int, default=24,
                    help="photo crops for the fp32 consistency check (default 24)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("unified_backend"):
        if config.args_source == pytest.Config.ArgsSource.ARGS:
            config.args.append(str(SUITE))
        else:
            config.args[:] = [str(SUITE)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "unified_backend" in metafunc.fixturenames:
        metafunc.parametrize("unified_backend", metafunc.config.getoption("unified_backend"), scope="module")
