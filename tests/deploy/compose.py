"""docker-compose.yaml as `docker compose config` sees it, without a Docker engine.

Compose parses the YAML (anchors, merge keys), then interpolates every string value from the environment
and .env: ``$$`` is a literal ``$``; ``${VAR:-default}`` / ``${VAR-default}`` fall back when VAR is unset or
empty / unset; ``${VAR:?message}`` / ``${VAR?message}`` refuse to go on without it; a lone ``$`` is an error.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
DOCKER_ENV_SCRIPT = PROJECT_ROOT / "include" / "local" / "stack" / "docker-env.sh"
_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+)|)")


class MissingVariable(ValueError):
    """Compose stops: a ``${VAR:?message}`` variable has no value."""


def interpolate(value: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        if not (name or bare):
            raise ValueError(f"invalid interpolation (a lone $; write $$): {value!r}")
        found = env.get(name or bare)
        if operator is None:
            return found or ""
        missing = found is None or (operator.startswith(":") and found == "")
        if operator.endswith("-"):
            return argument if missing else found
        if missing:
            raise MissingVariable(f"required variable {name} is missing a value: {argument}")
        return found

    return _VARIABLE.sub(substitute, value)


def _interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def load(text: str, env: dict[str, str]) -> dict:
    """The file as compose resolves it with `env` as the environment (.env)."""
    return _interpolate_tree(yaml.safe_load(text), env)


def read_env_file(path: Path) -> dict[str, str]:
    """A .env file as compose reads it (KEY=value lines; # comments; quotes around a value dropped)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key.strip()] = value
    return env


def docker_env(path: Path) -> dict[str, str]:
    """Run `make docker-env`'s script on `path` and return the .env it leaves."""
    subprocess.run(["bash", str(DOCKER_ENV_SCRIPT), str(path)], check=True, capture_output=True, timeout=30)
    return read_env_file(path)
