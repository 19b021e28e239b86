"""Lab-module panels: one per built-in module, the generic form-and-plot panel for any other
(plugins), and the sequence panel. `panel_for` picks the panel of a module."""
from __future__ import annotations

from .base import ModulePanel
from .curve_tracer import CurveTracerPanel
from .forming import FormingPanel
from .pulse_train import PulseTrainPanel
from .retention import RetentionPanel
from .sequence import SequencePanel

#: module name -> its own panel; every other module gets the generic ModulePanel
PANELS = {"pulse-train": PulseTrainPanel, "retention": RetentionPanel, "curve-tracer": CurveTracerPanel,
          "forming": FormingPanel}


def panel_for(session, module, folder) -> ModulePanel:
    """The panel of `module` (a hil.modules.base.LabModule)."""
    return PANELS.get(module.name, ModulePanel)(session, module, folder)


__all__ = ["ModulePanel", "PANELS", "SequencePanel", "panel_for"]
