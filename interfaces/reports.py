"""``LesionReport``: before/after HTML report (:mod:`usb_prep.reports`)."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ._common import optional, read_settings


class _LesionReportInputSpec(BaseInterfaceInputSpec):
    before = File(exists=True, mandatory=True, desc="input image")
    after = File(exists=True, mandatory=True, desc="filled image")
    mask_file = File(exists=True, desc="mask outlined on both panels")
    settings_file = File(exists=True, desc="JSON of settings/notes to echo")
    title = traits.Str("usb_prep report", usedefault=True, desc="page title")
    caption = traits.Str("Lesion filling", usedefault=True, desc="panel caption")
    fmt = traits.Enum("png", "svg", usedefault=True, desc="figure format")


class _LesionReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML report")


class LesionReport(SimpleInterface):
    """Write a one-file HTML report: before/after flicker with the mask outline."""

    input_spec = _LesionReportInputSpec
    output_spec = _LesionReportOutputSpec

    def _run_interface(self, runtime):
        from usb_prep.reports import write_report

        settings, messages = {}, []
        if isdefined(self.inputs.settings_file):
            settings, messages = read_settings(self.inputs.settings_file)
        self._results["out_report"] = write_report(
            os.path.join(runtime.cwd, "report.html"),
            before=self.inputs.before,
            after=self.inputs.after,
            mask=optional(self.inputs.mask_file),
            title=self.inputs.title,
            caption=self.inputs.caption,
            settings=settings,
            messages=messages,
            fmt=self.inputs.fmt,
        )
        return runtime
