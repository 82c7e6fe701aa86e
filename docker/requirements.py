"""Print the requirements of this project's core and chosen extras, one per line.

    python requirements.py pyproject.toml serve        # core + serve
    python requirements.py pyproject.toml train test   # core + train + test

The image build installs these before it copies any code, so the dependency layers are cached
until pyproject.toml changes. Self-references such as ``vae-lab[train,serve]`` are expanded.
"""

import re
import sys
import tomllib


def requirements(project: dict, extras: list[str]) -> list[str]:
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    seen: set[str] = set()
    out = list(project.get("dependencies", []))

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml defines {sorted(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", requirement.replace(" ", ""))
            if self_ref:
                for inner in self_ref.group(1).split(","):
                    add(inner)
            else:
                out.append(requirement)

    for extra in extras:
        add(extra)
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        project = tomllib.load(f)["project"]
    print("\n".join(requirements(project, argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
