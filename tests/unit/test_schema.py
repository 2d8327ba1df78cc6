"""schema.InputSchema: the request type derived from ``predict``'s signature."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from para_attn_server import ConfigurationError, InputError, Output, Predictor
from para_attn_server.legacy import as_predictor
from para_attn_server.schema import MODEL, OUTPUT_PATH, InputSchema, RequestField
from tests.unit.fakes import EchoPredictor, KwargsPredictor, LegacyPredictor


def field_info(schema: InputSchema) -> dict[str, msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(schema.type)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f for f in info.fields}


def test_fields_follow_predict_parameters_and_add_output_path() -> None:
    fields = field_info(InputSchema(EchoPredictor()))

    assert list(fields) == ["prompt", "repeat", "scale", "tags", OUTPUT_PATH, MODEL]


def test_defaults_come_from_predict_and_parameters_without_one_are_required() -> None:
    fields = field_info(InputSchema(EchoPredictor()))

    assert fields["prompt"].required
    assert not fields["repeat"].required
    assert fields["repeat"].default == 1
    assert fields["scale"].default == 3.5
    assert fields[OUTPUT_PATH].default is None


def test_meta_limits_become_schema_constraints() -> None:
    fields = field_info(InputSchema(EchoPredictor()))

    repeat, prompt = fields["repeat"].type, fields["prompt"].type
    assert isinstance(repeat, msgspec.inspect.IntType)
    assert (repeat.ge, repeat.le) == (1, 50)
    assert isinstance(prompt, msgspec.inspect.StrType)
    assert (prompt.min_length, prompt.max_length) == (1, 100)


def test_decode_fills_defaults() -> None:
    inputs = InputSchema(EchoPredictor()).decode_json(b'{"prompt": "a"}')

    assert inputs == {"prompt": "a", "repeat": 1, "scale": 3.5, "tags": [], OUTPUT_PATH: None}


def test_mutable_default_is_a_fresh_copy_per_request() -> None:
    schema = InputSchema(EchoPredictor())
    first = schema.decode_json(b'{"prompt": "a"}')
    first["tags"].append("changed")

    second = schema.decode_json(b'{"prompt": "a"}')

    assert second["tags"] == []
    assert EchoPredictor.predict.__defaults__[-1] == []  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param(b'{"prompt": "a", "bogus": 1}', "`bogus`", id="unknown field"),
        pytest.param(b"{}", "`prompt`", id="missing field"),
        pytest.param(b'{"prompt": 3}', "$.prompt", id="wrong type"),
        pytest.param(b'{"prompt": "a", "repeat": 0}', "$.repeat", id="below minimum"),
        pytest.param(b'{"prompt": "a", "repeat": 51}', "$.repeat", id="above maximum"),
        pytest.param(b'{"prompt": ""}', "$.prompt", id="too short"),
        pytest.param(b'{"prompt": "a", "output_path": ""}', "$.output_path", id="empty output_path"),
    ],
)
def test_invalid_body_error_names_the_field(body: bytes, names: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        InputSchema(EchoPredictor()).decode_json(body)

    assert names in str(info.value)


def test_range_error_states_the_limit() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` <= 50"):
        InputSchema(EchoPredictor()).decode_json(b'{"prompt": "a", "repeat": 51}')


def test_kwargs_predictor_accepts_and_receives_extra_fields() -> None:
    schema = InputSchema(KwargsPredictor())

    inputs = schema.decode_json(b'{"prompt": "a", "steps": 3, "scheduler": {"name": "euler"}}')

    assert schema.accepts_extra
    assert schema.predict_kwargs(inputs) == {"prompt": "a", "steps": 3, "scheduler": {"name": "euler"}}


def test_schema_without_kwargs_rejects_extras_instead() -> None:
    assert not InputSchema(EchoPredictor()).accepts_extra


def test_new_style_predictor_gets_output_path_added_but_never_passed() -> None:
    schema = InputSchema(EchoPredictor())
    inputs = schema.decode_json(b'{"prompt": "a", "output_path": "out/a.png"}')

    assert inputs[OUTPUT_PATH] == "out/a.png"
    assert not schema.predict_takes_output_path
    assert schema.predict_kwargs(inputs) == {"prompt": "a", "repeat": 1, "scale": 3.5, "tags": []}


def test_original_style_predictor_receives_its_own_output_path() -> None:
    schema = InputSchema(as_predictor(LegacyPredictor()))
    inputs = schema.decode_json(b'{"prompt": "a", "output_path": "a.png"}')

    assert schema.predict_takes_output_path
    assert schema.predict_kwargs(inputs) == {"prompt": "a", "seed": 0, OUTPUT_PATH: "a.png"}


def test_kwargs_predictor_without_output_path_parameter_does_not_get_it() -> None:
    schema = InputSchema(KwargsPredictor())
    inputs = schema.decode_json(b'{"prompt": "a", "output_path": "a.png", "steps": 2}')

    assert OUTPUT_PATH not in schema.predict_kwargs(inputs)


class TuplePredictor(Predictor):
    def predict(self, size: tuple[int, int] = (32, 32), scale: float = 1.0) -> Output | None:
        return None


@pytest.mark.parametrize(
    ("predictor", "body"),
    [
        (EchoPredictor(), b'{"prompt": "a", "repeat": 3, "tags": ["x"], "output_path": "a.png"}'),
        (TuplePredictor(), b'{"size": [64, 16], "scale": 2}'),
        (KwargsPredictor(), b'{"prompt": "a", "extra": [1, 2], "more": {"k": null}}'),
    ],
)
def test_convert_rebuilds_decoded_inputs_from_their_msgpack_form(predictor: object, body: bytes) -> None:
    schema = InputSchema(predictor)
    inputs = schema.decode_json(body)

    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(inputs))

    assert schema.convert(raw) == inputs


def test_convert_restores_types_that_msgpack_loses() -> None:
    schema = InputSchema(TuplePredictor())
    inputs = schema.decode_json(b'{"size": [64, 16]}')

    converted = schema.convert(msgspec.msgpack.decode(msgspec.msgpack.encode(inputs)))

    assert converted["size"] == (64, 16)
    assert isinstance(converted["size"], tuple)


def test_unresolvable_annotation_accepts_any_value() -> None:
    class Forward(Predictor):
        def predict(self, value: NoSuchType = None) -> None:  # type: ignore[name-defined]  # noqa: F821
            return None

    schema = InputSchema(Forward())

    assert schema.decode_json(b'{"value": {"anything": [1]}}')["value"] == {"anything": [1]}


def test_object_without_predict_is_rejected() -> None:
    with pytest.raises(TypeError, match="has no predict method"):
        InputSchema(object())


def test_positional_varargs_are_not_fields() -> None:
    class Star(Predictor):
        def predict(self, *images: Any, prompt: str = "") -> None:
            return None

    assert list(field_info(InputSchema(Star()))) == ["prompt", OUTPUT_PATH, MODEL]


# ---- fields plugins add (register_request_fields) -------------------------------------------


def refuse_ftp(value: str | None) -> None:
    if value is not None and value.startswith("ftp:"):
        raise ValueError("must not be an ftp URL")


HOOK = RequestField("hook", Annotated[str, msgspec.Meta(max_length=20)] | None, None, "hooks", refuse_ftp)
EVENTS = RequestField("hook_events", list[str], ["start"], "hooks")


def test_plugin_fields_join_the_schema_with_their_defaults() -> None:
    schema = InputSchema(EchoPredictor(), [HOOK, EVENTS])

    fields = field_info(schema)
    inputs = schema.decode_json(b'{"prompt": "a"}')

    assert list(fields) == ["prompt", "repeat", "scale", "tags", OUTPUT_PATH, MODEL, "hook", "hook_events"]
    assert (inputs["hook"], inputs["hook_events"]) == (None, ["start"])
    inputs["hook_events"].append("changed")
    assert schema.decode_json(b'{"prompt": "a"}')["hook_events"] == ["start"]  # a fresh copy per request


def test_plugin_fields_are_type_checked_and_their_check_refuses_naming_the_field() -> None:
    schema = InputSchema(EchoPredictor(), [HOOK])

    with pytest.raises(msgspec.ValidationError, match=r"\$\.hook"):
        schema.decode_json(b'{"prompt": "a", "hook": "http://far.too.long.example/"}')
    with pytest.raises(InputError) as info:
        schema.decode_json(b'{"prompt": "a", "hook": "ftp://x"}')

    assert (info.value.field, info.value.message) == ("hook", "must not be an ftp URL")


def test_plugin_fields_never_reach_the_ranks_nor_predict() -> None:
    for predictor in (EchoPredictor(), KwargsPredictor()):
        schema = InputSchema(predictor, [HOOK, EVENTS])
        inputs = schema.decode_json(b'{"prompt": "a", "hook": "http://x/"}')

        sent = schema.rank_inputs(inputs)

        assert "hook" in inputs
        assert not {"hook", "hook_events"} & set(sent)
        assert not {"hook", "hook_events"} & set(InputSchema(predictor).predict_kwargs(sent))


class HookedPredictor(Predictor):
    def predict(self, prompt: str, hook: str = "") -> Output | None:
        return None


@pytest.mark.parametrize(
    ("predictor", "field", "owner"),
    [
        (HookedPredictor(), HOOK, "HookedPredictor.predict"),
        (EchoPredictor(), RequestField(OUTPUT_PATH, str, None, "paths"), "EchoPredictor.predict"),
    ],
)
def test_a_plugin_field_that_predict_has_is_refused_naming_field_and_plugin(
    predictor: object, field: RequestField, owner: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        InputSchema(predictor, [field])

    assert f"request field {field.name!r} of plugin {field.plugin!r}" in str(info.value)
    assert owner in str(info.value)


def test_a_kwargs_predictor_takes_plugin_fields_without_a_clash() -> None:
    schema = InputSchema(KwargsPredictor(), [HOOK])

    assert schema.decode_json(b'{"prompt": "a", "hook": "http://x/"}')["hook"] == "http://x/"


# ---- the model field and -o defaults ----------------------------------------------------------


def test_the_model_field_is_the_servers_kept_only_when_chosen_and_never_sent_to_the_ranks() -> None:
    schema = InputSchema(EchoPredictor(), model="echo")

    assert "model" not in schema.decode_json(b'{"prompt": "a"}')  # a one-model server's inputs as before
    chosen = schema.decode_json(b'{"prompt": "a", "model": "echo"}')
    assert chosen["model"] == "echo"
    assert "model" not in schema.rank_inputs(chosen)
    assert "model" not in schema.predict_kwargs(chosen)


def test_a_predict_parameter_named_model_is_refused_at_start() -> None:
    class Named:
        def predict(self, model: str = "x") -> None:
            return None

    with pytest.raises(ConfigurationError, match="takes 'model'"):
        InputSchema(Named())


def test_defaults_replace_predicts_own_checked_against_the_fields_limits() -> None:
    schema = InputSchema(EchoPredictor(), defaults={"repeat": 3, "prompt": "a cat"})

    assert schema.decode_json(b"{}") == {"prompt": "a cat", "repeat": 3, "scale": 3.5, "tags": [], OUTPUT_PATH: None}
    with pytest.raises(ConfigurationError, match="-o defaults: repeat: Expected `int` >= 1"):
        InputSchema(EchoPredictor(), defaults={"repeat": 0})
    with pytest.raises(ConfigurationError, match="'colour' is not a request field"):
        InputSchema(EchoPredictor(), defaults={"colour": "red"})
