"""The clinic's config file, and session presets.

Paths are in ``estim.paths``.

The config file can only *narrow* limits: a value wider than SAFETY.md's or the
unit's own is refused, never silently clipped. It can also define presets::

    [limits]
    amplitude_max_ma = 30
    dwell_max = "8m"

    [presets.knee-low]
    frequency_hz = 4
    pulse_width_us = 200

    [fhir]                       # where finished sessions are delivered (estim push)
    base_url = "https://fhir.clinic.example/R4"
    token_env = "CLINIC_FHIR_TOKEN"   # or token = "..." (then keep this file 0600)
    patient_system = "https://clinic.example/fhir/sid/mrn"

Every error names the file, the line and the key.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from estim.durations import parse_duration
from estim.errors import EstimError
from estim.limits import ClinicLimits
from estim.paths import config_path
from estim.safety import DWELL_MAX_S, DWELL_MIN_S, RMS_MAX_MA, finite, given

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


class ConfigError(EstimError, ValueError):
    """The clinic config file is wrong (file, line and key are in the message)."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    frequency_hz: float
    pulse_width_us: int
    waveform: str = "biphasic_symmetric"
    mode: str = "continuous"
    alt_frequency_hz: float | None = None
    switch_s: float | None = None
    amplitude_ma: float | None = None

    def channel_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "frequency_hz": self.frequency_hz,
            "pulse_width_us": self.pulse_width_us,
            "waveform": self.waveform,
            "mode": self.mode,
        }
        if self.mode != "continuous":
            out["alt_frequency_hz"] = self.alt_frequency_hz
            out["switch_s"] = self.switch_s
        return out


BUILTIN_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("edn-low", "electrical dry needling, low rate: 2 Hz, 250 us", 2.0, 250),
        Preset("edn-high", "electrical dry needling, high rate: 100 Hz, 150 us", 100.0, 150),
        Preset(
            "dense-disperse",
            "alternating 2 Hz and 100 Hz every 3 s, 200 us",
            2.0,
            200,
            mode="dense_disperse",
            alt_frequency_hz=100.0,
            switch_s=3.0,
        ),
    )
}


#: the environment variable a FHIR token is read from unless [fhir] token_env names another
FHIR_TOKEN_ENV = "ESTIM_FHIR_TOKEN"
#: seconds one request to the FHIR server may take, unless [fhir] timeout says otherwise
FHIR_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FhirSettings:
    """The clinic's FHIR server (``[fhir]``): where the outbox delivers finished
    sessions, with what token, and the clinic's own identifier systems (None: estim's,
    see ``estim.export.as_fhir.Systems``)."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    token_env: str = FHIR_TOKEN_ENV
    timeout_s: float = FHIR_TIMEOUT_S
    patient_system: str | None = None
    practitioner_system: str | None = None
    device_system: str | None = None

    def bearer(self) -> str | None:
        """The token: the config's own, else the environment variable's (read now, so a
        token rotated in the environment is used by the next request)."""
        return self.token or os.environ.get(self.token_env) or None

    def systems(self) -> Any:
        """``estim.export.as_fhir.Systems`` with the clinic's systems where it set them."""
        from estim.export.as_fhir import Systems

        defaults = Systems()
        return Systems(
            patient=self.patient_system or defaults.patient,
            practitioner=self.practitioner_system,
            device=self.device_system or defaults.device,
        )


@dataclass(frozen=True)
class ClinicConfig:
    path: Path | None = None
    limits: ClinicLimits = field(default_factory=ClinicLimits)
    presets: dict[str, Preset] = field(default_factory=lambda: dict(BUILTIN_PRESETS))
    fhir: FhirSettings | None = None


def _line_of(text: str, section: str | None, key: str) -> int:
    """The line of ``key`` (inside ``[section]`` if given), for error messages."""
    lines = text.splitlines()
    in_section = section is None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.strip("[]").strip().strip('"')
            if section is None and (header == key or header.startswith(f"{key}.")):
                return number  # a top-level table
            in_section = section is not None and header == section
            if in_section and key == "":
                return number
            continue
        if in_section and re.match(rf"""^["']?{re.escape(key)}["']?\s*=""", stripped):
            return number
    return 0


