"""plugins.Plugins: loading, registries, predictor resolution and the typed hook calls."""

from __future__ import annotations

import types
from collections.abc import Callable, Generator
from typing import Any

import pluggy
import pytest

from para_attn_server import ConfigurationError, InputError, JobContext, Output, hookimpl
from para_attn_server.plugin.manager import AUTOLOAD_ENV, Plugins, version
from para_attn_server.settings import Settings
from para_attn_server.workers.executor import Executor, RankSpec
from tests.unit import fakes
from tests.unit.fakes import EchoPredictor, LegacyPredictor

ECHO = f"{fakes.__name__}:EchoPredictor"


class DummyExecutor(Executor):
    async def launch(self, spec: RankSpec) -> None:
        raise NotImplementedError

    async def wait_exit(self) -> str:
        raise NotImplementedError

    async def wait_stopped(self, timeout: float) -> bool:
        raise NotImplementedError

    async def terminate(self, grace: float) -> None:
        raise NotImplementedError


class ExecutorPlugin:
    @hookimpl
    def register_executors(self, register: Callable[[str, type[Executor]], None]) -> None:
        register("dummy", DummyExecutor)


class RivalEchoPlugin:
    """Registers another class under a name fakes already uses."""

    @hookimpl
    def register_predictors(self, register: Callable[[str, type[Any]], None]) -> None:
        register("echo", LegacyPredictor)


class RecordingValidator:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def validate(self, predictor: Any, inputs: dict[str, Any]) -> None:
        self.seen.append(inputs)


class RejectingValidator:
    @hookimpl
    def validate(self, predictor: Any, inputs: dict[str, Any]) -> None:
        if inputs.get("prompt") == "nsfw":
            raise InputError("refused by the safety filter", "prompt")


def job(inputs: dict[str, Any]) -> JobContext:
    return JobContext("job-1", inputs, rank=0, world_size=1, decide=lambda step, total: False)


# ---- loading ------------------------------------------------------------------------------


def test_load_without_autoload_has_only_core_plugin() -> None:
    plugins = Plugins.load(autoload=False)

    assert [name for name, _ in plugins.pm.list_name_plugin()] == ["para_attn_server.plugin.builtins"]
    assert plugins.predictors() == {}
    assert plugins.executors() == {}


def test_load_registers_a_module_given_by_name() -> None:
    plugins = Plugins.load([fakes.__name__], autoload=False)

    assert plugins.predictors() == {"echo": EchoPredictor, "legacy": LegacyPredictor}
    assert plugins.module_names() == [fakes.__name__]


def test_load_registers_module_objects_and_plugin_instances() -> None:
    plugins = Plugins.load([fakes, ExecutorPlugin()], autoload=False)

    assert set(plugins.predictors()) == {"echo", "legacy"}
    assert plugins.executors() == {"dummy": DummyExecutor}
    assert plugins.executor("dummy") is DummyExecutor


def test_load_registers_a_module_listed_twice_once() -> None:
    plugins = Plugins.load([fakes.__name__, fakes], autoload=False)

    assert plugins.module_names() == [fakes.__name__]


def test_same_class_registered_twice_under_one_name_is_fine() -> None:
    twin = types.ModuleType("twin_plugin")
    twin.register_predictors = hookimpl(lambda register: register("echo", EchoPredictor))  # type: ignore[attr-defined]

    plugins = Plugins.load([fakes, twin], autoload=False)

    assert plugins.predictors()["echo"] is EchoPredictor


def test_two_classes_under_one_name_is_an_error_naming_both() -> None:
    plugins = Plugins.load([fakes, RivalEchoPlugin()], autoload=False)

    with pytest.raises(ConfigurationError, match="predictor 'echo' is registered twice") as info:
        plugins.predictors()

    assert "EchoPredictor" in str(info.value)
    assert "LegacyPredictor" in str(info.value)


def test_misspelled_hook_fails_at_load() -> None:
    class Typo:
        @hookimpl
        def valdiate(self, predictor: Any, inputs: dict[str, Any]) -> None:
            pass

    with pytest.raises(pluggy.PluginValidationError, match="valdiate"):
        Plugins.load([Typo()], autoload=False)


def test_autoload_env_switch_turns_entry_points_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")

    assert "tiny" not in Plugins.load().predictors()


def test_entry_points_load_when_the_switch_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    plugins = Plugins.load()

    assert {"tiny", "noop"} <= set(plugins.predictors())
    assert "multiprocessing" in plugins.executors()


def test_explicit_autoload_false_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    assert Plugins.load(autoload=False).predictors() == {}


# ---- resolving predictors -------------------------------------------------------------------


def test_resolve_predictor_by_registered_name() -> None:
    predictor = Plugins.load([fakes], autoload=False).resolve_predictor("echo")

    assert type(predictor) is EchoPredictor


def test_resolve_predictor_by_module_and_class() -> None:
    predictor = Plugins.load(autoload=False).resolve_predictor(ECHO)

    assert type(predictor) is EchoPredictor


