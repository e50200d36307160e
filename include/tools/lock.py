"""Lock files from the installed environment, and what an image still lacks of one.

    python -m include.tools.lock requirements.txt        # print the lock: every package the file needs, pinned

`make lock` writes requirements.lock (runtime) and requirements-dev.lock (runtime + tests and lint): the
lock of a requirements file is the closure of its requirements (extras and markers included) over the
packages installed here, so a lock holds nothing its requirements file does not pull in.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import Distribution, distributions
from pathlib import Path


def canonical(name: str) -> str:
    """The PEP 503 normalised form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> Iterator[str]:
    """The requirement lines of a requirements file, following `-r other.txt` includes."""
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            yield from requirement_lines(path.parent / line.split(maxsplit=1)[1])
        elif line and not line.startswith("-"):
            yield line


def installed(dists: Iterable[Distribution] | None = None) -> dict[str, Distribution]:
    return {canonical(d.metadata["Name"]): d for d in (distributions() if dists is None else dists)}


def closure(requirements: Iterable[str], packages: dict[str, Distribution]) -> set[str]:
    """Canonical names of the installed packages the requirements need, transitively, extras included."""
    from packaging.requirements import Requirement

    needed: set[str] = set()
    done: set[tuple[str, str]] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name not in packages:
            raise LookupError(f"{requirement} is not installed: install it before locking")
        needed.add(name)
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for line in packages[name].requires or []:
                dependency = Requirement(line)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    todo.append(dependency)
    return needed


def lock(requirements_file: Path, packages: dict[str, Distribution] | None = None) -> list[str]:
    """`name==version` for every package the file needs, in pip freeze's order."""
    packages = installed() if packages is None else packages
    names = closure(requirement_lines(requirements_file), packages)
    pins = [f"{packages[n].metadata['Name']}=={packages[n].version}" for n in names]
    return sorted(pins, key=lambda pin: pin.split("==")[0].lower())


def main(argv: list[str]) -> int:
    if len(argv) == 1:
        print("\n".join(lock(Path(argv[0]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
