"""Extensions: tools, providers and agent classes named module:object, and their refusals."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentledger.actors import Execution, RuntimeConfig
from agentledger.actors.extensions import load_extensions, provider_names, role_class
from agentledger.actors.models import parse_model_spec
from agentledger.actors.runtime import agent_for
from agentledger.config import extensions_of, load_settings, runtime_config
from agentledger.events import ConfigurationError, Role

PLUGIN = """
from agentledger.actors import Execution, Extension, ModelReply, Tool, ToolArguments
from agentledger.events import RiskLevel, Role

class PingArgs(ToolArguments):
    host: str

class Ping(Tool[PingArgs]):
    name = "ping"
    description = "Ping a host."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = PingArgs
    def run(self, args, ctx):
        return {"pong": args.host}

class Local:
    name = "local"
    def complete(self, request):
        return ModelReply(model=request.model, content="{}")

class MyExecution(Execution):
    pass

extension = Extension(
    tools=[Ping()], providers={"local": Local}, agents={Role.EXECUTION: MyExecution}
)
not_one = 42
builtin = Extension(providers={"openai": Local})
a_class = Extension(tools=[Ping])
twice = Extension(tools=[Ping(), Ping()])
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_an_extension_adds_its_tool_provider_and_agent_class(plugin: str, tmp_path: Path) -> None:
    config = RuntimeConfig(
        store_url="memory://",
        workspace_root=str(tmp_path),
        extensions=(f"{plugin}:extension",),
    )
    agent = agent_for(Role.EXECUTION, "1", config)
    assert type(agent).__name__ == "MyExecution" and isinstance(agent, Execution)
    assert "ping" in agent.settings.tools and "write_file" in agent.settings.tools
    assert "local" in provider_names(load_extensions([f"{plugin}:extension"]))
    assert role_class(Role.REVIEW, load_extensions([f"{plugin}:extension"])).__name__ == "Review"
    spec = parse_model_spec("execution=local:m", providers=("offline", "openai", "local"))
    assert spec.provider == "local"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nodots", "is not module:object"),
        ("no_such_module_here:extension", "cannot import 'no_such_module_here'"),
        ("{plugin}:missing", "has no 'missing'"),
        ("{plugin}:not_one", "is a int, not an agentledger.actors.Extension"),
        ("{plugin}:builtin", "adds a provider 'openai', which is built in"),
    ],
)
def test_mistakes_in_an_extension_name_what_to_fix(plugin: str, entry: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_extensions([entry.format(plugin=plugin)], source="agentledger.toml extensions")


@pytest.mark.parametrize(
    ("entry", "message"), [("a_class", r"give an instance \(Ping\(\)\)"), ("twice", "already")]
)
def test_bad_extension_tools_are_refused_when_the_agent_is_built(
    plugin: str, tmp_path: Path, entry: str, message: str
) -> None:
    config = RuntimeConfig(
        store_url="memory://", workspace_root=str(tmp_path), extensions=(f"{plugin}:{entry}",)
    )
    with pytest.raises(ConfigurationError, match=message):
        agent_for(Role.EXECUTION, "1", config)


def test_the_settings_file_names_extensions_and_their_providers(
    plugin: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[tools]\nping = "high"\n')
    config = tmp_path / "agentledger.toml"
    config.write_text(
        textwrap.dedent(f"""
        extensions = ["{plugin}:extension"]
        [models]
        execution = "local:m"
        [runtime]
        policy = "policy.toml"
        """)
    )
    settings = load_settings(config)
    assert runtime_config(settings, "memory://", {}).extensions == (f"{plugin}:extension",)
    assert len(extensions_of(settings)) == 1  # the provider and the policy's tool exist

    # Without the extension, the same choices are refused, saying how to add a provider.
    config.write_text('[models]\nexecution = "local:m"\n')
    with pytest.raises(ConfigurationError, match=r"unknown provider 'local'.*docs/extending\.md"):
        load_settings(config)
    config.write_text(f'extensions = ["{plugin}:extension"]\n[models]\nexecution = "lokal:m"\n')
    settings = load_settings(config)  # reading the log needs no import of the extension
    with pytest.raises(ConfigurationError, match=r"unknown provider 'lokal'.*local"):
        extensions_of(settings)


def test_reading_settings_does_not_import_the_extension(tmp_path: Path) -> None:
    config = tmp_path / "agentledger.toml"
    config.write_text('extensions = ["not_installed_here:extension"]\n')
    settings = load_settings(config)  # `runs`, `log`, `approve` work without the package
    with pytest.raises(ConfigurationError, match="cannot import 'not_installed_here'"):
        extensions_of(settings)
    config.write_text('extensions = ["not module"]\n')
    with pytest.raises(ConfigurationError, match="is not module:object"):
        load_settings(config)