def test_resolve_predictor_returns_a_fresh_instance_each_time() -> None:
    plugins = Plugins.load(autoload=False)

    assert plugins.resolve_predictor(ECHO) is not plugins.resolve_predictor(ECHO)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("nope", "unknown model 'nope' (installed predictors: echo, legacy)", id="unknown name"),
        pytest.param(
            "no_such_module_4242:Thing", "cannot import predictor module 'no_such_module_4242'", id="bad module"
        ),
        pytest.param(
            f"{fakes.__name__}:Missing", f"module '{fakes.__name__}' has no attribute 'Missing'", id="no attr"
        ),
        pytest.param(
            f"{fakes.__name__}:NotAPredictor", "is not a predictor: it needs setup() and predict()", id="no setup"
        ),
    ],
)
def test_resolve_predictor_errors_say_what_is_wrong(spec: str, message: str) -> None:
    plugins = Plugins.load([fakes], autoload=False)

    with pytest.raises(ConfigurationError) as info:
        plugins.resolve_predictor(spec)

    assert message in str(info.value)


def test_unknown_model_without_any_predictor_says_none_installed() -> None:
    with pytest.raises(ConfigurationError, match=r"none installed"):
        Plugins.load(autoload=False).resolve_predictor("tiny")


def test_unknown_executor_lists_the_installed_ones() -> None:
    plugins = Plugins.load([ExecutorPlugin()], autoload=False)

    with pytest.raises(ConfigurationError, match=r"unknown executor 'torchrun' \(installed: dummy\)"):
        plugins.executor("torchrun")


# ---- describe -------------------------------------------------------------------------------


def test_describe_lists_each_plugin_with_its_hooks_and_registrations() -> None:
    rows = {row["name"]: row for row in Plugins.load([fakes], autoload=False).describe()}

    assert set(rows) == {"para_attn_server.plugin.builtins", fakes.__name__}
    assert rows["para_attn_server.plugin.builtins"] == {
        "name": "para_attn_server.plugin.builtins",
        "module": "para_attn_server.plugin.builtins",
        "distribution": "para-attn-server",
        "version": version(),
        "hooks": ["batch_key", "predict", "predict_batch", "register_request_fields", "setup", "validate"],
        "predictors": [],
        "executors": [],
    }
    assert rows[fakes.__name__] == {
        "name": fakes.__name__,
        "module": fakes.__name__,
        "distribution": None,
        "version": None,
        "hooks": ["register_predictors"],
        "predictors": ["echo", "legacy"],
        "executors": [],
    }


# ---- hooks ----------------------------------------------------------------------------------


def test_every_validate_implementation_runs() -> None:
    first, second = RecordingValidator(), RecordingValidator()
    plugins = Plugins.load([first, second], autoload=False)

    plugins.validate(EchoPredictor(), {"prompt": "a"})

    assert first.seen == [{"prompt": "a"}]
    assert second.seen == [{"prompt": "a"}]


def test_predictor_validate_runs_beside_plugin_validators() -> None:
    recorder = RecordingValidator()
    plugins = Plugins.load([recorder], autoload=False)

    with pytest.raises(InputError, match="not allowed"):
        plugins.validate(EchoPredictor(), {"prompt": "forbidden"})


def test_input_error_from_a_plugin_validator_propagates_with_its_field() -> None:
    plugins = Plugins.load([RecordingValidator(), RejectingValidator()], autoload=False)

    with pytest.raises(InputError) as info:
        plugins.validate(EchoPredictor(), {"prompt": "nsfw"})

    assert info.value.field == "prompt"
    assert str(info.value) == "prompt: refused by the safety filter"


def test_predict_wrapper_sees_and_replaces_the_result() -> None:
    seen: list[tuple[str, Output]] = []

    class Shout:
        @hookimpl(wrapper=True)
        def predict(self, predictor: Any, job: JobContext) -> Generator[None, Output, Output]:
            result = yield
            seen.append((job.job_id, result))
            return Output(result.data.upper(), result.file_type)

    plugins = Plugins.load([Shout()], autoload=False)

    output = plugins.predict(EchoPredictor(), job({"prompt": "ab", "repeat": 2}))

    assert seen == [("job-1", Output(b"abab", "txt"))]
    assert output == Output(b"ABAB", "txt")


def test_job_state_changed_reaches_every_observer() -> None:
    seen: list[Any] = []

    class Observer:
        @hookimpl
        def job_state_changed(self, job: Any) -> None:
            seen.append(job)

    marker = object()
    Plugins.load([Observer(), Observer()], autoload=False).job_state_changed(marker)  # type: ignore[arg-type]

    assert seen == [marker, marker]


class FieldsPlugin:
    """Adds a request field; remembers the settings it was given."""

    def __init__(self, name: str = "tag") -> None:
        self.name = name
        self.settings: Any = None

    @hookimpl
    def register_request_fields(self, register: Callable[..., None], settings: Any) -> None:
        self.settings = settings
        register(self.name, str, "none")


def test_request_fields_know_their_plugin_and_get_the_settings() -> None:
    plugin = FieldsPlugin()
    plugins = Plugins.load([plugin], autoload=False)
    settings = Settings()

    builtin, field = plugins.request_fields(settings)[:2], plugins.request_fields(settings)[-1]
    assert [found.name for found in builtin] == ["priority", "max_queue_seconds"]  # every request's

    assert (field.name, field.annotation, field.default, field.check) == ("tag", str, "none", None)
    assert field.plugin == plugins.pm.get_name(plugin)
    assert plugin.settings is settings


def test_a_request_field_registered_by_two_plugins_is_an_error_naming_both() -> None:
    first, second = FieldsPlugin(), FieldsPlugin()
    plugins = Plugins.load([first, second], autoload=False)

    with pytest.raises(ConfigurationError, match="request field 'tag' is registered by plugins") as info:
        plugins.request_fields(Settings())

    assert str(plugins.pm.get_name(first)) in str(info.value)
    assert str(plugins.pm.get_name(second)) in str(info.value)
