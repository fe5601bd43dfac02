"""cluster.yaml: a valid `ray up` file whose commands work on a node that has only what its
own setup commands install."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
VENV = "~/agentledger-venv/bin/"


def _config() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(CLUSTER_YAML.read_text())
    return loaded


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)
    validate_config(prepare_config(_config()))  # what `ray up` checks before it connects


def test_ray_runs_from_the_venv_the_setup_commands_make() -> None:
    # Ray is installed only in the venv: a bare `ray stop` fails with "command not found",
    # and `ray up` stops at the first command that fails.
    config = _config()
    commands = [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]  # type: ignore[misc]
    for command in commands:
        program = shlex.split(command)[0]
        assert program.startswith(VENV), command


def test_the_nodes_install_agentledger_from_a_file_mount_not_a_package_index() -> None:
    # agentledger is not on PyPI (and other projects' names start with it there): the nodes
    # install the wheel that cluster.yaml's header builds, which a file mount carries.
    config = _config()
    mounts = list(config["file_mounts"])  # type: ignore[call-overload]
    installs = [c for c in config["setup_commands"] if " install " in c]  # type: ignore[attr-defined]
    assert installs
    for command in installs:
        words = shlex.split(command)
        assert words[0] == VENV + "pip"
        args = words[words.index("install") + 1 :]
        targets = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-c"]
        assert targets, command
        for target in targets:
            assert any(target.startswith(mount + "/") for mount in mounts), target
    header = CLUSTER_YAML.read_text().split("cluster_name:")[0]
    assert "pip wheel" in header and "-w dist" in header
    assert config["file_mounts"] == {"~/agentledger-dist": "./dist"}
