"""/metrics of a replicated service: every replica's Prometheus exposition in one, each sample
labelled `replica="<id>"` (so a dashboard sums or splits them, as for any Prometheus target
set). Families keep their HELP/TYPE once, in first-seen order."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def merge_expositions(by_replica: dict[str, str]) -> str:
    """One exposition from {replica id: its exposition text}."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for replica, text in by_replica.items():
        for family in text_string_to_metric_families(text):
            _, _, lines = families.setdefault(family.name, (family.documentation, family.type, []))
            for sample in family.samples:
                labels = {"replica": replica, **sample.labels}
                body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{body}}} {floatToGoString(sample.value)}")
    out: list[str] = []
    for name, (doc, kind, lines) in families.items():
        out.append(f"# HELP {name} {_help(doc)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n"
