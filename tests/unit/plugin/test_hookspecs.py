"""The hook specifications are the plugin reference: each must document itself."""

from __future__ import annotations

import inspect

import pytest

from para_attn_server.plugin import hookspecs

SPECS = [fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "para_attn_server_spec")]


def test_there_are_hook_specs() -> None:
    assert {fn.__name__ for fn in SPECS} >= {"setup", "validate", "predict", "register_predictors"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda fn: fn.__name__)
def test_every_hook_documents_each_parameter_and_where_it_runs(spec: object) -> None:
    doc = inspect.getdoc(spec) or ""
    for parameter in inspect.signature(spec).parameters:  # type: ignore[arg-type]
        assert f":param {parameter}:" in doc, f"{spec.__name__} does not document {parameter!r}"  # type: ignore[attr-defined]
    assert "Runs " in doc, f"{spec.__name__} does not say where and when it runs"  # type: ignore[attr-defined]
