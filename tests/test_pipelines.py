"""Nipype workflows run end to end on tiny synthetic data."""

from __future__ import annotations

import json
import os

import nibabel as nb
import numpy as np
import pytest

from conftest import phantom


def _run(wf, tmp_path):
    wf.base_dir = str(tmp_path / "work")
    graph = wf.run(plugin="Linear")
    return {n.fullname: n for n in graph.nodes()}


def _node(nodes, suffix):
    return next(n for name, n in nodes.items() if name.endswith(suffix))


def _centroid_world(img):
    img = nb.load(str(img)) if not hasattr(img, "affine") else img
    ijk = np.argwhere(np.asanyarray(img.dataobj) > 0)
    assert len(ijk), "empty mask"
    return nb.affines.apply_affine(img.affine, ijk.mean(0))


@pytest.fixture
def template_case(make_nifti):
    """A healthy phantom (no lesion) whose anatomy sits 2 mm further right (+x)."""
    img, _, dseg, aff = phantom(lesion_radius=0.0, seed=1)
    taff = aff.copy()
    taff[0, 3] += 2.0
    return {"template": make_nifti(img, "template.nii.gz", affine=taff),
            "dseg": make_nifti(dseg, "template_dseg.nii.gz", affine=taff), "shift": np.array([2.0, 0, 0])}


def test_fill_workflow(lesion_case, tmp_path):
    from usb_prep.pipelines import init_lesion_fill_wf

    wf = init_lesion_fill_wf(method="wmstats")
    wf.inputs.inputnode.in_file = str(lesion_case["t1w"])
    wf.inputs.inputnode.mask_file = str(lesion_case["mask"])
    nodes = _run(wf, tmp_path)
    res = _node(nodes, "lesion_fill").result.outputs
    out, src = np.asanyarray(nb.load(res.out_file).dataobj), np.asanyarray(nb.load(str(lesion_case["t1w"])).dataobj)
    lesion = lesion_case["lesion"] > 0
    np.testing.assert_array_equal(out[~lesion], src[~lesion])
    assert out[lesion].mean() > 80


def test_fill_workflow_usb_tiny(lesion_case, tiny_weights, tmp_path):
    from usb_prep.pipelines import init_lesion_fill_wf

    given = {"patch_weight": 0.0, "nlm_weight": 0.5, "refine": False}
    wf = init_lesion_fill_wf(weights=tiny_weights, fill_settings={"steps": 2, **given})
    wf.inputs.inputnode.in_file = str(lesion_case["t1w"])
    wf.inputs.inputnode.mask_file = str(lesion_case["mask"])
    nodes = _run(wf, tmp_path)
    settings = json.loads(open(_node(nodes, "lesion_fill").result.outputs.out_settings).read())
    assert settings["steps"] == 2 and settings["weights"]["sha256"]
    assert {k: settings[k] for k in given} == given
    with pytest.raises(ValueError, match="unknown fill settings"):
        init_lesion_fill_wf(fill_settings={"nlm_wieght": 0.5})


@pytest.mark.slow
def test_ants_workflow_antspy(lesion_case, template_case, tmp_path):
    pytest.importorskip("ants")
    from usb_prep.pipelines import init_fill_ants_wf

    wf = init_fill_ants_wf(fill_options={"method": "wmstats"}, use_antspy=True, transform_type="Affine",
                           quick=True, segment=True)
    wf.inputs.inputnode.in_file = str(lesion_case["t1w"])
    wf.inputs.inputnode.mask_file = str(lesion_case["mask"])
    wf.inputs.inputnode.template = str(template_case["template"])
    nodes = _run(wf, tmp_path)
    reg = _node(nodes, "register").result.outputs
    assert reg.forward_transforms
    out = _node(nodes, "reinstate").result.outputs
    mapped = _centroid_world(out.out_mask)
    native = _centroid_world(lesion_case["mask"])
    np.testing.assert_allclose(mapped, native + template_case["shift"], atol=1.5)
    dseg = np.asanyarray(nb.load(out.out_file).dataobj)
    mask = np.asanyarray(nb.load(out.out_mask).dataobj) > 0
    assert (dseg[mask] == 7).all() and set(np.unique(dseg[~mask])) <= {0, 1, 2, 3}
    cost = np.asanyarray(nb.load(_node(nodes, "cost_function_mask").result.outputs.out_file).dataobj)
    np.testing.assert_array_equal(cost, 1 - lesion_case["lesion"])  # lesion masked out of the metric


def test_ants_workflow_nipype_graph():
    """With the antsRegistration binary, nipype's interface is used (graph only here)."""
    from nipype.interfaces.ants import Registration

    from usb_prep.pipelines import init_fill_ants_wf

    wf = init_fill_ants_wf(fill_options={"method": "wmstats"}, use_antspy=False, segment=False)
    reg = wf.get_node("register")
    assert isinstance(reg.interface, Registration)
    assert reg.interface.inputs.transforms == ["Rigid", "Affine", "SyN"]
    names = {n for n in wf.list_node_names()}
    assert {"mask_per_stage", "reinstate", "cost_function_mask"} <= names


