"""The simulated device's parameter set: one validated, documented, savable object.

Every number the physics uses lives here, grouped by effect. Conductances are given in
µS and times in seconds inside this file format (field names say so: `_us`, `_s`);
the model converts to siemens. Defaults are calibrated to PAPERS.md §C (per-pulse step
table of the Tsinghua 2–20 µS devices, XPEsim and Wan 2022 noise figures) and to the
Yao 2020 observations (32 levels by write-verify, little read disturb after 1e6 reads,
visible spreading over 30 days).

Presets (`DeviceParams.preset(name)`, `preset = "NAME"` in a parameter file or a station's
[sim] table): "yao2020" is the default above (gradual, state-dependent steps); "wang2019"
is the abrupt, compliance-limited SET of the Wang 2019 arrays (PAPERS.md §B), reached with
the same model through `set.snap`, `reset.snap`, `write_noise` and dead lines. `WANG2019`
names the source of every value it changes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from hil.errors import ConfigError
from hil.schema import ListOf, Number, Table, Text, load_json, load_toml, validate


def _f(default, lo=None, hi=None, doc=""):
    return field(default=default, metadata={"lo": lo, "hi": hi, "doc": doc})


# Per-pulse step table (PAPERS.md §C): bin centres of the 10 equal bins of 2-20 µS.
TABLE_G_US = (2.9, 4.7, 6.5, 8.3, 10.1, 11.9, 13.7, 15.5, 17.3, 19.1)


@dataclass
class SetParams:
    """SET: positive BL pulse; the gate voltage limits the current and so the final G."""

    table_g_us: tuple = _f(TABLE_G_US, doc="state bins of the step table, µS")
    mean_dg_us: tuple = _f((1.14, 0.87, 0.83, 0.75, 0.61, 0.52, 0.47, 0.38, 0.23, 0.27),
                           doc="mean ΔG per reference pulse per bin, µS")
    sigma_dg_us: tuple = _f(tuple(round(s / 6.0, 4) for s in (3.13, 3.20, 3.45, 3.57, 3.86, 3.80, 3.95, 3.77, 3.73, 2.62)),
                            doc="cycle-to-cycle σ of ΔG per bin (raw σ / 6, as the authors' simulator), µS")
    ceiling_us: float = _f(45.0, 20.0, 500.0, "state where SET steps vanish; steps taper linearly above the table")
    v_ref: float = _f(1.5, 0.1, 5.0, "BL amplitude of the reference pulse, V")
    v_slope: float = _f(0.15, 0.01, 2.0, "V per e-fold of step size")
    width_ref_s: float = _f(50e-9, 1e-10, 1e-2, "reference pulse width, s")
    width_exponent: float = _f(0.3, 0.0, 1.0, "step ∝ (width/width_ref)**exponent")
    max_drive: float = _f(20.0, 1.0, 1e3, "cap on the amplitude/width multiplier")
    clip_sigmas: float = _f(2.5, 0.5, 10.0, "noise draws clipped at ± this many σ")
    snap: float = _f(0.0, 0.0, 1.0, "fraction of the compliance headroom G_lim − G one pulse closes at "
                                    "reference drive (less below it): 0 gradual table steps only, 1 abrupt SET onto G_lim")


@dataclass
class ResetParams:
    """RESET: positive SL pulse (reverse polarity) with the gate fully on."""

    table_g_us: tuple = _f(TABLE_G_US, doc="state bins of the step table, µS")
    mean_dg_us: tuple = _f((-0.04, -0.94, -0.78, -0.96, -1.75, -1.80, -2.76, -3.31, -4.71, -6.26),
                           doc="mean ΔG per reference pulse per bin, µS")
    sigma_dg_us: tuple = _f(tuple(round(s / 9.0, 4) for s in (3.42, 4.66, 3.98, 4.49, 5.33, 5.06, 5.83, 6.13, 7.16, 8.15)),
                            doc="cycle-to-cycle σ of ΔG per bin (raw σ / 9, as the authors' simulator), µS")
    v_ref: float = _f(1.2, 0.1, 5.0, "SL amplitude of the reference pulse, V")
    v_slope: float = _f(0.15, 0.01, 2.0, "V per e-fold of step size")
    width_ref_s: float = _f(50e-9, 1e-10, 1e-2, "reference pulse width, s")
    width_exponent: float = _f(0.3, 0.0, 1.0, "step ∝ (width/width_ref)**exponent")
    max_drive: float = _f(20.0, 1.0, 1e3, "cap on the amplitude/width multiplier")
    gate_full_on_v: float = _f(2.0, 0.1, 10.0, "gate overdrive above threshold for full RESET current, V")
    clip_sigmas: float = _f(2.5, 0.5, 10.0, "noise draws clipped at ± this many σ")
    snap: float = _f(0.0, 0.0, 1.0, "fraction of G one pulse removes at reference drive and full gate "
                                    "(less below it): 0 gradual table steps only, 1 abrupt RESET to the floor")


@dataclass
class WriteNoiseParams:
    """Cycle-to-cycle noise of an abrupt switching event, added to every cell a pulse switches."""

    sigma_us: float = _f(0.0, 0.0, 100.0, "σ of the Gaussian added to G by each SET or RESET that acts, µS")


@dataclass
class ComplianceParams:
    """Gate-limited compliance: SET cannot take G beyond G_lim(Vg) = k·(Vg − Vth)."""

    vth_v: float = _f(0.7, 0.0, 3.0, "access transistor threshold voltage, V")
    vth_sigma_v: float = _f(0.02, 0.0, 0.5, "device-to-device σ of the threshold, V")
    g_per_v_us: float = _f(20.0, 0.1, 1000.0, "compliance-limited conductance per volt of gate overdrive, µS/V")
    soft_us: float = _f(2.0, 0.01, 50.0, "headroom G_lim − G over which SET steps grow from 0 to full, µS")
    landing_cv: float = _f(0.02, 0.0, 0.5, "relative spread of the compliance ceiling per pulse")


@dataclass
class FormParams:
    """Forming: one-time higher-voltage SET of a fresh cell."""

    v_form_mean: float = _f(3.0, 0.5, 10.0, "median forming voltage, V")
    v_form_sigma: float = _f(0.12, 0.0, 2.0, "device-to-device σ of the forming voltage, V")
    v_slope: float = _f(0.1, 0.01, 2.0, "V per e-fold of forming rate")
    tau_s: float = _f(50e-9, 1e-12, 1.0, "time constant of forming at V = v_form")
    unformed_g_us: float = _f(0.1, 0.001, 1.0, "conductance of an unformed cell, µS")
    formed_cv: float = _f(0.1, 0.0, 1.0, "relative spread of G right after forming")


@dataclass
class VariationParams:
    """Device-to-device variation of switching strength (lognormal multipliers)."""

    set_sigma_ln: float = _f(0.25, 0.0, 2.0, "σ of ln(SET step multiplier)")
    reset_sigma_ln: float = _f(0.25, 0.0, 2.0, "σ of ln(RESET step multiplier)")


@dataclass
class DefectParams:
    """Stuck and unformable cells."""

    stuck_off_rate: float = _f(2e-4, 0.0, 0.5, "fraction of cells that never form (stuck low)")
    stuck_on_rate: float = _f(1e-4, 0.0, 0.5, "fraction of cells shorted (stuck high)")
    stuck_on_g_us: tuple = _f((40.0, 60.0), doc="range of stuck-on conductance, µS")
    g_floor_us: float = _f(0.3, 0.0, 10.0, "lowest conductance a formed cell reaches, µS")
    g_max_us: float = _f(80.0, 10.0, 1000.0, "highest conductance of a working cell, µS")
    dead_row_rate: float = _f(0.0, 0.0, 0.5, "fraction of rows per PE that are open lines: their cells read "
                                             "as unformed and never switch")
    dead_col_rate: float = _f(0.0, 0.0, 0.5, "fraction of columns per PE that are open lines (as dead rows)")


@dataclass
class InitialParams:
    """State of the chip when the simulation starts."""

    state: str = _f("formed", doc="'formed' (as delivered after forming) or 'fresh' (every cell unformed)")
    g_low_us: float = _f(1.0, 0.0, 100.0, "formed chip: initial G uniform from this, µS")
    g_high_us: float = _f(30.0, 0.0, 100.0, "... to this, µS")


@dataclass
class ReadNoiseParams:
    """Read noise: σ = sqrt((rel·G)² + abs²), drawn per read."""

    rel: float = _f(0.004, 0.0, 0.5, "relative σ")
    abs_us: float = _f(0.03, 0.0, 10.0, "absolute σ floor, µS (1/f-like: a few % at low G)")


@dataclass
class RelaxationParams:
    """Relaxation right after programming: a per-event random shift growing in log time."""

    mean_rel: float = _f(-0.003, -0.5, 0.5, "mean shift at full relaxation, fraction of G")
    sigma_rel: float = _f(0.07, 0.0, 0.5, "σ at full relaxation, fraction of G (with sigma_abs_us: XPEsim σ_G after a day)")
    sigma_abs_us: float = _f(0.8, 0.0, 10.0, "σ floor at full relaxation, µS")
    tau_s: float = _f(60.0, 1e-9, 1e6, "onset time")
    full_s: float = _f(1e5, 1e-3, 1e9, "time by which relaxation is complete")


@dataclass
class DriftParams:
    """Retention drift in log time: mean pulled toward g_mid, spread growing as sqrt(log t)."""

    t0_s: float = _f(100.0, 1e-6, 1e9, "time after programming where drift starts")
    pull_per_decade: float = _f(0.006, 0.0, 0.5, "fraction of (G − g_mid) lost per decade")
    g_mid_us: float = _f(8.0, 0.0, 100.0, "conductance drift pulls toward, µS")
    sigma_abs_us: float = _f(0.04, 0.0, 10.0, "spread per sqrt(decade), absolute part, µS")
    sigma_rel: float = _f(0.01, 0.0, 0.5, "spread per sqrt(decade), relative part")


@dataclass
class DisturbParams:
    """Read disturb: a weak SET-direction shift growing with the logarithm of the read dose."""

    a_us: float = _f(0.002, 0.0, 10.0, "shift per e-fold of dose, µS")
    dose0: float = _f(1e3, 1.0, 1e12, "dose (equivalent reference reads) where the shift starts")
    v_ref: float = _f(0.2, 0.01, 2.0, "read amplitude of the reference dose, V")
    v_slope: float = _f(0.05, 0.005, 1.0, "V per e-fold of disturb strength")
    width_ref_s: float = _f(50e-9, 1e-10, 1.0, "read pulse width of the reference dose")
    sigma_ln: float = _f(0.4, 0.0, 3.0, "device-to-device σ of ln(disturb strength)")


@dataclass
class AdcParams:
    """Per-column ADC of the bit-serial parallel read."""

    bits: int = _f(8, 1, 16, "ADC resolution")
    full_scale_a: float = _f(100e-6, 1e-9, 1.0, "default full-scale column current, A")


@dataclass
class LineParams:
    """Optional line resistance (first-order series model; 0 disables it)."""

    r_segment_ohm: float = _f(0.0, 0.0, 1e4, "wire resistance per cell pitch, Ω")


@dataclass
class TimingParams:
    """Virtual-clock cost of operations (cell-serial programming, parallel VMM)."""

    read_cell_s: float = _f(5e-6, 0.0, 1.0, "one single-cell read including routing")
    pulse_overhead_s: float = _f(2e-6, 0.0, 1.0, "routing overhead per programming pulse")
    call_overhead_s: float = _f(50e-6, 0.0, 1.0, "fixed cost of one host command")
    slot_s: float = _f(50e-9, 0.0, 1.0, "one bit slot of the parallel read (0.2 V, 50 ns)")
    slot_overhead_s: float = _f(0.0, 0.0, 1.0, "ADC/settling time per slot beyond the pulse")


@dataclass
class IVParams:
    """DC I–V sweep (sim_backend.iv_physics): nonlinear conduction, threshold SET, gradual RESET."""

    beta_per_v2: float = _f(0.4, 1e-3, 10.0, "nonlinearity β of I = G·V·(1 + β·V²), V⁻² [est] "
                                              "(R at 1 V about 30% below R at 0.2 V)")
    v_set: float = _f(0.9, 0.1, 5.0, "median SET voltage of a DC sweep, V [est] (below set.v_ref: "
                                     "a 1 ms DC dwell is 2e4× a 50 ns pulse)")
    v_set_per_ln_strength: float = _f(0.1, 1e-3, 1.0, "SET voltage lower per e-fold of the cell's SET "
                                                      "strength (variation.set_sigma_ln), V [est]")
    v_reset: float = _f(0.7, 0.1, 5.0, "|V| where RESET starts in a DC sweep, V [est]")
    reset_rate: float = _f(0.2, 1e-3, 10.0, "e-folds of (G − G_floor) lost per point just beyond v_reset [est]")
    reset_slope_v: float = _f(0.15, 0.01, 2.0, "V per e-fold of the RESET rate [est] (as reset.v_slope)")
    dwell_ref_s: float = _f(1e-3, 1e-9, 10.0, "dwell per point of the reference RESET rate, s [est]")
    dwell_exponent: float = _f(0.3, 1e-3, 1.0, "RESET rate ∝ (dwell/dwell_ref)**exponent [est] "
                                               "(as reset.width_exponent)")


@dataclass
class DeviceParams:
    """Complete parameter set of the simulated 1T1R chip."""

    set: SetParams = field(default_factory=SetParams)
    reset: ResetParams = field(default_factory=ResetParams)
    compliance: ComplianceParams = field(default_factory=ComplianceParams)
    write_noise: WriteNoiseParams = field(default_factory=WriteNoiseParams)
    form: FormParams = field(default_factory=FormParams)
    variation: VariationParams = field(default_factory=VariationParams)
    defects: DefectParams = field(default_factory=DefectParams)
    initial: InitialParams = field(default_factory=InitialParams)
    read_noise: ReadNoiseParams = field(default_factory=ReadNoiseParams)
    relaxation: RelaxationParams = field(default_factory=RelaxationParams)
    drift: DriftParams = field(default_factory=DriftParams)
    disturb: DisturbParams = field(default_factory=DisturbParams)
    adc: AdcParams = field(default_factory=AdcParams)
    lines: LineParams = field(default_factory=LineParams)
    timing: TimingParams = field(default_factory=TimingParams)
    iv: IVParams = field(default_factory=IVParams)

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> "DeviceParams":
        """Raise ConfigError naming the first invalid parameter."""
        for gname, group in self._groups():
            for f in fields(group):
                _check_value(f"{gname}.{f.name}", getattr(group, f.name), f.metadata, f.default)
        for g in (self.set, self.reset):
            n = len(g.table_g_us)
            if len(g.mean_dg_us) != n or len(g.sigma_dg_us) != n:
                raise ConfigError(f"{type(g).__name__}: table_g_us, mean_dg_us and sigma_dg_us must have equal length")
            if any(b <= a for a, b in zip(g.table_g_us, g.table_g_us[1:])):
                raise ConfigError(f"{type(g).__name__}.table_g_us must be strictly increasing")
        if any(v < 0 for v in self.set.mean_dg_us):
            raise ConfigError("set.mean_dg_us must be >= 0 (SET raises conductance)")
        if any(v > 0 for v in self.reset.mean_dg_us):
            raise ConfigError("reset.mean_dg_us must be <= 0 (RESET lowers conductance)")
        if self.initial.state not in ("formed", "fresh"):
            raise ConfigError(f"initial.state must be 'formed' or 'fresh', got {self.initial.state!r}")
        if self.initial.g_low_us > self.initial.g_high_us:
            raise ConfigError("initial.g_low_us must not exceed initial.g_high_us")
        lo, hi = self.defects.stuck_on_g_us
        if not 0 < lo <= hi:
            raise ConfigError("defects.stuck_on_g_us must be an increasing pair of positive values")
        if self.defects.stuck_off_rate + self.defects.stuck_on_rate >= 1:
            raise ConfigError("defects: stuck_off_rate + stuck_on_rate must be < 1")
        return self

    def _groups(self):
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    # ---- (de)serialization --------------------------------------------------------
    def to_dict(self) -> dict:
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(g).items()}
                for name, g in self._groups()}

    @classmethod
    def preset(cls, name: str) -> "DeviceParams":
        """A named parameter set: "yao2020" (the defaults) or "wang2019" (see WANG2019)."""
        name = Text(sorted(PRESETS), noun="device preset").check(name, "preset")
        return cls.from_dict({g: {k: v for k, (v, _) in t.items()} for g, t in PRESETS[name].items()})

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceParams":
        """Build from a (possibly partial) nested mapping over a preset (`preset` key, default
        "yao2020"); one schema checks every value (type, finiteness, range); unknown keys are
        errors. Raises SchemaError naming the key."""
        d = validate(d, params_schema())
        base = cls.preset(d["preset"]) if "preset" in d else cls()
        kwargs = {}
        for gname, values in d.items():
            if gname in ("format", "schema_version", "preset"):
                continue
            kwargs[gname] = replace(getattr(base, gname),
                                    **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        return replace(base, **kwargs)

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of every value: names this exact parameter set."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path) -> Path:
        """Write as TOML (.toml) or JSON (any other suffix)."""
        path = Path(path)
        data = {"format": "memristor-hil-device-params", "schema_version": 1, **self.to_dict()}
        if path.suffix.lower() == ".toml":
            import tomli_w
            text = tomli_w.dumps(data)
        else:
            text = json.dumps(data, indent=2)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path) -> "DeviceParams":
        """Read a TOML or JSON parameter file, validated; every error names the file and the key."""
        path = Path(path)
        what = "parameter file"
        data = load_toml(path, what) if path.suffix.lower() == ".toml" else load_json(path, what)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"parameter file {path}: {e}") from None

    def describe(self) -> str:
        """Human-readable listing of every parameter with its documentation."""
        lines = []
        for gname, group in self._groups():
            lines.append(f"[{gname}]  {type(group).__doc__.strip().splitlines()[0]}")
            for f in fields(group):
                lines.append(f"  {f.name:16s} = {getattr(group, f.name)!s:40s} {f.metadata.get('doc', '')}")
        return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def params_schema() -> Table:
    """The schema of a parameter file, from the fields' defaults and [lo, hi] metadata."""
    groups = {}
    for g in fields(DeviceParams):
        specs = {}
        for f in fields(g.default_factory):
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if isinstance(f.default, tuple):
                specs[f.name] = ListOf(Number(), 1, 64)
            elif isinstance(f.default, str):
                specs[f.name] = Text(max_len=200)
            else:
                specs[f.name] = Number(lo, hi, integer=isinstance(f.default, int))
        groups[g.name] = Table(specs)
    return Table({**groups, "format": Text(["memristor-hil-device-params"]),
                  "schema_version": Number(1, 1, integer=True),
                  "preset": Text(sorted(PRESETS), noun="device preset")})