_LIMIT_KEYS: dict[str, tuple[str, float, float]] = {
    # key: (kind, lowest allowed, highest allowed) -- the widest SAFETY.md allows
    "amplitude_max_ma": ("number", 0.001, 1000.0),
    "frequency_min_hz": ("number", 0.1, 10_000.0),
    "frequency_max_hz": ("number", 0.1, 10_000.0),
    "pulse_width_max_us": ("integer", 1, 65535),
    "dwell_min": ("duration", DWELL_MIN_S, DWELL_MAX_S),
    "dwell_max": ("duration", DWELL_MIN_S, DWELL_MAX_S),
    "ramp_min": ("duration", 0.0, DWELL_MAX_S / 2),
}
_PRESET_KEYS = {
    "description",
    "frequency_hz",
    "pulse_width_us",
    "waveform",
    "mode",
    "alt_frequency_hz",
    "switch_s",
    "amplitude_ma",
}


def load_config(path: Path | None = None) -> ClinicConfig:
    """The clinic config: built-in presets and no narrowing when there is no file at
    the default place. A file named on purpose (``path``, ``$ESTIM_CONFIG``) that
    does not exist is an error: a typo must not silently drop the clinic's limits."""
    named = path is not None or bool(os.environ.get("ESTIM_CONFIG"))
    path = path or config_path()
    if not path.exists():
        if named:
            source = "the clinic config" if "ESTIM_CONFIG" not in os.environ else "ESTIM_CONFIG"
            raise ConfigError(
                f"{source} names {path}, which does not exist; fix the path, or unset "
                "ESTIM_CONFIG to use the default place"
            )
        return ClinicConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config file: {err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None

    def fail(section: str | None, key: str, message: str) -> ConfigError:
        line = _line_of(text, section, key)
        where = f"{path}:{line}" if line else str(path)
        full = ".".join(part for part in (section, key) if part)
        return ConfigError(f"{where}: {full}: {message}")

    # [serve] and [rooms.ID] are the clinic service's, read by estim.serve.settings
    unknown = set(data) - {"limits", "presets", "fhir", "serve", "rooms"}
    if unknown:
        key = sorted(unknown)[0]
        raise fail(
            None,
            key,
            "unknown section or key; expected [limits], [presets.NAME], [fhir], [serve] "
            "and [rooms.ID]",
        )
    limits = _read_limits(data.get("limits", {}), fail)
    presets = dict(BUILTIN_PRESETS)
    raw_presets = data.get("presets", {})
    if not isinstance(raw_presets, dict):
        raise fail(None, "presets", "must be a table of [presets.NAME] sections")
    for name, body in raw_presets.items():
        presets[name] = _read_preset(name, body, fail)
    fhir = _read_fhir(data["fhir"], fail) if "fhir" in data else None
    return ClinicConfig(path=path, limits=limits, presets=presets, fhir=fhir)


_FHIR_KEYS = {
    "base_url",
    "token",
    "token_env",
    "timeout",
    "patient_system",
    "practitioner_system",
    "device_system",
}
#: an identifier system goes into a search (``identifier=SYSTEM|VALUE``) as it is
_SYSTEM = re.compile(r"(https?://[^\s|,$\\?#&]+|urn:[a-z0-9][a-z0-9-]*:[^\s|,$\\?#&]+)")


def _read_fhir(raw: Any, fail: Any) -> FhirSettings:
    if not isinstance(raw, dict):
        raise fail(None, "fhir", "must be a table")
    for key in raw:
        if key not in _FHIR_KEYS:
            raise fail("fhir", key, f"unknown key; known: {', '.join(sorted(_FHIR_KEYS))}")
    for key, value in raw.items():
        if key != "timeout" and not isinstance(value, str):
            raise fail("fhir", key, f"{value!r} must be text in quotes")
    base_url = raw.get("base_url")
    if base_url is None:
        raise fail("fhir", "", "base_url is missing: the clinic's FHIR server, https://...")
    if not re.fullmatch(r"https?://[^\s?#]+", base_url):
        raise fail(
            "fhir", "base_url", f"{base_url!r} is not an http(s) URL without a query or fragment"
        )
    if base_url.startswith("http://") and not _loopback(base_url):
        raise fail(
            "fhir",
            "base_url",
            f"{base_url!r} would send patient records unencrypted; use https:// "
            "(http:// is only for a server on this machine)",
        )
    timeout = raw.get("timeout", FHIR_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 600:
        raise fail("fhir", "timeout", f"{timeout!r} must be seconds from 1 to 600")
    for key in ("patient_system", "practitioner_system", "device_system"):
        if key in raw and not _SYSTEM.fullmatch(raw[key]):
            raise fail(
                "fhir",
                key,
                f"{raw[key]!r} is not an identifier system (an https:// URL or a urn:, without "
                "spaces, | , $ \\ ? # or &)",
            )
    token_env = raw.get("token_env", FHIR_TOKEN_ENV)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token_env):
        raise fail("fhir", "token_env", f"{token_env!r} is not an environment variable name")
    return FhirSettings(
        base_url=base_url.rstrip("/"),
        token=raw.get("token") or None,
        token_env=token_env,
        timeout_s=float(timeout),
        patient_system=raw.get("patient_system"),
        practitioner_system=raw.get("practitioner_system"),
        device_system=raw.get("device_system"),
    )


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _read_limits(raw: Any, fail: Any) -> ClinicLimits:
    if not isinstance(raw, dict):
        raise fail(None, "limits", "must be a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _LIMIT_KEYS:
            raise fail("limits", key, f"unknown limit; known: {', '.join(sorted(_LIMIT_KEYS))}")
        kind, low, high = _LIMIT_KEYS[key]
        try:
            number = parse_duration(value, key) if kind == "duration" else value
        except ValueError as err:
            raise fail("limits", key, str(err)) from None
        if isinstance(number, bool) or not isinstance(number, int | float) or not finite(number):
            raise fail("limits", key, f"{given(value)} is not a number")
        if kind == "integer" and number != int(number):
            raise fail("limits", key, f"{given(value)} must be a whole number")
        if not low <= number <= high:
            raise fail(
                "limits",
                key,
                f"{given(value)} is outside {low:g}..{high:g}; a clinic can only narrow the limits",
            )
        values[key] = int(number) if kind == "integer" else float(number)
    if (
        "dwell_min" in values
        and "dwell_max" in values
        and values["dwell_min"] > values["dwell_max"]
    ):
        raise fail("limits", "dwell_min", "is above dwell_max")
    if values.get("amplitude_max_ma", 0) > RMS_MAX_MA * 20:
        raise fail("limits", "amplitude_max_ma", "is implausibly high")
    return ClinicLimits(**values)


def _read_preset(name: str, body: Any, fail: Any) -> Preset:
    section = f"presets.{name}"
    if not isinstance(body, dict):
        raise fail("presets", name, "must be a table")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
        raise fail(section, "", "a preset name is lowercase letters, digits and dashes")
    for key in body:
        if key not in _PRESET_KEYS:
            raise fail(
                section, key, f"unknown preset key; known: {', '.join(sorted(_PRESET_KEYS))}"
            )
    for key in ("frequency_hz", "pulse_width_us"):
        if key not in body:
            raise fail(section, "", f"missing {key}")
    try:
        preset = Preset(
            name=name,
            description=str(body.get("description", f"clinic preset {name}")),
            **{k: body[k] for k in _PRESET_KEYS - {"description"} if k in body},
        )
        from estim.plan import ChannelPlan

        judged = ChannelPlan(
            channel=1, amplitude_ma=preset.amplitude_ma or 1.0, **preset.channel_fields()
        )
    except (TypeError, ValueError) as err:
        first = str(err).splitlines()
        message = first[-2].strip() if len(first) > 2 else str(err)
        raise fail(section, "", message) from None
    # the numbers as judged (2.1 for 2.0999999999999996): what a plan from it sends
    return replace(
        preset,
        frequency_hz=judged.frequency_hz,
        alt_frequency_hz=(
            judged.alt_frequency_hz if preset.mode != "continuous" else preset.alt_frequency_hz
        ),
        switch_s=judged.switch_s if preset.mode != "continuous" else preset.switch_s,
        amplitude_ma=None if preset.amplitude_ma is None else judged.amplitude_ma,
    )
