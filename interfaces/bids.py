"""``DerivativesSink``: copy a result into the BIDS derivatives folder."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ._common import optional, read_settings


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    base_directory = traits.Str(mandatory=True, desc="derivatives folder (absolute)")
    out_name = traits.Str(mandatory=True, desc="destination relative to base_directory "
                          "(kept apart so that hashing never reads an existing output file)")
    metadata = traits.Dict(desc="sidecar content (no sidecar when undefined)")
    settings_files = InputMultiObject(File(exists=True),
                                      desc="JSON settings merged into the sidecar under 'LesionFilling'")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="stored file")


class DerivativesSink(SimpleInterface):
    """Copy ``in_file`` to ``base_directory/out_name`` (atomic, overwriting) and write its sidecar."""

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        from usb_prep.bids import copy_derivative

        sidecar = dict(self.inputs.metadata) if isdefined(self.inputs.metadata) else None
        if optional(self.inputs.settings_files):
            sidecar = sidecar or {}
            for path in self.inputs.settings_files:
                settings, messages = read_settings(path)
                sidecar.setdefault("LesionFilling", {}).update(settings)
                if messages:
                    sidecar["LesionFilling"]["Messages"] = messages
        self._results["out_file"] = copy_derivative(
            self.inputs.in_file, os.path.join(self.inputs.base_directory, self.inputs.out_name), sidecar)
        return runtime