def _check_value(name: str, v: Any, meta, default: Any) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(default, str) != isinstance(v, str):
        raise ConfigError(f"parameter {name} must be {'text' if isinstance(default, str) else 'a number'}, got {v!r}")
    if isinstance(default, int) and not isinstance(default, bool) and not isinstance(v, int):
        raise ConfigError(f"parameter {name} must be an integer, got {v!r}")
    if isinstance(v, tuple):
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ConfigError(f"parameter {name} must contain finite numbers, got {x!r}")
        return
    if isinstance(v, str):
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"parameter {name} must be a finite number, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ConfigError(f"parameter {name} = {v} is outside the allowed range [{lo}, {hi}]")


# ---- presets ------------------------------------------------------------------------------------
# Each preset: {group: {field: (value, where the value comes from)}}, over the defaults above.
# Sources: PAPERS.md §B (the Wang 2019 authors' public simulator and scripts) and §C; [est] marks
# an estimate where no public figure exists.
WANG2019 = {
    "set": {
        "snap": (1.0, "§B: the authors' simulator sets G = max(f(V_g), G): one SET lands on the compliance"),
        "v_ref": (2.5, "§B: SET amplitude 2.5 V on the BL"),
        "v_slope": (0.1, "[est] a pulse 0.2 V weaker closes ~86% of the headroom"),
        "width_ref_s": (1e-6, "[est] pulse width of the open-loop update (hil.analog.update.OpenLoopGate)"),
        "mean_dg_us": ((0.0,) * 10, "§B: no gradual steps in the abrupt regime"),
        "sigma_dg_us": ((0.0,) * 10, "§B: the switching noise is write_noise.sigma_us"),
    },
    "reset": {
        "snap": (1.0, "§B: RESET takes G to about 0 (clipped at 0)"),
        "v_ref": (1.7, "§B: RESET 1.7 V on the SL with the gate at 5 V"),
        "v_slope": (0.1, "[est] as set.v_slope"),
        "width_ref_s": (1e-6, "[est] as set.width_ref_s"),
        "mean_dg_us": ((0.0,) * 10, "§B: no gradual steps in the abrupt regime"),
        "sigma_dg_us": ((0.0,) * 10, "§B: the switching noise is write_noise.sigma_us"),
    },
    "compliance": {
        "vth_v": (0.0, "§B: f(V_g) = 200 µS/1.1 V · V_g passes through the origin"),
        "vth_sigma_v": (0.03, "[est] device-to-device shift of the compliance curve, ±5.5 µS (1σ)"),
        "g_per_v_us": (200.0 / 1.1, "§B: f(V_g) ≈ 182 µS/V · V_g (455 µS at 2.5 V)"),
        "landing_cv": (0.0, "§B: the cycle-to-cycle spread is write_noise.sigma_us"),
    },
    "write_noise": {
        "sigma_us": (8.0, "§B: every update call adds N(0, 8 µS)"),
    },
    "defects": {
        "g_floor_us": (0.0, "§B: RESET clips G at 0"),
        "g_max_us": (600.0, "[est] above f(2.5 V) = 455 µS plus noise"),
        "stuck_off_rate": (5e-3, "[est] §C: a few per 1e4 (Yao) up to ~10% (older arrays)"),
        "stuck_on_rate": (2e-3, "[est] as stuck_off_rate"),
        "stuck_on_g_us": ((300.0, 600.0), "[est] shorted cells read like fully SET ones or higher"),
        "dead_row_rate": (0.02, "[est] §B: the authors used lists of good rows and columns; ~2.6 of 128 rows"),
        "dead_col_rate": (0.02, "[est] ~1.3 of 64 columns"),
    },
    "initial": {
        "g_low_us": (0.0, "[est] a formed chip left in mixed states"),
        "g_high_us": (100.0, "[est] as g_low_us"),
    },
    "read_noise": {
        "rel": (0.01, "§C: about 1% read noise (Wan 2022); the authors' reads are noise-free"),
        "abs_us": (0.3, "[est] floor of the read noise near 0"),
    },
    "adc": {
        "full_scale_a": (1e-3, "[est] a column of ~64 pairs at ±0.2 V and ~100 µS differential"),
    },
}
PRESETS = {"yao2020": {}, "wang2019": WANG2019}