def _niftyreg_dir():
    from usb_prep.pipelines.niftyreg import find_niftyreg_dir

    d = find_niftyreg_dir()
    if not d or not os.path.isfile(os.path.join(d, "reg_aladin")):
        pytest.skip("NiftyReg executables not found (pip install niftyreg, or set NIFTYREGDIR)")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("nonlinear", [False, True], ids=["aladin", "f3d"])
def test_niftyreg_workflow(lesion_case, template_case, tmp_path, nonlinear):
    bindir = _niftyreg_dir()
    from usb_prep.pipelines import init_fill_niftyreg_wf

    wf = init_fill_niftyreg_wf(fill_options={"method": "wmstats"}, nonlinear=nonlinear, niftyreg_dir=bindir,
                               f3d_maxit=20)
    wf.inputs.inputnode.in_file = str(lesion_case["t1w"])
    wf.inputs.inputnode.mask_file = str(lesion_case["mask"])
    wf.inputs.inputnode.template = str(template_case["template"])
    wf.inputs.inputnode.template_dseg = str(template_case["dseg"])
    nodes = _run(wf, tmp_path)
    aladin = _node(nodes, "reg_aladin")
    assert "-fmask" in aladin.result.runtime.cmdline
    out = _node(nodes, "reinstate").result.outputs
    np.testing.assert_allclose(_centroid_world(out.out_mask),
                               _centroid_world(lesion_case["mask"]) + template_case["shift"], atol=1.5)
    dseg = np.asanyarray(nb.load(out.out_file).dataobj)
    mask = np.asanyarray(nb.load(out.out_mask).dataobj) > 0
    assert mask.sum() > 0.5 * lesion_case["lesion"].sum()
    assert (dseg[mask] == 7).all()


def test_reconall_cmdline():
    from nipype.interfaces.freesurfer import ReconAll

    from usb_prep.pipelines import init_fill_freesurfer_wf

    wf = init_fill_freesurfer_wf(subject_id="sub-01", omp_nthreads=2)
    recon = wf.get_node("recon_all")
    assert isinstance(recon.interface, ReconAll)
    assert recon.interface.inputs.directive == "all"
    assert recon.interface.inputs.openmp == 2


@pytest.mark.parametrize("label,expect", [("hemi", {25}), (77, {77})])
def test_freesurfer_workflow_stub(lesion_case, tmp_path, stub_recon_all, label, expect):
    from usb_prep.pipelines import init_fill_freesurfer_wf

    wf = init_fill_freesurfer_wf(fill_options={"method": "wmstats"}, subject_id="sub-01", lesion_label=label)
    wf.inputs.inputnode.in_file = str(lesion_case["t1w"])
    wf.inputs.inputnode.mask_file = str(lesion_case["mask"])
    nodes = _run(wf, tmp_path)
    calls = [json.loads(line) for line in stub_recon_all.read_text().splitlines()]
    assert len(calls) == 1
    args = calls[0]
    assert args[args.index("-subjid") + 1] == "sub-01" and "-all" in args and "-i" in args
    filled = args[args.index("-i") + 1]
    assert filled.endswith("filled.nii.gz")  # recon-all ran on the filled image
    native = _centroid_world(lesion_case["mask"])
    # unconnected outputs are pruned by nipype: the conformed mask comes from reinstate_aseg
    fs_mask = _node(nodes, "reinstate_aseg").result.outputs.out_mask
    mask = np.asanyarray(nb.load(fs_mask).dataobj) > 0
    np.testing.assert_allclose(_centroid_world(fs_mask), native, atol=1.0)  # the lesion lands where it was
    assert abs(int(mask.sum()) - int(lesion_case["lesion"].sum())) <= 0.25 * lesion_case["lesion"].sum()
    for node_name, fname in (("reinstate_aseg", "aseg_lesion.mgz"), ("reinstate_aparc_aseg", "aparc+aseg_lesion.mgz")):
        out = _node(nodes, node_name).result.outputs
        assert os.path.basename(out.out_file) == fname
        img = nb.load(out.out_file)
        assert img.shape == (40, 40, 40) and isinstance(img, nb.MGHImage)
        labels = np.asanyarray(img.dataobj)
        assert set(np.unique(labels[mask])) == expect
        assert not np.isin(labels[~mask], list(expect)).any()
    # stats/aseg.lesion.stats in the FreeSurfer subject: the lesion rows and what the structures lost to them
    stats = _node(nodes, "write_aseg_lesion_stats").result.outputs.out_file
    assert stats.endswith(os.path.join("sub-01", "stats", "aseg.lesion.stats")) and os.path.exists(stats)
    rows = [line.split() for line in open(stats) if line.strip() and not line.startswith("#")]
    lesion = {int(r[1]): int(r[2]) for r in rows if r[-1] == "lesion"}
    lost = {int(r[1]): int(r[2]) for r in rows if r[-1] == "lost"}
    assert set(lesion) == expect and lost and sum(lost.values()) == sum(lesion.values()) > 0
    assert "# ColHeaders  Index SegId NVoxels Volume_mm3 StructName" in open(stats).read()
