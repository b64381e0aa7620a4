"""Every command's --help says what it does, names its positionals and shows an example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli.test_main import run_cli
from tests.spec_example import write_spec_example

COMMANDS = [
    ["quickstart"],
    ["serve"],
    ["check"],
    ["certs"],
    ["certs", "init"],
    ["keys"],
    ["keys", "generate"],
    ["clients"],
    ["clients", "list"],
    ["clients", "show"],
    ["clients", "add"],
    ["clients", "remove"],
    ["clients", "import"],
    ["clients", "export"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_a_description_and_an_example(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    _usage, _, rest = text.partition("\n\n")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("positional arguments:", "options:")), text
    examples = text.partition("\nexamples:\n")[2].splitlines()
    assert examples and all(
        line.startswith("  ") and "mtls-gateway " + " ".join(command) in line
        for line in examples
        if line.startswith("  mtls-gateway")
    ), text
    # Every positional argument has its own help text.
    positional = text.partition("positional arguments:\n")[2].split("\n\n")[0]
    for line in positional.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name, _, described = line.strip().partition(" ")
            assert described.strip() or name.startswith("{"), f"{command}: {name} has no help"


def test_clients_list_says_so_when_the_registry_is_empty(tmp_path: Path) -> None:
    config = write_spec_example(tmp_path / "conf")
    (config.parent / "clients.yaml").write_text(yaml.safe_dump({"clients": []}))
    result = run_cli("clients", "list", "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"no clients in yaml:{config.parent}/clients.yaml")
