"""`Profile`: a backend's two jobs, kept apart in its options.

A backend that emulates a real toolkit serves two purposes that pull apart: predicting what the
toolkit will give (`profile="toolkit"`: its algorithms and defaults, nothing added) and giving
the best accuracy its scheme allows (`profile="best"`, the default). The toolkit's own option names
keep the toolkit's meaning under both profiles; unified's additions (bias correction, adaptive
rounding, ...) are options of their own whose default depends on the profile, and which the
toolkit profile refuses to switch on, so a "toolkit" build can never silently be something else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from unified.core.backend_spec import option_bool, option_choice
from unified.core.errors import BackendError

PROFILES = ("best", "toolkit")


@dataclass(frozen=True)
class Profile:
    """A backend's options read under its profile."""

    backend: str
    options: Mapping[str, Any]
    name: str

    @classmethod
    def read(cls, backend: str, options: Mapping[str, Any]) -> "Profile":
        return cls(backend, options, option_choice(backend, options, "profile", PROFILES, "best"))

    @property
    def toolkit(self) -> bool:
        return self.name == "toolkit"

    def _refuse(self, key: str, value: Any, toolkit_value: Any) -> None:
        raise BackendError(f"{self.backend}: {key}={value!r} is unified's own addition; profile='toolkit' "
                           f"reproduces the toolkit ({key}={toolkit_value!r}); use profile='best' to add it")

    def addition(self, key: str, best: bool, toolkit: bool) -> bool:
        """A boolean that is unified's addition: `best`/`toolkit` are its defaults per profile."""
        value = option_bool(self.backend, self.options, key, toolkit if self.toolkit else best)
        if self.toolkit and value != toolkit:
            self._refuse(key, value, toolkit)
        return value

    def addition_choice(self, key: str, allowed: Iterable[str], best: str, toolkit: str) -> str:
        """A choice whose non-toolkit values are unified's additions."""
        value = option_choice(self.backend, self.options, key, allowed, toolkit if self.toolkit else best)
        if self.toolkit and value != toolkit:
            self._refuse(key, value, toolkit)
        return value

    def rounding(self) -> str:
        """Weight rounding: "adaptive" (unified's, best) or "nearest" (every toolkit's own)."""
        return self.addition_choice("rounding", ("adaptive", "nearest"), best="adaptive", toolkit="nearest")

    def activation_ranges(self, toolkit_option: str) -> str:
        """"mse" (best) or "calibrated"; naming the toolkit's own range option (`toolkit_option`,
        e.g. ORT's calibrate_method) keeps the toolkit's ranges, so that option keeps its meaning."""
        best = "calibrated" if toolkit_option in self.options else "mse"
        return self.addition_choice("activation_ranges", ("calibrated", "mse"), best=best, toolkit="calibrated")

    def toolkit_choice(self, key: str, allowed: Iterable[str], best: str, toolkit: str,
                       reproduced: Iterable[str]) -> str:
        """One of the toolkit's own options: the same names under both profiles; under "toolkit"
        only the values unified reproduces exactly (`reproduced`) are accepted."""
        value = option_choice(self.backend, self.options, key, allowed, toolkit if self.toolkit else best)
        reproduced = tuple(reproduced)
        if self.toolkit and value not in reproduced:
            raise BackendError(f"{self.backend}: {key}={value!r} under profile='toolkit': unified reproduces the "
                               f"toolkit's {', '.join(reproduced)} only; use profile='best' for {value!r}")
        return value
