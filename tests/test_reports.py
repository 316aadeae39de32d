"""Reports a lab can QC a study with (issue 43): a subject's page, a failed subject's page, the dataset page and
the methods paragraph, from a real BIDS-app run; rendered by headless Chromium where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from conftest import phantom, write_nifti
from usb_prep.cli.bids_app import main


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.ids, self.scripts, self.text = [], [], set(), 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.imgs += [a["src"]] if tag == "img" else []
        self.links += [a["href"]] if tag == "a" and "href" in a else []
        self.ids |= {a["id"]} if "id" in a else set()
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    p = _Page()
    p.feed(path.read_text())
    p.text = " ".join(p.text)
    return p


@pytest.fixture
def study(bids_ds, tmp_path, linear_plugin):
    """The BIDS app on three subjects: sub-01 fills, sub-02's mask is on another grid (fails), sub-03 has none."""
    _, lesion, _, aff = phantom(shape=(20, 20, 20))
    write_nifti(bids_ds / "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_roi.nii.gz", lesion, aff)
    out = tmp_path / "out"
    code = main([str(bids_ds), str(out), "participant", "-w", str(tmp_path / "work"), "--method", "wmstats",
                 "--use-plugin", str(linear_plugin)])
    assert code == 1  # one failed, one skipped
    return out


def test_dataset_page_subject_pages_and_methods(study):
    page = _parse(study / "usb_prep.html")
    assert page.scripts == 0 and not page.imgs  # light: no figures, no scripts
    assert "1 filled, 1 failed, 1 skipped" in page.text
    assert set(page.links) == {"sub-01.html", "sub-02_ses-1.html"}
    assert "different grids" in page.text and "no lesion mask found" in page.text
    ok = _parse(study / "sub-01.html")
    assert {"summary", "check", "lesions", "strip", "methods", "settings"} <= ok.ids
    assert ok.scripts == 0 and all(src.startswith("data:image/png;base64,") for src in ok.imgs)
    assert len(ok.imgs) == 3  # the one lesion up close, the whole brain before and after
    assert re.search(r"lesion volume\s+[\d.]+ ml in 1 piece", ok.text)
    assert "wmstats" in ok.text and "Lesions were filled with usb_prep" in ok.text
    failed = _parse(study / "sub-02_ses-1.html")
    assert "failed" in failed.text and "different grids" in failed.text and "crash-" in failed.text
    citation = (study / "logs" / "CITATION.md").read_text()
    assert "white matter" in citation and "## Cite" in citation


def test_usb_fill_report(lesion_case, tmp_path):
    from usb_prep.cli.fill import main as fill_main

    out, rep = tmp_path / "o.nii.gz", tmp_path / "o.html"
    r = CliRunner().invoke(fill_main, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out), "--method",
                                       "wmstats", "--quiet", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    page = _parse(rep)
    assert {"summary", "lesions", "methods"} <= page.ids and len(page.imgs) == 3
    r = CliRunner().invoke(fill_main, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out), "--method",
                                       "wmstats", "--quiet", "--report", str(rep)])
    assert r.exit_code == 2 and "exists" in r.output  # nothing overwritten unasked


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt-get install chromium)")
def test_reports_render_in_a_real_browser(study, tmp_path):
    """Headless Chromium loads both pages from disk, with no network, and the DOM it builds has the panels and
    the summary; a screenshot is taken (the README's picture is made the same way)."""
    for name, needles in (("sub-01.html", ("Summary", "The largest lesions up close", "Methods")),
                          ("usb_prep.html", ("1 filled, 1 failed, 1 skipped", "sub-02_ses-1"))):
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--user-data-dir=" + str(tmp_path / "chrome"), "--dump-dom", (study / name).as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        for needle in needles:
            assert needle in dom, (name, needle)
        if name == "sub-01.html":
            assert dom.count("<img") == 3
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--user-data-dir=" + str(tmp_path / "chrome"), f"--screenshot={shot}", "--window-size=1200,900",
                    (study / "sub-01.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    assert json.loads((study / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_methods_paragraph_names_the_template_prior_that_ran():
    from usb_prep.reports import methods_text

    base = {"method": "usb", "contrast": "t1w", "usb_prep_version": "0.1.0", "steps": 1, "seed": 0,
            "patch_weight": 0.2, "nlm_weight": 0.8, "refine": True}
    plain = methods_text(base)
    assert "MNI152" not in plain and "Avants" not in plain
    ran = methods_text({**base, "prior_run": {"used": True, "tissue_weight": 0.6, "outline": True}})
    assert "tissue maps" in ran and "outside the brain" in ran and "Fonov" in ran and "Avants" in ran
    tissue_only = methods_text({**base, "prior_run": {"used": True, "tissue_weight": 0.6, "outline": False}})
    assert "tissue maps" in tissue_only and "outside the brain" not in tissue_only
    unused = methods_text({**base, "prior_run": {"used": False, "tissue_weight": 0.6, "outline": False}})
    assert "MNI152" not in unused  # a registration that failed changed nothing: nothing to report or cite
