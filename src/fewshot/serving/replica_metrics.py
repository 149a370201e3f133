"""/metrics of a replicated service: every replica's Prometheus exposition in one, each sample
labelled `replica="<id>"` (so a dashboard sums or splits them, as for any set of targets).

Works on the text format line by line, so each family keeps exactly the HELP/TYPE lines the
replicas wrote (once) with all replicas' samples under them, contiguous as the format requires.
"""

from __future__ import annotations


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _with_label(sample: str, label: str) -> str:
    """`name{a="b"} 1` -> `name{label,a="b"} 1`; `name 1` -> `name{label} 1`."""
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner = sample[brace + 1 :]
        sep = "" if inner.startswith("}") else ","
        return f"{sample[: brace + 1]}{label}{sep}{inner}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge_expositions(by_replica: dict[str, str]) -> str:
    """One exposition from {replica id: its exposition text}."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for replica, text in by_replica.items():
        label = f'replica="{_escape(replica)}"'
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    lines = headers.setdefault(family, [])
                    if line not in lines:
                        lines.append(line)
                continue
            samples.setdefault(family, []).append(_with_label(line, label))
    out: list[str] = []
    for family in dict.fromkeys([*headers, *samples]):
        out += headers.get(family, []) + samples.get(family, [])
    return "\n".join(out) + "\n"
