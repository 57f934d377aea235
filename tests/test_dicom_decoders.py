"""One DICOM pixel decoder for every install path (issue 18): lossy 8-bit JPEG is always decoded by
Pillow, so the core install and the [dicom-codecs] install read the same pixels and give the same
probabilities; the other syntaxes decode identically with every installed plugin."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from deephealth.readers import ImageReadError, read_image
from deephealth.readers import dicom as dicom_module


_CORE_INSTALL_PREDICT = """
import json, sys
for m in ("pylibjpeg", "libjpeg", "openjpeg"):  # as installed without the [dicom-codecs] extra
    sys.modules[m] = None
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit
from deephealth.inference import Predictor
from deephealth.readers import read_image
path = sys.argv[1]
res = read_image(path)
p = Predictor(num_threads=1).predict(path)
print(json.dumps({"plugins": list(get_decoder(JPEGBaseline8Bit).available_plugins),
                  "sum": float(res.image.astype("float64").sum()), "probabilities": p.probabilities}))
"""


@pytest.mark.needs_data
def test_lossy_jpeg_dicom_gives_the_same_probabilities_with_or_without_pylibjpeg(dicom_dir: Path):
    """The RSNA CR (JPEG Baseline) once gave P(normal) 0.499 with pylibjpeg and 0.512 with Pillow;
    now both install paths decode it with Pillow: identical pixels, probabilities within 1e-3."""
    import json
    import os
    import subprocess
    import sys

    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import JPEGBaseline8Bit

    from deephealth.inference import Predictor

    path = dicom_dir / "cr_chest_pa_rsna.dcm"
    here = read_image(path)
    ds = pydicom.dcmread(path)
    assert str(ds.file_meta.TransferSyntaxUID) == JPEGBaseline8Bit
    # the reader's pixels are Pillow's, whatever else is installed
    assert np.array_equal(here.image, pixel_array(ds, decoding_plugin="pillow").astype(np.float32) / 255.0)
    if "pylibjpeg" in get_decoder(JPEGBaseline8Bit).available_plugins:
        # why it matters: libjpeg's inverse DCT rounds differently on ~3 % of this film's pixels
        other = pixel_array(ds, decoding_plugin="pylibjpeg").astype(np.int32)
        diff = other - pixel_array(ds, decoding_plugin="pillow").astype(np.int32)
        assert np.abs(diff).max() == 1 and 0.01 < np.mean(diff != 0) < 0.1

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CORE_INSTALL_PREDICT, str(path)], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    core = json.loads(out.strip().splitlines()[-1])
    assert core["plugins"] == ["pillow"]  # the subprocess really had no pylibjpeg
    assert core["sum"] == pytest.approx(float(here.image.astype(np.float64).sum()), abs=0)
    full = Predictor(num_threads=1).predict(path).probabilities
    for k, v in full.items():
        assert core["probabilities"][k] == pytest.approx(v, abs=1e-3), k
    assert full["normal"] == pytest.approx(0.808, abs=0.02)  # model 0.3.0 with Pillow (0.2.0: 0.512), within a retrain's drift


def _round_trip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.needs_data
@pytest.mark.parametrize("syntax, options", [
    ("1.2.840.10008.1.2.4.91", {"j2k_cr": [20]}),  # JPEG 2000 lossy
    ("1.2.840.10008.1.2.4.81", {"jls_error": 2}),  # JPEG-LS near-lossless
])
def test_other_lossy_syntaxes_decode_identically_with_every_installed_plugin(dicom_dir: Path, syntax, options):
    """Not pinned, because every installed plugin gives the same pixels (OpenJPEG in both Pillow and
    pylibjpeg; JPEG-LS decoding is exact by the standard)."""
    from pydicom.pixels import get_decoder, get_encoder, pixel_array
    from pydicom.uid import UID

    uid = UID(syntax)
    if not get_encoder(uid).is_available:
        pytest.skip(f"no encoder for {uid.name}")
    plugins = get_decoder(uid).available_plugins
    if len(plugins) < 2:
        pytest.skip(f"only {plugins} can decode {uid.name}")
    assert syntax not in dicom_module.PINNED_DECODER
    ds = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm")
    arr = pixel_array(ds, decoding_plugin="pillow")
    ds.compress(uid, arr, **options)
    ds = _round_trip(ds)
    decoded = [pixel_array(ds, decoding_plugin=p) for p in plugins]
    assert np.abs(decoded[0].astype(np.int32) - arr).max() > 0  # really lossy
    for p, d in zip(plugins[1:], decoded[1:]):
        assert np.array_equal(d, decoded[0]), p


@pytest.mark.needs_data
def test_a_missing_pinned_decoder_falls_back_with_a_warning(dicom_dir: Path, monkeypatch):
    """Should the pinned plugin be unavailable, another installed one decodes the film and a warning
    says the probabilities may differ from another installation's."""
    monkeypatch.setitem(dicom_module.PINNED_DECODER, "1.2.840.10008.1.2.4.50", ("gdcm", "gdcm"))
    res = read_image(dicom_dir / "cr_chest_pa_rsna.dcm")
    assert res.image.shape == (1024, 1024)
    (warning,) = [w for w in res.info.warnings if "decoder" in w]
    assert warning == ("DICOM JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50): decoded without the usual gdcm "
                       "decoder (not installed); probabilities may differ slightly from another installation's")


def test_twelve_bit_lossy_jpeg_without_pylibjpeg_names_the_extra(monkeypatch):
    """12-bit JPEG Extended is pinned to pylibjpeg (Pillow cannot decode it): without it, one line
    naming the extra to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    dec = get_decoder(JPEGExtended12Bit)
    monkeypatch.setattr(type(dec), "available_plugins", property(lambda self: ("pillow",)))
    with pytest.raises(ImageReadError) as exc:
        dicom_module._decode(ds, "x.dcm", "JPEG Extended (Process 2 & 4) (1.2.840.10008.1.2.4.51)")
    assert str(exc.value) == ("x.dcm: DICOM transfer syntax JPEG Extended (Process 2 & 4) (1.2.840.10008.1.2.4.51) "
                              "with more than 8 bits per sample cannot be decoded: " + dicom_module.CODECS_HINT)
