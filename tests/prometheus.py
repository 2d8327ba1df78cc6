"""Reading ``/metrics`` as Prometheus does: with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """One ``/metrics`` answer, parsed: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` whose labels include ``labels``; fails unless exactly one does."""
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) == 1, f"{len(found)} samples {name}{labels} in /metrics:\n{self.text}"
        return float(found[0])

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        """Like ``value``, with ``default`` when no sample matches (a series not seen yet)."""
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) <= 1, f"{len(found)} samples {name}{labels} in /metrics:\n{self.text}"
        return float(found[0]) if found else default

    def kind(self, family: str) -> str:
        return str(self.families[family].type)
