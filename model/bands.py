"""Physiological heart-rate search bands; neonates and adults need different ones."""

from __future__ import annotations

from dataclasses import dataclass

# Upper bound on any plausible heart rate; a band above it is a typo, not a population.
MAX_PLAUSIBLE_BPM = 300.0


@dataclass(frozen=True)
class Band:
    """A heart-rate search band [lo_bpm, hi_bpm] in beats per minute."""

    lo_bpm: float
    hi_bpm: float

    def __post_init__(self) -> None:
        if not 0 < self.lo_bpm < self.hi_bpm <= MAX_PLAUSIBLE_BPM:
            raise ValueError(
                f"invalid heart-rate band {self.lo_bpm:g}-{self.hi_bpm:g} bpm: need "
                f"0 < lo < hi <= {MAX_PLAUSIBLE_BPM:g}"
            )

    @classmethod
    def for_population(cls, name: str = "neonate") -> Band:
        """The default band for a population: "neonate" (80-240 bpm) or "adult" (40-180 bpm)."""
        try:
            lo, hi = _POPULATIONS[name.strip().lower()]
        except KeyError:
            valid = ", ".join(sorted(_POPULATIONS))
            raise ValueError(f"unknown population {name!r}; valid: {valid}") from None
        return cls(lo, hi)

    @classmethod
    def parse(cls, text: str) -> Band:
        """Parse a "LO-HI" string in bpm, e.g. "90-200"."""
        parts = text.strip().split("-")
        if len(parts) != 2:
            raise ValueError(f"heart-rate band must look like LO-HI (e.g. 90-200), got {text!r}")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"heart-rate band must be two numbers LO-HI in bpm (e.g. 90-200), got {text!r}"
            ) from None
        return cls(lo, hi)

    @property
    def lo_hz(self) -> float:
        """Lower edge in Hz."""
        return self.lo_bpm / 60.0

    @property
    def hi_hz(self) -> float:
        """Upper edge in Hz."""
        return self.hi_bpm / 60.0

    def __str__(self) -> str:
        return f"{self.lo_bpm:g}-{self.hi_bpm:g}"


_POPULATIONS: dict[str, tuple[float, float]] = {
    "neonate": (80.0, 240.0),
    "adult": (40.0, 180.0),
}
